"""Backward of every layer: central differences in float64 on NumPy, ``mx.grad`` on MLX.

The loss is ``sum(y * G)`` for a random ``G``, so ``G`` is the upstream gradient.
Values a layer treats as constants in its backward (batch renorm's r and d, spectral
norm's u and v) are frozen at the base point in the reference.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import dualnorm
from tests.core._cases import (
    CASES,
    REF_DTYPE,
    assert_close,
    host,
    make_input,
    randomize,
    split_state,
)

HAS_MLX = importlib.util.find_spec("mlx") is not None
MODES = [pytest.param(True, id="train"), pytest.param(False, id="eval")]
H = 1e-6


def central_diff(f, x: np.ndarray) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += H
        minus[i] -= H
        grad[i] = (f(plus) - f(minus)) / (2 * H)
    return grad


def _layer_grads(layer, x, G):
    layer.zero_grad()
    layer(x)
    grad_x = host(layer.backward(G))
    return grad_x, {name: host(p.grad) for name, p in layer.named_parameters()}


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_numpy_float64_central_differences(case, training):
    with dualnorm.use_backend("numpy"):
        dualnorm.manual_seed(0)
        layer = case.make("float64")
    randomize(layer)
    layer.train(training)
    params, buffers = split_state(layer)
    x = make_input(case)
    REF_DTYPE["name"] = "float64"
    y0, _, frozen = case.ref(np, x, params, buffers, training, None)
    G = np.random.default_rng(7).normal(size=y0.shape)
    grad_x, grad_p = _layer_grads(layer, x, G)

    def ref_loss(x_, params_):
        return float(np.sum(case.ref(np, x_, params_, buffers, training, frozen)[0] * G))

    assert_close(grad_x, central_diff(lambda v: ref_loss(v, params), x), 1e-6, f"{case.id} dL/dx")
    assert set(grad_p) == set(params)
    for name in params:
        numeric = central_diff(lambda v, n=name: ref_loss(x, {**params, n: v}), params[name])
        assert_close(grad_p[name], numeric, 1e-6, f"{case.id} dL/d{name}")

    if case.stop_grad and training:
        return  # differencing the layer itself would include the frozen values' dependence

    # Differencing the layer's own forward too (output does not depend on the running stats it updates).
    def layer_loss(x_):
        return float(np.sum(host(layer(x_)) * G))

    assert_close(grad_x, central_diff(layer_loss, x), 1e-6, f"{case.id} dL/dx (layer forward)")
    for name, p in layer.named_parameters():
        base = p.data

        def param_loss(v, p=p):
            p.data = v
            return float(np.sum(host(layer(x)) * G))

        numeric = central_diff(param_loss, base.copy())
        p.data = base
        assert_close(grad_p[name], numeric, 1e-6, f"{case.id} dL/d{name} (layer forward)")


def test_backward_accumulates_parameter_gradients(rng):
    with dualnorm.use_backend("numpy"):
        layer = dualnorm.nn.LayerNorm(3, dtype="float64")
    x, G = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    layer(x)
    layer.backward(G)
    once = host(layer.weight.grad).copy()
    layer(x)
    layer.backward(G)
    np.testing.assert_allclose(host(layer.weight.grad), 2 * once)
    layer.zero_grad()
    assert layer.weight.grad is None


# --- MLX: against mx.grad -----------------------------------------------------------------------
mlx_only = pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")


def _to_mx(mx, tree: dict) -> dict:
    out = {}
    for k, v in tree.items():
        v = np.asarray(v)
        out[k] = mx.array(v, dtype=mx.float64 if v.dtype.kind == "f" else mx.int64)
    return out


@mlx_only
@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_mlx_backward_matches_mx_grad_of_reference(case, training):
    """The float32 MLX layer's backward vs mx.grad of the same formula written in mlx ops (float64)."""
    import mlx.core as mx

    # float64 reference: MLX has float64 on the CPU device only, so ask for it explicitly
    with dualnorm.use_backend("mlx", device="cpu"):
        dualnorm.manual_seed(0)
        layer = case.make()
        randomize(layer)
        layer.train(training)
        params, buffers = split_state(layer)
        x = make_input(case).astype(np.float32).astype(np.float64)
        REF_DTYPE["name"] = "float32"
        mx_params, mx_buffers = _to_mx(mx, params), _to_mx(mx, buffers)
        mx_x = mx.array(x, dtype=mx.float64)
        y0, _, frozen = case.ref(mx, mx_x, mx_params, mx_buffers, training, None)
        G = np.random.default_rng(7).normal(size=tuple(y0.shape))
        mx_G = mx.array(G, dtype=mx.float64)

        def loss(x_, params_):
            return mx.sum(case.ref(mx, x_, params_, mx_buffers, training, frozen)[0] * mx_G)

        ref_gx, ref_gp = mx.grad(loss, argnums=(0, 1))(mx_x, mx_params)
        grad_x, grad_p = _layer_grads(layer, x, G)
        assert_close(grad_x, np.array(ref_gx), 2e-5, f"{case.id} dL/dx")
        assert set(grad_p) == set(params)
        for name in params:
            assert_close(grad_p[name], np.array(ref_gp[name]), 2e-5, f"{case.id} dL/d{name}")


@mlx_only
@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("case", [c for c in CASES if not c.stop_grad], ids=str)
def test_mlx_backward_matches_mx_grad_through_forward(case, training):
    """mx.grad straight through the layer's own forward (a fresh copy each call) equals its backward."""
    import mlx.core as mx

    with dualnorm.use_backend("mlx"):
        dualnorm.manual_seed(0)
        layer = case.make()
        fresh = case.make()
    randomize(layer)
    layer.train(training)
    fresh.train(training)
    snapshot = {k: host(v).copy() for k, v in layer.state_dict().items()}
    x = make_input(case).astype(np.float32)
    G = np.random.default_rng(7).normal(size=tuple(layer(x).shape)).astype(np.float32)
    names = [n for n, _ in layer.named_parameters()]
    mx_G = mx.array(G)

    def loss(x_, params_):
        fresh.load_state_dict(snapshot)
        for name, p in fresh.named_parameters():
            p.data = params_[name]
        return mx.sum(fresh(x_) * mx_G)

    start = {n: mx.array(snapshot[n]) for n in names}
    auto_gx, auto_gp = mx.grad(loss, argnums=(0, 1))(mx.array(x), start)
    grad_x, grad_p = _layer_grads(layer, x, G)
    assert_close(grad_x, np.array(auto_gx), 1e-5, f"{case.id} dL/dx")
    for name in names:
        assert_close(grad_p[name], np.array(auto_gp[name]), 1e-5, f"{case.id} dL/d{name}")
