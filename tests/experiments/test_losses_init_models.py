"""Losses vs float64 references and finite differences; initializers; the MLP builder."""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm import init
from dualnorm.losses import CrossEntropyLoss, MSELoss
from dualnorm.models import NORMS, mlp


def _f64(backend):
    if backend == "mlx":
        import mlx.core as mx

        if mx.default_device() != mx.cpu:
            pytest.skip("float64 needs the MLX CPU device")
    be = dualnorm.get_backend(backend)
    return be, be.float64


def _fd(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


def test_mse_forward_backward(backend, rng):
    be, f64 = _f64(backend)
    pred, target = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    loss_fn = MSELoss()
    loss = loss_fn(be.asarray(pred, f64), be.asarray(target, f64))
    assert float(loss.item()) == pytest.approx(np.mean((pred - target) ** 2), rel=1e-12)
    grad = dualnorm.to_numpy(loss_fn.backward())
    np.testing.assert_allclose(grad, _fd(lambda p: np.mean((p - target) ** 2), pred), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        loss_fn(be.asarray(pred, f64), be.asarray(target[:, :1], f64))


def _ce_ref(logits, labels):
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return np.mean(lse - logits[np.arange(len(labels)), labels])


def test_cross_entropy_forward_backward(backend, rng):
    be, f64 = _f64(backend)
    logits, labels = rng.standard_normal((6, 4)) * 3, rng.integers(0, 4, 6)
    loss_fn = CrossEntropyLoss()
    loss = loss_fn(be.asarray(logits, f64), labels)
    assert float(loss.item()) == pytest.approx(_ce_ref(logits, labels), rel=1e-8)  # MLX exp: ~1e-9
    grad = dualnorm.to_numpy(loss_fn.backward())
    np.testing.assert_allclose(grad, _fd(lambda z: _ce_ref(z, labels), logits), rtol=1e-6, atol=1e-9)


def test_cross_entropy_is_stable_and_matches_torch(backend, rng):
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    loss_fn = CrossEntropyLoss()
    loss = float(loss_fn(logits, np.array([0, 2])).item())
    assert np.isfinite(loss) and loss == pytest.approx(np.log(3) / 2, rel=1e-5)
    torch = pytest.importorskip("torch")
    z, y = rng.standard_normal((8, 5)), rng.integers(0, 5, 8)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y))
    tl.backward()
    loss_fn = CrossEntropyLoss()
    ours = float(loss_fn(z.astype(np.float32), y).item())
    assert ours == pytest.approx(tl.item(), rel=1e-5)
    np.testing.assert_allclose(dualnorm.to_numpy(loss_fn.backward()), tz.grad.numpy(), atol=1e-6)


def test_init_draws_identically_on_both_backends():
    dualnorm.manual_seed(3)
    with dualnorm.use_backend("numpy"):
        a = dualnorm.nn.Linear(30, 20)
    init.kaiming_normal_(a.weight, nonlinearity="relu")
    w_np = dualnorm.to_numpy(a.weight.data)
    assert w_np.std() == pytest.approx(np.sqrt(2 / 30), rel=0.15)
    if "mlx" in dualnorm.available_backends():
        dualnorm.manual_seed(3)
        with dualnorm.use_backend("mlx"):
            b = dualnorm.nn.Linear(30, 20)
        init.kaiming_normal_(b.weight, nonlinearity="relu")
        np.testing.assert_array_equal(dualnorm.to_numpy(b.weight.data), w_np)


@pytest.mark.parametrize(
    ("fn", "expected_std"),
    [
        (lambda p: init.normal_(p, std=0.05), 0.05),
        (lambda p: init.xavier_normal_(p), np.sqrt(2 / (200 + 100))),
        (lambda p: init.lecun_normal_(p), np.sqrt(1 / 200)),
        (lambda p: init.xavier_uniform_(p), np.sqrt(6 / 300) / np.sqrt(3)),
    ],
)
def test_init_scales(fn, expected_std):
    dualnorm.manual_seed(0)
    with dualnorm.use_backend("numpy"):
        layer = dualnorm.nn.Linear(200, 100)
    fn(layer.weight)
    assert dualnorm.to_numpy(layer.weight.data).std() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize("norm", NORMS)
def test_mlp_every_norm_runs_forward_and_backward(backend, norm, rng):
    model = mlp(8, [8, 8], 3, norm=norm, init="kaiming")
    x = rng.standard_normal((6, 8)).astype(np.float32)
    out = model(x)
    assert tuple(out.shape) == (6, 3)
    grad = model.backward(dualnorm.get_backend().asarray(np.ones((6, 3), np.float32)))
    assert tuple(grad.shape) == (6, 8)
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_rejects_unknown_choices():
    with pytest.raises(ValueError, match="choose one of"):
        mlp(4, [4], 2, norm="instance")
    with pytest.raises(ValueError, match="choose one of"):
        mlp(4, [4], 2, activation="swish")
