"""Agreement at the edges of float32, on every kernel table (issue 21).

* Data at 1e30: float32 squares of the deviations overflow, but the float64 answer (and
  1 / std = 1e-30) is finite; x_hat must not collapse to 0.
* Data near 3e38: float32 sums overflow; the batch statistics stay those of float64 (the
  variance of a constant channel is 0, not NaN).
"""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
import dualnorm.nn as nn

IMAGES = (6, 8, 4, 4)
# name -> (layer, input shape, statistics view of the input, its axes, centred, parameter-gradient axes).
# The view is None where the statistics are over axes of the input itself (GroupNorm: (N, G, rest)).
HUGE_LAYERS = {
    # MLX: the fused kernel (rows of 128 and of 4 elements) and the reference (rows past FAST_LN_MAX)
    "LayerNorm": (lambda: nn.LayerNorm((8, 4, 4)), IMAGES, None, (1, 2, 3), True, (0,)),
    "LayerNorm-last": (lambda: nn.LayerNorm(4), IMAGES, None, (3,), True, (0, 1, 2)),
    "LayerNorm-long": (lambda: nn.LayerNorm(8192), (3, 8192), None, (1,), True, (0,)),
    "GroupNorm": (lambda: nn.GroupNorm(4, 8), IMAGES, (6, 4, -1), (2,), True, (0, 2, 3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(8), IMAGES, None, (0, 2, 3), True, (0, 2, 3)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(8, affine=True), IMAGES, None, (2, 3), True, (0, 2, 3)),
    "RMSNorm": (lambda: nn.RMSNorm((8, 4, 4)), IMAGES, None, (1, 2, 3), False, (0,)),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(HUGE_LAYERS))
def test_data_at_1e30_normalizes_as_in_float64(backend, rng, name, request):
    """Forward, input gradient and parameter gradients at 1e30 against the float64 formulas."""
    if backend == "mlx" and name in ("LayerNorm", "LayerNorm-last"):
        # Kept as a known miss: scaling each row before the fused kernel fixes it (branch mlx1e30)
        # but costs 35% of every MLX LayerNorm forward on the CPU; PyTorch float32 gives NaN here.
        request.applymarker(pytest.mark.xfail(strict=True, reason="mx.fast.layer_norm squares in float32"))
    make, shape, view, axes, centred, param_axes = HUGE_LAYERS[name]
    x = (rng.standard_normal(shape) * 1e30).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    layer = make()
    y = dualnorm.to_numpy(layer(x)).astype(np.float64)
    dx = dualnorm.to_numpy(layer.backward(g)).astype(np.float64)

    eps = 1e-5 if centred else float(np.finfo(np.float32).eps)
    x64 = x.astype(np.float64).reshape(view or shape)
    g64 = g.astype(np.float64).reshape(view or shape)
    mean = x64.mean(axis=axes, keepdims=True) if centred else 0.0
    inv_std = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(axis=axes, keepdims=True) + eps)  # ~1e-30
    x_hat = (x64 - mean) * inv_std
    mean_g = g64.mean(axis=axes, keepdims=True) if centred else 0.0
    want_dx = inv_std * (g64 - mean_g - x_hat * (g64 * x_hat).mean(axis=axes, keepdims=True))
    x_hat, want_dx = x_hat.reshape(shape), want_dx.reshape(shape)

    np.testing.assert_allclose(y, x_hat, rtol=1e-4, atol=1e-4)  # weight 1, bias 0: y = x_hat
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=1e-3 * np.abs(want_dx).max())
    grads = {n: dualnorm.to_numpy(p.grad).astype(np.float64) for n, p in layer.named_parameters()}
    assert grads, "every layer here is affine: its parameter gradients are checked too"
    np.testing.assert_allclose(
        grads["weight"].reshape(-1), (g * x_hat).sum(axis=param_axes).reshape(-1), atol=1e-3
    )
    if "bias" in grads:
        np.testing.assert_allclose(
            grads["bias"].reshape(-1), g.sum(axis=param_axes, dtype=np.float64).reshape(-1), atol=1e-3
        )


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_batch_statistics_near_float32_max_are_never_nan(backend, kernel_table):
    x = np.full((4, 4), 3e38, np.float32)
    x[:, 1] = np.array([3e38, -3e38, 3e38, -3e38], np.float32)
    x[:, 3] = np.array([-3e38, 3e38, 3e38, 3e38], np.float32)  # deviations from the mean past 3.4e38
    bn = nn.BatchNorm1d(4)
    bn(x)
    rm = dualnorm.to_numpy(bn.running_mean).astype(np.float64)
    rv = dualnorm.to_numpy(bn.running_var).astype(np.float64)
    assert not np.isnan(rm).any() and not np.isnan(rv).any()
    assert rm[1] == 0.0 and rv[1] == np.inf  # the float64 variance 1.2e77 is past float32
    assert rv[3] == np.inf  # float64: 6.75e76
    if backend == "numpy":  # float64 accumulation: the float64 answer (PyTorch's float32 sum: inf)
        np.testing.assert_allclose(rm[[0, 2]], 0.1 * 3e38, rtol=1e-6)
        np.testing.assert_allclose(rv[[0, 2]], 0.9, rtol=1e-6)  # variance 0: 0.9 * 1 + 0.1 * 0
        np.testing.assert_allclose(rm[3], 0.1 * 1.5e38, rtol=1e-6)  # not -inf
    else:  # float32 sums overflow, as PyTorch's: +inf, not NaN
        assert (rm[[0, 2, 3]] == np.inf).all()


# --- layers around the norms, as PyTorch takes them ---------------------------------------------


def test_selu_backward_at_nan_is_the_positive_slope(backend):
    selu = nn.SELU()
    selu(np.array([np.nan, -1.0, 1.0], np.float32))
    dx = dualnorm.to_numpy(selu.backward(np.ones(3, np.float32)))
    # PyTorch's elu_backward takes the exponential side only for x <= 0: NaN gets scale
    np.testing.assert_allclose(
        dx, [nn.SELU.scale, nn.SELU.scale * nn.SELU.alpha * np.exp(-1.0), nn.SELU.scale], rtol=1e-6
    )
    torch = pytest.importorskip("torch")
    t = torch.tensor([float("nan"), -1.0, 1.0], requires_grad=True)
    torch.selu(t).sum().backward()
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-6)


def test_sigmoid_takes_bool_input_as_zero_and_one(backend):
    sigmoid = nn.Sigmoid()
    y = dualnorm.to_numpy(sigmoid(np.array([True, False])))
    np.testing.assert_allclose(y, [1 / (1 + np.exp(-1.0)), 0.5], rtol=1e-6)
    assert y.dtype == np.float32
    with pytest.raises(ValueError, match=r"Sigmoid\.backward: the last forward's input was bool"):
        sigmoid.backward(np.ones(2, np.float32))  # a bool has no gradient, as in PyTorch
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(y, torch.sigmoid(torch.tensor([True, False])).numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm"])
def test_layer_norm_of_an_empty_shape_builds_and_refuses_its_call(backend, name):
    ln = getattr(nn, name)(())  # PyTorch builds it, and its forward raises a RuntimeError
    assert ln.normalized_shape == ()
    assert dualnorm.to_numpy(ln.weight.data).shape == ()  # as PyTorch's state_dict: a 0-d weight
    with pytest.raises(RuntimeError, match=rf"normalized_shape=\(\).*{name}\(\(3,\)\)"):
        ln(np.ones((2, 3), np.float32))


def test_integer_labels_stay_integer_on_every_backend(backend):
    from dualnorm.losses import CrossEntropyLoss

    B = dualnorm.get_backend()
    labels = B.asarray(np.array([0, 1, 3]))
    assert B.dtype_kind(labels.dtype) == "i"
    logits = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    loss = float(dualnorm.to_numpy(CrossEntropyLoss()(B.asarray(logits), labels)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-logp[[0, 1, 2], [0, 1, 3]].mean(), rel=1e-5)


@pytest.mark.parametrize(
    ("make", "shape"),
    [(lambda: nn.BatchNorm3d(2), (6, 2, 7, 4, 4)), (lambda: nn.BatchNorm1d(8), (96, 8))],
    ids=["BatchNorm3d", "BatchNorm1d"],
)
def test_batch_norm_gradients_of_data_far_from_zero_match_float64(backend, kernel_table, make, shape):
    """Mean -50, std 1: the weight gradient sum(g * x_hat) must not lose the mean's 6 bits to
    cancellation (sum(g * x) - mean * sum(g) in float32 was 100x further from float64 than PyTorch)."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) - 50.0).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    layer = make()
    layer(x)
    dx = dualnorm.to_numpy(layer.backward(g)).astype(np.float64)
    axes = (0, *range(2, len(shape)))
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(x64.var(axis=axes, keepdims=True) + 1e-5)
    x_hat = (x64 - mean) * inv_std
    want_gw = (g64 * x_hat).sum(axis=axes)
    want_dx = inv_std * (
        g64 - g64.mean(axis=axes, keepdims=True) - x_hat * (g64 * x_hat).mean(axis=axes, keepdims=True)
    )
    np.testing.assert_allclose(dualnorm.to_numpy(layer.weight.grad), want_gw, rtol=0, atol=2e-5)
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=2e-5)
