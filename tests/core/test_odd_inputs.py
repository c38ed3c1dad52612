"""Odd inputs a user passes (issue 15): aliasing, stray warnings, backward twice, float16,
negative strides, huge and infinite values. Each test runs on every backend."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm.errors import StateError
from tests.core._cases import host

HAS_TORCH = importlib.util.find_spec("torch") is not None

LAYERS = [
    (lambda: nn.BatchNorm1d(3), (4, 3, 5)),
    (lambda: nn.BatchRenorm1d(3), (4, 3, 5)),
    (lambda: nn.GroupNorm(1, 3), (4, 3, 5)),
    (lambda: nn.InstanceNorm1d(3, affine=True), (4, 3, 5)),
    (lambda: nn.LayerNorm(5), (4, 3, 5)),
    (lambda: nn.RMSNorm(5), (4, 3, 5)),
    (lambda: nn.LocalResponseNorm(2), (4, 3, 5)),
    (lambda: nn.Linear(5, 2), (4, 3, 5)),
    (lambda: nn.ReLU(), (4, 3, 5)),
]
IDS = ["bn", "brn", "gn", "in", "ln", "rms", "lrn", "linear", "relu"]


def _forward_backward(layer, x):
    y = layer(x)
    return y, layer.backward(np.ones(tuple(y.shape), np.float32))


def test_load_state_dict_copies_the_callers_arrays(backend):
    layer = nn.BatchNorm1d(3)
    state = {k: host(v).copy() for k, v in layer.state_dict().items()}
    state["weight"] = np.array([1.0, 2.0, 3.0], np.float32)
    layer.load_state_dict(state)
    state["weight"][:] = 99.0  # the caller reuses its buffer
    state["running_mean"] += 5.0
    np.testing.assert_array_equal(host(layer.weight.data), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(host(layer.running_mean), 0.0)


@pytest.mark.parametrize(
    "fill", ["inf", "nan", "huge", "constant_eps0"], ids=["inf", "nan", "1e30", "constant-eps0"]
)
@pytest.mark.parametrize(("make", "shape"), LAYERS, ids=IDS)
def test_no_numpy_warnings_from_inside_a_layer(backend, make, shape, fill):
    """The result (inf/NaN/0, as PyTorch) is the answer; a RuntimeWarning from NumPy is noise."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    layer = make()
    if fill == "inf":
        x[0, 0, 0] = np.inf
    elif fill == "nan":
        x[1, 1, 1] = np.nan
    elif fill == "huge":
        x = x * np.float32(1e30)
    else:
        x = np.full(shape, 2.5, np.float32)
        if hasattr(layer, "eps") and not isinstance(layer, nn.BatchNorm1d | nn.BatchRenorm1d):
            layer.eps = 0.0  # batch norm refuses eps=0 in training (as PyTorch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, dx = _forward_backward(layer, x)
    if fill == "huge":  # finite (as PyTorch's BN/GN/IN/RMSNorm; PyTorch's LayerNorm gives NaN)
        assert np.isfinite(host(y)).all() and np.isfinite(host(dx)).all()


@pytest.mark.parametrize(("make", "shape"), LAYERS, ids=IDS)
def test_second_backward_for_one_forward_is_refused(backend, make, shape):
    layer = make()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    y, dx = _forward_backward(layer, x)
    grads = {n: host(p.grad).copy() for n, p in layer.named_parameters()}
    with pytest.raises(StateError, match="already called for the last forward"):
        layer.backward(np.ones(tuple(y.shape), np.float32))
    for n, p in layer.named_parameters():  # nothing accumulated twice
        np.testing.assert_array_equal(host(p.grad), grads[n], err_msg=n)
    _, dx2 = _forward_backward(layer, x)  # a new forward: backward works again
    np.testing.assert_allclose(host(dx2), host(dx), rtol=1e-5, atol=1e-6)


def test_second_backward_through_a_sequential_is_refused(backend):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    model(np.random.default_rng(2).standard_normal((5, 3)))
    model.backward(np.ones((5, 4)))
    with pytest.raises(StateError):
        model.backward(np.ones((5, 4)))


def test_a_failed_backward_can_be_retried(backend):
    layer = nn.LayerNorm(4)
    layer(np.random.default_rng(3).standard_normal((2, 4)))
    with pytest.raises(ValueError, match="grad_output has shape"):
        layer.backward(np.ones((3, 4)))
    assert tuple(layer.backward(np.ones((2, 4))).shape) == (2, 4)


@pytest.mark.parametrize(("make", "shape"), LAYERS[:7], ids=IDS[:7])
def test_float16_input_computes_and_returns_float32(backend, make, shape):
    """Documented choice: layers compute in their dtype (float32 by default); PyTorch keeps float16."""
    x = np.random.default_rng(4).standard_normal(shape)
    layer16, layer32 = make(), make()
    y16 = layer16(x.astype(np.float16))
    y32 = layer32(x.astype(np.float16).astype(np.float32))
    assert host(y16).dtype == np.float32
    np.testing.assert_array_equal(host(y16), host(y32))


@pytest.mark.parametrize(("make", "shape"), LAYERS, ids=IDS)
def test_negative_stride_views_are_read(backend, make, shape):
    """x[..., ::-1] (flip augmentation) crashed MLX: "Cannot convert DLPack arrays with negative strides"."""
    base = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    view = base[::-1, :, ::-1]
    assert any(s < 0 for s in view.strides)
    dualnorm.manual_seed(0)
    y_view, dx_view = _forward_backward(make(), view)
    dualnorm.manual_seed(0)  # the same initial weights (Linear)
    y_copy, dx_copy = _forward_backward(make(), np.ascontiguousarray(view))
    # equal up to summation order (NumPy sums a non-contiguous view in float64)
    np.testing.assert_allclose(host(y_view), host(y_copy), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(dx_view), host(dx_copy), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "torch_expr"),
    [
        (lambda: nn.BatchNorm1d(3), "torch.nn.BatchNorm1d(3)"),
        (lambda: nn.GroupNorm(1, 3), "torch.nn.GroupNorm(1, 3)"),
        (lambda: nn.InstanceNorm1d(3), "torch.nn.InstanceNorm1d(3)"),
    ],
)
def test_huge_finite_input_gives_the_float64_answer(backend, make, torch_expr):
    """1e30 in float32: the variance overflows float32. MLX once returned NaN (inf - inf) and PyTorch
    float32 gives x_hat = 0; dualnorm scales before squaring and gives the float64 answer (#21)."""
    x = (np.random.default_rng(6).standard_normal((4, 3, 5)) * 1e30).astype(np.float32)
    layer = make()
    y = host(layer(x))
    assert np.isfinite(y).all()
    if getattr(layer, "running_var", None) is not None:
        assert not np.isnan(host(layer.running_var)).any()
    if HAS_TORCH:
        import torch

        with torch.no_grad():
            want = eval(torch_expr, {"torch": torch}).double()(torch.tensor(x, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm1d(3), lambda: nn.BatchRenorm1d(3)], ids=["bn", "brn"])
def test_inf_in_a_batch_gives_an_infinite_running_mean(backend, make):
    """PyTorch: running_mean is +-inf for a channel holding +-inf (was NaN); other channels exact."""
    x = np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32)
    x[1, 0], x[2, 1] = np.inf, -np.inf
    layer = make()
    layer(x)
    rm = host(layer.running_mean)
    assert rm[0] == np.inf and rm[1] == -np.inf
    np.testing.assert_allclose(rm[2], 0.1 * x[:, 2].astype(np.float64).mean(), rtol=1e-5)
    if HAS_TORCH and isinstance(layer, nn.BatchNorm1d):
        import torch

        ref = torch.nn.BatchNorm1d(3)
        ref(torch.tensor(x))
        np.testing.assert_allclose(rm, ref.running_mean.numpy(), rtol=1e-5)


def test_tracked_instance_norm_with_inf_gives_an_infinite_running_mean(backend):
    x = np.random.default_rng(8).standard_normal((2, 3, 4)).astype(np.float32)
    x[0, 0, 1] = np.inf
    layer = nn.InstanceNorm1d(3, track_running_stats=True)
    layer(x)
    rm = host(layer.running_mean)
    assert rm[0] == np.inf and np.isfinite(rm[1:]).all()


def test_relu_gradient_at_nan_passes_as_torch(backend):
    layer = nn.ReLU()
    layer(np.array([np.nan, -1.0, 0.0, 2.0], np.float32))
    np.testing.assert_array_equal(host(layer.backward(np.ones(4, np.float32))), [1.0, 0.0, 0.0, 1.0])
    if HAS_TORCH:
        import torch

        xt = torch.tensor([np.nan, -1.0, 0.0, 2.0], requires_grad=True)
        torch.relu(xt).backward(torch.ones(4))
        np.testing.assert_array_equal(xt.grad.numpy(), [1.0, 0.0, 0.0, 1.0])


def test_to_numpy_of_backend_arrays_is_unchanged_by_conversion(backend):
    """The caller's negative-stride array is read, never written."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = base[:, ::-1]
    out = dualnorm.get_backend().asarray(view)
    np.testing.assert_array_equal(host(out), view)
    np.testing.assert_array_equal(base, np.arange(12, dtype=np.float32).reshape(3, 4))
