"""Optimizers against PyTorch's update rules and a float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm.nn import Parameter
from dualnorm.optim import SGD, Adam, AdamW

STEPS = 5


def _grads(rng, shape, steps=STEPS):
    return [rng.standard_normal(shape) for _ in range(steps)]


def _ref_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p = p.copy()
    buf = None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def _ref_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False):
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    vmax = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        if weight_decay and decoupled:
            p = p * (1 - lr * weight_decay)
        elif weight_decay:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if amsgrad:
            vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax if amsgrad else v) / np.sqrt(1 - b2**t) + eps
        p = p - lr / (1 - b1**t) * m / denom
    return p


def _run(backend, cls, p0, grads, **kw):
    be = dualnorm.get_backend(backend)
    param = Parameter(be.asarray(p0, be.float64))
    opt = cls([param], **kw)
    for g in grads:
        opt.zero_grad()
        param.grad = be.asarray(g, be.float64)
        opt.step()
    return dualnorm.to_numpy(param.data)


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.1},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
]
ADAM_CASES = [
    {"lr": 0.01},
    {"lr": 0.01, "weight_decay": 0.1},
    {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6},
    {"lr": 0.01, "amsgrad": True},
]


def _mlx_f64_ok(backend):
    if backend == "mlx":
        import mlx.core as mx

        if mx.default_device() != mx.cpu:
            pytest.skip("float64 needs the MLX CPU device")


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_numpy_reference(backend, kw, rng):
    _mlx_f64_ok(backend)
    p0, grads = rng.standard_normal((3, 4)), _grads(rng, (3, 4))
    ref = _ref_sgd(p0, grads, **kw)
    np.testing.assert_allclose(_run(backend, SGD, p0, grads, **kw), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", ADAM_CASES)
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_adam_matches_numpy_reference(backend, kw, cls, rng):
    _mlx_f64_ok(backend)
    p0, grads = rng.standard_normal((3, 4)), _grads(rng, (3, 4))
    kw = dict(kw)
    b1, b2 = kw.pop("betas", (0.9, 0.999))
    ref_kw = {k: v for k, v in kw.items() if k != "lr"}
    ref = _ref_adam(p0, grads, kw["lr"], b1, b2, decoupled=cls is AdamW, **ref_kw)
    if cls is AdamW and "weight_decay" not in kw:
        ref = _ref_adam(p0, grads, kw["lr"], b1, b2, decoupled=True, weight_decay=1e-2, **ref_kw)
    got = _run(backend, cls, p0, grads, betas=(b1, b2), **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_torch(kw, rng):
    torch = pytest.importorskip("torch")
    p0, grads = rng.standard_normal((3, 4)), _grads(rng, (3, 4))
    tp = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = torch.optim.SGD([tp], **kw)
    for g in grads:
        opt.zero_grad()
        tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    np.testing.assert_allclose(
        _run("numpy", SGD, p0, grads, **kw), tp.detach().numpy(), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("kw", ADAM_CASES)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_matches_torch(kw, name, rng):
    torch = pytest.importorskip("torch")
    p0, grads = rng.standard_normal((3, 4)), _grads(rng, (3, 4))
    tp = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = getattr(torch.optim, name)([tp], **kw)
    for g in grads:
        opt.zero_grad()
        tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    cls = Adam if name == "Adam" else AdamW
    np.testing.assert_allclose(
        _run("numpy", cls, p0, grads, **kw), tp.detach().numpy(), rtol=1e-10, atol=1e-12
    )


def test_params_without_grad_are_skipped_and_bad_args_raise():
    p = Parameter(np.ones(3))
    SGD([p], lr=0.1).step()
    np.testing.assert_array_equal(p.data, np.ones(3))
    with pytest.raises(ValueError, match="lr"):
        SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        Adam([])
    with pytest.raises(ValueError, match="betas"):
        Adam([p], betas=(1.0, 0.9))
