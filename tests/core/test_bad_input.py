"""Bad input: a ValueError/TypeError that says what was expected and what came, and no state change."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from tests.core._cases import host

HAS_MLX = importlib.util.find_spec("mlx") is not None


def _snapshot(layer):
    return {k: host(v).copy() for k, v in layer.state_dict().items()}


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


def raises_untouched(layer, x, exc, *fragments):
    """Calling ``layer(x)`` raises ``exc`` naming every fragment; parameters and buffers stay as they were."""
    before = _snapshot(layer)
    with pytest.raises(exc) as info:
        layer(x)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    _assert_same(before, _snapshot(layer))
    return message


def _trained(layer, x):
    """A layer whose running statistics are no longer the defaults."""
    layer(x)
    return layer


# --- wrong number of dimensions --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "shape", "expected"),
    [
        (lambda: nn.BatchNorm1d(3), (3,), "2-D or 3-D"),
        (lambda: nn.BatchNorm1d(3), (2, 3, 2, 2), "2-D or 3-D"),
        (lambda: nn.BatchNorm2d(3), (2, 3, 4), "4-D"),
        (lambda: nn.BatchNorm2d(3), (2, 3), "4-D"),
        (lambda: nn.BatchNorm3d(3), (2, 3, 2, 2), "5-D"),
        (lambda: nn.BatchRenorm1d(3), (2, 3, 2, 2), "2-D or 3-D"),
        (lambda: nn.BatchRenorm2d(3), (4, 3), "4-D"),
        (lambda: nn.InstanceNorm1d(3, track_running_stats=True), (3,), "2-D or 3-D"),
        (lambda: nn.InstanceNorm1d(3), (2, 3, 2, 2), "2-D or 3-D"),
        (lambda: nn.InstanceNorm2d(3), (3, 4), "3-D or 4-D"),
        (lambda: nn.GroupNorm(1, 3), (3,), "at least 2 dimensions"),
        (lambda: nn.LocalResponseNorm(2), (4, 3), "3 or more dimensions"),
    ],
)
def test_wrong_ndim(backend, make, shape, expected):
    layer = make()
    if getattr(layer, "running_mean", None) is not None:
        ok_shape = {
            nn.BatchNorm1d: (4, 3),
            nn.BatchRenorm1d: (4, 3),
            nn.BatchNorm2d: (4, 3, 2, 2),
            nn.BatchRenorm2d: (4, 3, 2, 2),
            nn.BatchNorm3d: (2, 3, 2, 2, 2),
            nn.InstanceNorm1d: (2, 3, 4),
        }[type(layer)]
        _trained(layer, np.random.default_rng(0).normal(size=ok_shape))
    message = raises_untouched(layer, np.ones(shape), ValueError, expected, str(shape))
    assert f"{len(shape)}-D" in message or "shape" in message


def test_linear_scalar_input(backend):
    raises_untouched(nn.Linear(3, 2), np.float32(1.0), ValueError, "0-D")


# --- wrong feature / channel count ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "shape", "fragments"),
    [
        (lambda: nn.BatchNorm1d(3), (4, 2), ("BatchNorm1d(3)", "expects 3", "got 2", "(4, 2)")),
        (lambda: nn.BatchNorm1d(3), (4, 5, 2), ("expects 3", "got 5")),
        (lambda: nn.BatchNorm2d(3), (2, 4, 2, 2), ("expects 3", "got 4")),
        (lambda: nn.BatchRenorm1d(3), (4, 2), ("expects 3", "got 2")),
        (lambda: nn.InstanceNorm1d(3, track_running_stats=True), (2, 4, 5), ("expects 3", "got 4")),
        # unbatched (C, H, W); affine, since without weights or running stats PyTorch (and dualnorm) normalize
        # whatever the channel count, with a warning (tests/core/test_torch_edge_cases.py)
        (lambda: nn.InstanceNorm2d(3, affine=True), (2, 5, 5), ("expects 3", "got 2")),
        (lambda: nn.GroupNorm(2, 4), (2, 6, 3), ("expects 4", "got 6")),
        (lambda: nn.Linear(3, 2), (5, 4), ("expects 3", "got 4")),
        (lambda: nn.LayerNorm(4), (2, 5), ("(4,)", "(2, 5)")),
        (lambda: nn.LayerNorm((2, 3)), (4, 3, 2), ("(2, 3)", "(4, 3, 2)")),
        (lambda: nn.RMSNorm(4), (3,), ("(4,)", "(3,)")),
    ],
)
def test_wrong_feature_count(backend, make, shape, fragments):
    layer = make()
    if type(layer) in (nn.BatchNorm1d, nn.BatchRenorm1d):
        _trained(layer, np.random.default_rng(0).normal(size=(4, 3)))
    raises_untouched(layer, np.ones(shape), ValueError, *fragments)


# --- a single value per channel -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.BatchNorm1d(3), (1, 3)),
        (lambda: nn.BatchNorm1d(3), (1, 3, 1)),
        (lambda: nn.BatchNorm2d(2), (1, 2, 1, 1)),
        (lambda: nn.BatchNorm3d(2), (1, 2, 1, 1, 1)),
        (lambda: nn.BatchRenorm1d(3), (1, 3)),
    ],
)
def test_single_value_per_channel_in_training(backend, make, shape):
    layer = _trained(make(), np.random.default_rng(0).normal(size=(4, *make_shape_tail(shape))))
    raises_untouched(
        layer, np.ones(shape), ValueError, "more than 1 value per channel when training", str(shape)
    )
    assert int(host(layer.num_batches_tracked)) == 1
    # The same batch of one works in eval mode, with the running statistics.
    layer.eval()
    y = host(layer(np.ones(shape)))
    assert y.shape == shape and np.isfinite(y).all()


def make_shape_tail(shape):
    return shape[1:]


def test_batch_of_one_without_running_stats_fails_in_eval_too(backend):
    """PyTorch uses batch statistics in eval when none are tracked, and refuses a single value."""
    layer = nn.BatchNorm1d(3, track_running_stats=False).eval()
    raises_untouched(layer, np.ones((1, 3)), ValueError, "more than 1 value per channel")


def test_instance_norm_single_spatial_element(backend):
    raises_untouched(
        nn.InstanceNorm1d(2), np.ones((3, 2, 1)), ValueError, "more than 1 spatial element", "(3, 2, 1)"
    )


# --- constructor arguments -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (lambda: nn.BatchNorm1d(0), ("num_features", "positive integer", "0")),
        (lambda: nn.BatchNorm1d(-2), ("num_features", "-2")),
        (lambda: nn.BatchNorm1d(2.5), ("num_features", "2.5")),
        (lambda: nn.BatchNorm1d(True), ("num_features", "True")),
        (lambda: nn.BatchNorm1d(3, eps=-1e-5), ("eps", ">= 0", "-1e-05")),
        (lambda: nn.BatchNorm1d(3, eps="small"), ("eps", "number", "'small'")),
        (lambda: nn.BatchNorm2d(3, momentum=1.5), ("momentum", "[0, 1]", "1.5")),
        (lambda: nn.BatchNorm2d(3, momentum=-0.1), ("momentum", "-0.1")),
        (lambda: nn.BatchRenorm1d(3, rmax=0.5), ("rmax", ">= 1", "0.5")),
        (lambda: nn.BatchRenorm1d(3, dmax=-1), ("dmax", "-1")),
        (lambda: nn.InstanceNorm1d(0), ("num_features", "0")),
        (lambda: nn.InstanceNorm2d(3, momentum=2), ("momentum", "2")),
        (lambda: nn.LayerNorm(0), ("normalized_shape", "0")),
        (
            lambda: nn.LayerNorm(())(np.ones((2, 3), np.float32)),
            ("normalized_shape=()", "(3,)"),
        ),  # builds; the call raises
        (lambda: nn.LayerNorm(4, eps=-1), ("eps", "-1")),
        (lambda: nn.RMSNorm((2, -1)), ("normalized_shape", "(2, -1)")),
        (lambda: nn.RMSNorm(4, eps=-0.5), ("eps", "-0.5")),
        (lambda: nn.GroupNorm(3, 4), ("divisible", "4", "3", "[1, 2, 4]")),
        (lambda: nn.GroupNorm(0, 4), ("num_groups", "0")),
        (lambda: nn.GroupNorm(2, 4, eps=-1.0), ("eps", "-1.0")),
        (lambda: nn.LocalResponseNorm(0), ("size", "0")),
        (lambda: nn.LocalResponseNorm(2, k=-1), ("k", "-1")),
        (lambda: nn.Linear(0, 3), ("in_features", "0")),
        (lambda: nn.Linear(3, 0), ("out_features", "0")),
        (lambda: nn.BatchNorm1d(3, dtype="int32"), ("'int32'", "float32", "float64")),
        (lambda: nn.Sequential(nn.ReLU(), "relu"), ("item '1'", "str")),
        (lambda: nn.utils.weight_norm(nn.Linear(2, 2), name="kernel"), ("'kernel'", "['weight', 'bias']")),
        (lambda: nn.utils.spectral_norm(nn.ReLU()), ("'weight'", "[]")),
        (lambda: nn.utils.spectral_norm(nn.Linear(2, 2), n_power_iterations=0), ("n_power_iterations", "0")),
    ],
)
def test_bad_constructor_arguments(backend, build, fragments):
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


# --- non-numeric dtypes --------------------------------------------------------------------------------------------
BAD_VALUES = {
    "str": np.array([["a", "b"], ["c", "d"]]),
    "object": np.array([[1.0, None], [2.0, 3.0]], dtype=object),
    "bool": np.array([[True, False], [False, True]]),
    "complex": np.array([[1 + 2j, 1.0], [2.0, 3.0]]),
    "ragged": [[1.0, 2.0], [3.0]],
}
LAYERS = {
    "bn": lambda: nn.BatchNorm1d(2),
    "renorm": lambda: nn.BatchRenorm1d(2),
    "ln": lambda: nn.LayerNorm(2),
    "gn": lambda: nn.GroupNorm(1, 2),
    "rms": lambda: nn.RMSNorm(2),
    "linear": lambda: nn.Linear(2, 2),
    "relu": lambda: nn.ReLU(),
    "seq": lambda: nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)),
}


@pytest.mark.parametrize("layer_id", list(LAYERS))
@pytest.mark.parametrize("kind", list(BAD_VALUES))
def test_non_numeric_input_is_a_type_error(backend, layer_id, kind):
    layer = LAYERS[layer_id]()
    message = raises_untouched(layer, BAD_VALUES[kind], TypeError)
    assert "expected a real floating-point or integer" in message or "could not be read" in message
    if kind != "ragged":
        assert str(BAD_VALUES[kind].dtype) in message


@pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")
def test_non_numeric_mlx_arrays_are_type_errors():
    import mlx.core as mx

    with dualnorm.use_backend("mlx"):
        bn = nn.BatchNorm1d(2)
    for bad in (mx.array([[True, False], [False, True]]), mx.array([[1 + 1j, 2], [3, 4]])):
        raises_untouched(bn, bad, TypeError, str(bad.dtype))


def test_integer_input_is_accepted(backend):
    y = host(nn.BatchNorm1d(2)(np.array([[1, 2], [3, 4]], dtype=np.int64)))
    np.testing.assert_allclose(y, [[-1, -1], [1, 1]], atol=1e-4)


# --- backward ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.BatchNorm1d(2),
        lambda: nn.LayerNorm(2),
        lambda: nn.GroupNorm(1, 2),
        lambda: nn.InstanceNorm1d(2),
        lambda: nn.RMSNorm(2),
        lambda: nn.LocalResponseNorm(2),
        lambda: nn.Linear(2, 2),
        lambda: nn.Sigmoid(),
        lambda: nn.utils.weight_norm(nn.Linear(2, 2)),
        lambda: nn.utils.spectral_norm(nn.Linear(2, 2)),
        lambda: nn.Sequential(nn.Linear(2, 2), nn.ReLU()),
    ],
)
def test_backward_before_forward(backend, make):
    layer = make()
    with pytest.raises(ValueError, match="before a forward") as info:
        layer.backward(np.ones((3, 2)))
    assert isinstance(info.value, dualnorm.StateError)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.BatchNorm1d(2), (4, 2)),
        (lambda: nn.LayerNorm(2), (4, 2)),
        (lambda: nn.GroupNorm(1, 2), (4, 2, 3)),
        (lambda: nn.InstanceNorm1d(2), (2, 3)),
        (lambda: nn.RMSNorm(2), (4, 2)),
        (lambda: nn.LocalResponseNorm(2), (4, 2, 3)),
        (lambda: nn.Linear(2, 3), (4, 2)),
        (lambda: nn.Tanh(), (4, 2)),
    ],
)
def test_grad_output_of_the_wrong_shape(backend, make, shape):
    layer = make()
    y = layer(np.random.default_rng(0).normal(size=shape))
    wrong = (*y.shape[:-1], y.shape[-1] + 1)
    params_before = {n: p.grad for n, p in layer.named_parameters()}
    with pytest.raises(ValueError) as info:
        layer.backward(np.ones(wrong))
    assert str(wrong) in str(info.value) and str(tuple(y.shape)) in str(info.value)
    assert all(p.grad is params_before[n] for n, p in layer.named_parameters())


def test_grad_output_of_a_bad_dtype(backend):
    layer = nn.LayerNorm(2)
    layer(np.ones((3, 2)))
    with pytest.raises(TypeError, match="grad_output"):
        layer.backward(np.full((3, 2), "x"))


# --- load_state_dict -------------------------------------------------------------------------------------------------
def _model():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    model(np.random.default_rng(0).normal(size=(5, 2)))
    return model


def test_load_state_dict_missing_and_unexpected_keys(backend):
    model = _model()
    before = _snapshot(model)
    state = dict(before)
    del state["1.running_var"]
    state["1.running_std"] = np.ones(3)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "missing keys ['1.running_var']" in message and "unexpected keys ['1.running_std']" in message
    _assert_same(before, _snapshot(model))


def test_load_state_dict_shape_mismatch_leaves_module_untouched(backend):
    model = _model()
    before = _snapshot(model)
    state = {k: v + 1 for k, v in before.items()}  # every value changes ...
    state["1.running_mean"] = np.zeros(4)  # ... but one shape is wrong: nothing may be written
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    assert "1.running_mean" in str(info.value) and "(4,)" in str(info.value) and "(3,)" in str(info.value)
    _assert_same(before, _snapshot(model))


def test_load_state_dict_bad_dtype_leaves_module_untouched(backend):
    model = _model()
    before = _snapshot(model)
    state = {k: v + 1 for k, v in before.items()}
    state["1.weight"] = np.array(["a", "b", "c"])
    with pytest.raises(TypeError, match=r"1\.weight"):
        model.load_state_dict(state)
    _assert_same(before, _snapshot(model))


def test_load_state_dict_non_strict_and_round_trip(backend):
    model = _model()
    other = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    other.load_state_dict(model.state_dict())
    _assert_same(_snapshot(model), _snapshot(other))
    partial = {"1.running_mean": np.full(3, 5.0)}
    other.load_state_dict(partial, strict=False)
    np.testing.assert_array_equal(host(other[1].running_mean), np.full(3, 5.0))


def test_nan_input_gives_nan_not_an_error(backend):
    x = np.full((3, 2), np.nan)
    for layer in (nn.BatchNorm1d(2), nn.LayerNorm(2), nn.InstanceNorm1d(3), nn.Linear(2, 2)):
        assert np.isnan(host(layer(x))).all(), type(layer).__name__
