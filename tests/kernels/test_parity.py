"""Every fast path in ``backend.kernels`` computes what the shared reference computes.

The reference (``dualnorm.nn.functional``, ``fn.reference``) is the readable math;
the kernels (``dualnorm/backends/kernels_*.py``) are the fast versions. Outputs,
batch statistics and gradients must agree to float32 tolerance on many shapes,
including blocks that span several cache blocks and threads, and inputs far from 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dualnorm
from dualnorm.nn import functional as F

RTOL, ATOL = 2e-4, 2e-4
COVERED = {
    "batch_norm_train",
    "batch_norm_train_backward",
    "batch_norm_eval",
    "batch_norm_eval_backward",
    "layer_norm",
    "layer_norm_backward",
    "group_norm",
    "group_norm_backward",
    "rms_norm",  # test_numba.py
    "rms_norm_backward",
    "max_pool2d",  # test_pool_parity.py
    "max_pool2d_backward",
    "conv2d",  # test_conv_parity.py
    "conv2d_backward",
    "local_response_norm",  # test_lrn_parity.py
    "local_response_norm_backward",
    "update_running_stats",  # test_numba.py (bit for bit)
    "batch_norm_train_tracked",
}


def _np(B, a):
    return None if a is None else np.asarray(dualnorm.to_numpy(a), dtype=np.float64)


def _close(got, want, what, rtol=RTOL, atol=ATOL):
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def _params(rng, shape, affine):
    if not affine:
        return None, None
    return (rng.standard_normal(shape) * 0.5 + 1.0).astype(np.float32), rng.standard_normal(shape).astype(
        np.float32
    )


def _kernel_or_skip(B, name):
    if name not in B.kernels:
        pytest.skip(f"backend {B.name!r} has no fast path for {name}")


def _bn_both(B, x, w, b, g, eps=1e-5):
    results = []
    for fwd, bwd in (
        (B.kernels["batch_norm_train"], B.kernels["batch_norm_train_backward"]),
        (F.batch_norm_train.reference, F.batch_norm_train_backward.reference),
    ):
        xa = B.asarray(x)
        wa = None if w is None else B.asarray(w)
        ba = None if b is None else B.asarray(b)
        y, mean, var, ctx = fwd(B, xa, wa, ba, eps)
        dx, dw, db = bwd(B, B.asarray(g), ctx, wa)
        results.append([_np(B, a) for a in (y, mean, var, dx, dw, db)])
    return results


BN_SHAPES = [(2, 1), (6, 3), (64, 5), (7, 4, 9), (6, 3, 5, 4), (3, 2, 2, 2, 2), (700, 300), (40, 8, 32, 32)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_reference(backend, rng, shape, affine):
    B = dualnorm.get_backend()
    _kernel_or_skip(B, "batch_norm_train")
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w, b = _params(rng, (shape[1],), affine)
    got, want = _bn_both(B, x, w, b, g)
    for name, a, e in zip(("y", "mean", "var", "dx", "dweight", "dbias"), got, want, strict=True):
        if e is None:
            assert a is None, name
            continue
        _close(a, e, f"{name} {shape}")


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("momentum", [0.1, "cumulative"])
def test_batch_norm_with_the_running_update_matches_reference(backend, rng, shape, momentum):
    B = dualnorm.get_backend()
    _kernel_or_skip(B, "batch_norm_train_tracked")
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    w, b = _params(rng, (shape[1],), True)
    rm, rv = _running(rng, shape[1])
    factor = 1.0 / np.asarray(4).astype(np.float32) if momentum == "cumulative" else momentum
    args = [B.asarray(a) for a in (x, w, b)] + [1e-5, B.asarray(rm), B.asarray(rv), factor]
    y, mean, var, new_mean, new_var, ctx = B.kernels["batch_norm_train_tracked"](B, *args)
    ry, rmean, rvar, _ = F.batch_norm_train.reference(B, *args[:4])
    n = x.size // shape[1]
    want = F.update_running_stats.reference(B, B.asarray(rm), B.asarray(rv), rmean, rvar, factor, n)
    for name, a, e in zip(
        ("y", "mean", "var", "running_mean", "running_var"),
        (y, mean, var, new_mean, new_var),
        (ry, rmean, rvar, *want),
        strict=True,
    ):
        assert a.dtype == np.float32, name
        _close(_np(B, a), _np(B, e), f"{name} {shape}")
    g = rng.standard_normal(shape).astype(np.float32)  # the context is batch_norm_train's
    got = B.kernels["batch_norm_train_backward"](B, B.asarray(g), ctx, args[1])
    _, _, _, rctx = F.batch_norm_train.reference(B, *args[:4])
    ref = F.batch_norm_train_backward.reference(B, B.asarray(g), rctx, args[1])
    for a, e in zip(got, ref, strict=True):
        _close(_np(B, a), _np(B, e), f"backward {shape}")


def _bne_both(B, x, w, b, rm, rv, g, eps=1e-5):
    """Eval mode (running statistics): kernel and reference, (y, dx, dweight, dbias) each."""
    results = []
    for fwd, bwd in (
        (B.kernels["batch_norm_eval"], B.kernels["batch_norm_eval_backward"]),
        (F.batch_norm_eval.reference, F.batch_norm_eval_backward.reference),
    ):
        wa = None if w is None else B.asarray(w)
        ba = None if b is None else B.asarray(b)
        y, ctx = fwd(B, B.asarray(x), wa, ba, B.asarray(rm), B.asarray(rv), eps)
        dx, dw, db = bwd(B, B.asarray(g), ctx, wa)
        results.append([_np(B, a) for a in (y, dx, dw, db)])
    return results


def _running(rng, c, offset=2.0):
    return (rng.standard_normal(c) + offset).astype(np.float32), (rng.random(c) * 8 + 0.5).astype(np.float32)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_eval_matches_reference(backend, rng, shape, affine):
    B = dualnorm.get_backend()
    _kernel_or_skip(B, "batch_norm_eval")
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w, b = _params(rng, (shape[1],), affine)
    rm, rv = _running(rng, shape[1])
    got, want = _bne_both(B, x, w, b, rm, rv, g)
    for name, a, e in zip(("y", "dx", "dweight", "dbias"), got, want, strict=True):
        _close(a, e, f"{name} {shape}")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(2, 40),
    c=st.integers(1, 12),
    spatial=st.lists(st.integers(1, 9), min_size=0, max_size=2),
    offset=st.sampled_from([0.0, 5.0, -300.0]),
    seed=st.integers(0, 2**16),
)
def test_batch_norm_random_shapes(backend, n, c, spatial, offset, seed):
    B = dualnorm.get_backend()
    _kernel_or_skip(B, "batch_norm_train")
    r = np.random.default_rng(seed)
    shape = (n, c, *spatial)
    x = (r.standard_normal(shape) + offset).astype(np.float32)
    g = r.standard_normal(shape).astype(np.float32)
    w, b = _params(r, (c,), True)
    got, want = _bn_both(B, x, w, b, g)
    for a, e in zip(got, want, strict=True):
        _close(a, e, f"{shape}", rtol=1e-3, atol=1e-3)


def _ln_both(B, x, w, b, g, k, eps=1e-5):
    axes = tuple(range(x.ndim - k, x.ndim))
    results = []
    for fwd, bwd in (
        (B.kernels["layer_norm"], B.kernels["layer_norm_backward"]),
        (F.layer_norm.reference, F.layer_norm_backward.reference),
    ):
        wa = None if w is None else B.asarray(w)
        ba = None if b is None else B.asarray(b)
        y, ctx = fwd(B, B.asarray(x), wa, ba, axes, eps)
        dx, dw, db = bwd(B, B.asarray(g), ctx, wa, axes)
        results.append([_np(B, a) for a in (y, dx, dw, db)])
    return results


LN_CASES = [((5, 7), 1), ((3, 4, 6), 1), ((3, 4, 6), 2), ((1, 3), 1), ((600, 512), 1), ((8, 70, 1024), 1)]


@pytest.mark.parametrize(("shape", "k"), LN_CASES)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_matches_reference(backend, rng, shape, k, affine):
    B = dualnorm.get_backend()
    _kernel_or_skip(B, "layer_norm")
    trailing = shape[len(shape) - k :]
    x = (rng.standard_normal(shape) * 2 - 1).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w, b = _params(rng, trailing, affine != "none")
    if affine == "weight":
        b = None
    got, want = _ln_both(B, x, w, b, g, k)
    for name, a, e in zip(("y", "dx"), got[:2], want[:2], strict=True):
        _close(a, e, f"{name} {shape}")
    if w is not None:
        _close(got[2], want[2], f"dweight {shape}")
    if b is not None:
        _close(got[3], want[3], f"dbias {shape}")


def _gn_both(B, x, groups, w, b, g, eps=1e-5):
    results = []
    for fwd, bwd in (
        (B.kernels["group_norm"], B.kernels["group_norm_backward"]),
        (F.group_norm.reference, F.group_norm_backward.reference),
    ):
        wa = None if w is None else B.asarray(w)
        ba = None if b is None else B.asarray(b)
        y, ctx = fwd(B, B.asarray(x), groups, wa, ba, eps)
        dx, dw, db = bwd(B, B.asarray(g), ctx, wa)
        results.append([_np(B, a) for a in (y, dx, dw, db)])
    return results


GN_CASES = [
    ((4, 6, 5), 3),
    ((2, 8, 3, 3), 2),
    ((3, 4), 1),
    ((3, 4, 7), 4),
    ((16, 32, 24, 24), 8),
    ((2, 6), 6),
]


@pytest.mark.parametrize(("shape", "groups"), GN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_reference(backend, rng, shape, groups, affine):
    B = dualnorm.get_backend()
    _kernel_or_skip(B, "group_norm")
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w, b = _params(rng, (shape[1],), affine)
    got, want = _gn_both(B, x, groups, w, b, g)
    for name, a, e in zip(("y", "dx", "dweight", "dbias"), got, want, strict=True):
        if e is None:
            continue
        _close(a, e, f"{name} {shape}")


# --- stability: float32 data far from zero ------------------------------------------------


def _large_mean(rng, shape):
    return (1e4 + rng.normal(0.0, 1e-2, shape)).astype(np.float32)


def _xhat64(x, axes):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5 * 0)


@pytest.mark.parametrize("shape", [(256, 4), (32, 3, 8, 8), (1024, 64)])
def test_batch_norm_large_mean_is_stable(backend, rng, shape):
    B = dualnorm.get_backend()
    x = _large_mean(rng, shape)
    y, _, var, _ = F.batch_norm_train(B, B.asarray(x), None, None, 0.0)
    axes = F.batch_axes(x.ndim)
    np.testing.assert_allclose(_np(B, y), _xhat64(x, axes), atol=1e-2)
    np.testing.assert_allclose(_np(B, var), x.astype(np.float64).var(axis=axes), rtol=1e-2)


@pytest.mark.parametrize("shape", [(256, 4), (32, 3, 8, 8)])
def test_batch_norm_eval_large_mean_is_stable(backend, rng, shape):
    B = dualnorm.get_backend()
    x = _large_mean(rng, shape)
    axes = F.batch_axes(x.ndim)
    x64 = x.astype(np.float64)
    rm, rv = x64.mean(axis=axes).astype(np.float32), x64.var(axis=axes).astype(np.float32)
    y, _ = F.batch_norm_eval(B, B.asarray(x), None, None, B.asarray(rm), B.asarray(rv), 0.0)
    cs = F.channel_shape(x.ndim, x.shape[1])
    want = (x64 - rm.astype(np.float64).reshape(cs)) / np.sqrt(rv.astype(np.float64).reshape(cs))
    np.testing.assert_allclose(_np(B, y), want, atol=1e-2)


@pytest.mark.parametrize("shape", [(16, 512), (4, 3, 1000)])
def test_layer_norm_large_mean_is_stable(backend, rng, shape):
    B = dualnorm.get_backend()
    x = _large_mean(rng, shape)
    y, _ = F.layer_norm(B, B.asarray(x), None, None, (x.ndim - 1,), 0.0)
    np.testing.assert_allclose(_np(B, y), _xhat64(x, (x.ndim - 1,)), atol=1e-2)


def test_group_norm_large_mean_is_stable(backend, rng):
    B = dualnorm.get_backend()
    x = _large_mean(rng, (4, 8, 16, 16))
    y, _ = F.group_norm(B, B.asarray(x), 2, None, None, 0.0)
    want = _xhat64(x.reshape(4, 2, -1), (2,)).reshape(x.shape)
    np.testing.assert_allclose(_np(B, y), want, atol=1e-2)


# --- long rows: statistics within 1e-5 of float64 (a float32 running sum drifts) ----------
#
# Rows of 2**18 elements (longer than any single float32 BLAS/MLX reduction stays accurate
# for), one weight and no bias: every kernel must take weight and bias independently.


def _long_rows(name, rng):
    half = 1 << 17
    x = rng.random({"batch_norm_train": (2, 2, half), "group_norm": (1, 4, half)}.get(name, (2, 1 << 18)))
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ["batch_norm_train", "layer_norm", "group_norm"])
def test_long_rows_match_float64(backend, rng, name):
    B = dualnorm.get_backend()
    x = _long_rows(name, rng)
    w = np.full(x.shape[1] if name != "layer_norm" else x.shape[1:], 0.5, np.float32)
    g = rng.random(x.shape).astype(np.float32)
    if name == "batch_norm_train":
        axes, y_of = (0, 2), lambda: B.kernels[name](B, B.asarray(x), B.asarray(w), None, 1e-5)
        fwd_bwd = B.kernels["batch_norm_train_backward"]
        wb = w.reshape(1, -1, 1)
    elif name == "layer_norm":
        axes, y_of = (1,), lambda: B.kernels[name](B, B.asarray(x), B.asarray(w), None, (1,), 1e-5)
        fwd_bwd = B.kernels["layer_norm_backward"]
        wb = w
    else:
        axes, y_of = (1, 2), lambda: B.kernels[name](B, B.asarray(x), 2, B.asarray(w), None, 1e-5)
        fwd_bwd = B.kernels["group_norm_backward"]
        wb = w.reshape(1, -1, 1)
    _kernel_or_skip(B, name)
    out = y_of()
    x64 = x.astype(np.float64)
    xg = x64.reshape(1, 2, -1) if name == "group_norm" else x64
    ax = (2,) if name == "group_norm" else axes
    mean = xg.mean(axis=ax, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=ax, keepdims=True)
    x_hat = ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(_np(B, out[0]), x_hat * wb, rtol=0, atol=1e-5, err_msg=f"{name} y")
    if name == "batch_norm_train":
        np.testing.assert_allclose(_np(B, out[1]), mean.ravel(), rtol=1e-5, err_msg="mean")
        np.testing.assert_allclose(_np(B, out[2]), var.ravel(), rtol=1e-5, err_msg="var")
    args = (B, B.asarray(g), out[-1], B.asarray(w)) + (((1,),) if name == "layer_norm" else ())
    _, dw, db = fwd_bwd(*args)
    g64 = g.astype(np.float64)
    red = (0,) if name == "layer_norm" else (0, 2)
    np.testing.assert_allclose(_np(B, db), g64.sum(axis=red), rtol=1e-5, err_msg=f"{name} dbias")
    np.testing.assert_allclose(
        _np(B, dw), (g64 * x_hat).sum(axis=red), rtol=1e-4, atol=1e-2, err_msg="dweight"
    )


# --- the layers use the fast paths and agree with the reference end to end ----------------


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: dualnorm.nn.BatchNorm1d(6), (32, 6)),
        (lambda: dualnorm.nn.BatchNorm1d(3), (16, 3, 10)),
        (lambda: dualnorm.nn.BatchNorm2d(4), (8, 4, 6, 6)),
        (lambda: dualnorm.nn.BatchNorm2d(4).eval(), (8, 4, 6, 6)),
        (lambda: dualnorm.nn.BatchNorm1d(6).eval(), (32, 6)),
        (lambda: dualnorm.nn.LayerNorm((5, 6)), (7, 5, 6)),
        (lambda: dualnorm.nn.GroupNorm(2, 4), (3, 4, 5, 5)),
    ],
)
def test_layers_agree_with_reference_kernels(backend, rng, monkeypatch, make, shape):
    B = dualnorm.get_backend()
    x = (rng.standard_normal(shape) + 3).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    outs = []
    for use_kernels in (True, False):
        if not use_kernels:
            monkeypatch.setattr(B, "kernels", {})
        dualnorm.manual_seed(0)
        layer = make()
        for _ in range(2):  # twice: running statistics and accumulated grads too
            y = layer(x)
            dx = layer.backward(g)
        state = {k: _np(B, v) for k, v in layer.state_dict().items()}
        grads = [_np(B, p.grad) for p in layer.parameters()]
        outs.append((_np(B, y), _np(B, dx), state, grads))
    (y1, dx1, s1, g1), (y0, dx0, s0, g0) = outs
    _close(y1, y0, "y")
    _close(dx1, dx0, "dx")
    for key in s0:
        _close(s1[key], s0[key], key)
    for a, e in zip(g1, g0, strict=True):
        _close(a, e, "param grad")


def test_every_registered_kernel_is_covered_here(backend):
    B = dualnorm.get_backend()
    missing = set(B.kernels) - COVERED
    assert not missing, f"kernels without a parity test: {sorted(missing)}"
