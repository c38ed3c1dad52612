"""PyTorch's own edge cases (issue 16): long rows, the LayerNorm input gradient, empty inputs,
torch 2.x arguments and checks, and RuntimeError where PyTorch raises one.

Each test runs on every backend. References are float64 NumPy formulas; torch, where
installed, is checked too.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm.errors import DualnormError
from tests.core._cases import host

HAS_TORCH = importlib.util.find_spec("torch") is not None
STATS_TOL = 1e-5  # the bound: statistics (and so outputs) within 1e-5 of float64


def _ref_norm(x, axes, eps=1e-5):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps), mean, var


def _ref_layer_norm_grad(x, g, eps=1e-5):
    """dL/dx of a plain layer norm over the last axis, in float64."""
    x_hat, _, var = _ref_norm(x, (-1,), eps)
    g = np.asarray(g, np.float64)
    return (g - g.mean(-1, keepdims=True) - x_hat * (g * x_hat).mean(-1, keepdims=True)) / np.sqrt(var + eps)


# --- 1. the MLX LayerNorm input gradient ------------------------------------------------------------


@pytest.mark.parametrize("width", [4096, 8192])  # MLX: the fused kernel, and the blocked reference
def test_layer_norm_input_gradient_is_right_in_column_0(backend, width):
    """The per-row shift before mx.fast.layer_norm leaked a gradient into column 0 (0.045 off at 8192)."""
    rng = np.random.default_rng(0)
    x = rng.random((8, width), dtype=np.float32)
    g = rng.random((8, width), dtype=np.float32)
    layer = nn.LayerNorm(width, elementwise_affine=False)
    layer(x)
    dx = host(layer.backward(g))
    want = _ref_layer_norm_grad(x, g)
    np.testing.assert_allclose(dx[:, 0], want[:, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(dx, want, rtol=0, atol=1e-5)
    if HAS_TORCH:
        import torch

        xt = torch.tensor(x, requires_grad=True)
        torch.nn.functional.layer_norm(xt, (width,)).backward(torch.tensor(g))
        np.testing.assert_allclose(dx[:, 0], xt.grad.numpy()[:, 0], rtol=0, atol=1e-5)


def test_layer_norm_gradient_on_constant_rows_is_clean(backend):
    """Constant rows: y is 0 and dx = (g - mean(g)) / sqrt(eps); the shift made dx noisy (4.3e-4)."""
    x = np.full((4, 3, 5), 2.5, np.float32)
    g = np.random.default_rng(1).random((4, 3, 5)).astype(np.float32)
    layer = nn.LayerNorm((3, 5), elementwise_affine=False)
    y = host(layer(x))
    dx = host(layer.backward(g))
    np.testing.assert_array_equal(y, 0.0)
    g64 = g.astype(np.float64).reshape(4, 15)
    want = ((g64 - g64.mean(1, keepdims=True)) / np.sqrt(1e-5)).reshape(4, 3, 5)
    np.testing.assert_allclose(dx, want, rtol=0, atol=1e-4)


# --- 2. precision on long rows ----------------------------------------------------------------------


def _long_row_layers(length):
    """(layer, input, normalized axes) with rows of ``length`` elements; inputs uniform in [0, 1)."""
    rng = np.random.default_rng(2)
    half = length // 2
    return [
        ("LayerNorm", nn.LayerNorm(length), rng.random((2, length), dtype=np.float32), (1,)),
        ("GroupNorm", nn.GroupNorm(2, 4, affine=False), rng.random((1, 4, half), dtype=np.float32), None),
        ("BatchNorm1d", nn.BatchNorm1d(2), rng.random((2, 2, half), dtype=np.float32), (0, 2)),
        ("InstanceNorm1d", nn.InstanceNorm1d(2), rng.random((1, 2, length), dtype=np.float32), (2,)),
        ("RMSNorm", nn.RMSNorm(length, eps=1e-5), rng.random((2, length), dtype=np.float32), (1,)),
    ]


def _check_long_rows(length):
    for name, layer, x, axes in _long_row_layers(length):
        y = host(layer(x)).astype(np.float64)
        if name == "GroupNorm":
            want = _ref_norm(x.reshape(1, 2, -1), (2,))[0].reshape(x.shape)
        elif name == "RMSNorm":
            x64 = x.astype(np.float64)
            want = x64 / np.sqrt((x64 * x64).mean(1, keepdims=True) + 1e-5)
        else:
            want, mean, var = _ref_norm(x, axes)
        err = np.abs(y - want).max()
        assert err <= STATS_TOL, f"{name}: output {err:.2e} from float64 on rows of {length}"
        if name == "BatchNorm1d":
            n = x.size // 2
            rm, rv = host(layer.running_mean), host(layer.running_var)
            np.testing.assert_allclose(rm, 0.1 * mean.ravel(), rtol=STATS_TOL, err_msg=name)
            np.testing.assert_allclose(
                rv, 0.9 + 0.1 * var.ravel() * n / (n - 1), rtol=STATS_TOL, err_msg=name
            )


def test_statistics_stay_accurate_on_rows_of_a_million(backend):
    """Rows of 2**20: MLX's float32 reductions were 1e-4..4e-4 off (LayerNorm, GroupNorm, BN, IN)."""
    _check_long_rows(1 << 20)


def test_long_rows_far_from_zero_stay_accurate(backend):
    """The large-mean stability case (1e4 + N(0, 1e-2), float32) on rows of 2**18."""
    rng = np.random.default_rng(3)
    x = (1e4 + rng.normal(0, 1e-2, (2, 1 << 18))).astype(np.float32)
    for layer, axes in ((nn.LayerNorm(1 << 18), (1,)), (nn.InstanceNorm1d(2), (2,))):
        xin = x if axes == (1,) else x.reshape(1, 2, -1)
        y = host(layer(xin)).astype(np.float64)
        err = np.abs(y - _ref_norm(xin, axes)[0]).max()
        assert err <= 1e-3, f"{type(layer).__name__}: {err:.2e}"  # float32 x_hat of data 1e6 ulps wide


@pytest.mark.slow
def test_layer_norm_on_rows_of_9_4_million(backend):
    """The issue's case: LayerNorm([256, 256, 144]) on rand(2, 256, 256, 144) (was 5.2e-5 NumPy, 8.1e-3 MLX)."""
    x = np.random.default_rng(4).random((2, 256, 256, 144), dtype=np.float32)
    y = host(nn.LayerNorm([256, 256, 144])(x))
    err = np.abs(y - _ref_norm(x, (1, 2, 3))[0]).max()
    assert err <= STATS_TOL, f"{err:.2e}"


@pytest.mark.slow
def test_group_norm_on_groups_of_4_7_million(backend):
    """The issue's case: GroupNorm(2, 8) on rand(1, 8, 256, 256, 72) (was 1.4e-4 NumPy, 2.1e-2 MLX)."""
    x = np.random.default_rng(5).random((1, 8, 256, 256, 72), dtype=np.float32)
    y = host(nn.GroupNorm(2, 8)(x))
    err = np.abs(y.reshape(1, 2, -1) - _ref_norm(x.reshape(1, 2, -1), (2,))[0]).max()
    assert err <= STATS_TOL, f"{err:.2e}"


# --- 3. empty inputs ----------------------------------------------------------------------------------

EMPTY = [
    (lambda: nn.BatchNorm1d(3), (0, 3)),
    (lambda: nn.BatchNorm1d(3), (0, 3, 4)),
    (lambda: nn.BatchNorm2d(3), (0, 3, 2, 2)),
    (lambda: nn.BatchNorm3d(3), (0, 3, 2, 2, 2)),
    (lambda: nn.BatchNorm1d(3, momentum=None), (0, 3)),
    (lambda: nn.BatchRenorm1d(3), (0, 3)),
    (lambda: nn.GroupNorm(1, 3), (0, 3, 4)),
    (lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True), (0, 3, 4)),
    (lambda: nn.InstanceNorm2d(3, affine=True), (0, 3, 2, 2)),
    (lambda: nn.InstanceNorm3d(3, track_running_stats=True), (0, 3, 2, 2, 2)),
    (lambda: nn.LayerNorm(4), (0, 4)),
    (lambda: nn.LayerNorm((2, 4)), (0, 5, 2, 4)),
    (lambda: nn.RMSNorm(4), (0, 4)),
    (lambda: nn.LocalResponseNorm(2), (0, 3, 4)),
    # an empty spatial dimension: PyTorch 2.13 returns an empty output for each of these
    (lambda: nn.BatchNorm1d(3), (4, 3, 0)),
    (lambda: nn.BatchNorm2d(3), (4, 3, 0, 2)),
    (lambda: nn.GroupNorm(1, 3), (4, 3, 0)),
    (lambda: nn.InstanceNorm1d(3, track_running_stats=True), (4, 3, 0)),
    (lambda: nn.LayerNorm(4), (4, 0, 4)),
    (lambda: nn.RMSNorm(4), (4, 0, 4)),
    (lambda: nn.LocalResponseNorm(2), (4, 3, 0)),
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("make", "shape"), EMPTY, ids=[f"{i}-{s}" for i, (_, s) in enumerate(EMPTY)])
def test_empty_input_gives_empty_output_and_zero_grads(backend, make, shape, train):
    layer = make().train(train)
    for p in layer.parameters():  # non-trivial parameters, so a zero gradient means something
        p.data = layer.backend.asarray(np.full(p.shape, 0.5, np.float32))
    before = {k: host(v).copy() for k, v in layer.state_dict().items()}
    y = layer(np.zeros(shape, np.float32))
    assert tuple(y.shape) == shape and dualnorm.get_backend().is_array(y)
    after = {k: host(v) for k, v in layer.state_dict().items()}
    for key, value in before.items():
        if key == "num_batches_tracked":
            # PyTorch counts the call in training (batch norm; instance norm never counts)
            counts = train and isinstance(
                layer, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d | nn.BatchRenorm1d
            )
            assert int(after[key]) == int(value) + int(counts), key
        else:
            np.testing.assert_array_equal(after[key], value, err_msg=f"{key} changed on an empty input")
    dx = layer.backward(np.ones(shape, np.float32))
    assert tuple(dx.shape) == shape
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        np.testing.assert_array_equal(host(p.grad), 0.0, err_msg=name)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_empty_batch_matches_torch(backend):
    import torch

    layer, ref = nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    layer(np.zeros((0, 3, 2, 2), np.float32))
    ref(torch.zeros(0, 3, 2, 2))
    for key, value in ref.state_dict().items():
        np.testing.assert_array_equal(host(layer.state_dict()[key]), value.numpy(), err_msg=key)


# --- 4. checks and arguments ---------------------------------------------------------------------------


def test_group_norm_refuses_one_value_per_group(backend):
    layer = nn.GroupNorm(10, 10)
    with pytest.raises(DualnormError, match="more than 1 value per channel") as info:
        layer(np.random.default_rng(0).random((1, 10, 1)))
    assert isinstance(info.value, ValueError)  # as PyTorch's
    # two values per group, and (PyTorch's rule) two samples of one value, are fine
    assert host(nn.GroupNorm(5, 10)(np.random.default_rng(0).random((1, 10, 1)))).shape == (1, 10, 1)
    assert host(layer(np.random.default_rng(0).random((2, 10, 1)))).shape == (2, 10, 1)


@pytest.mark.parametrize("cls", [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.BatchRenorm1d])
def test_batch_norm_refuses_eps_zero_with_batch_statistics(backend, cls):
    layer = cls(2, eps=0.0)
    shape = {nn.BatchNorm2d: (3, 2, 2, 2), nn.BatchNorm3d: (3, 2, 2, 2, 2)}.get(cls, (3, 2))
    x = np.random.default_rng(0).random(shape)
    with pytest.raises(DualnormError, match="eps must be positive during training"):
        layer(x)
    assert int(host(layer.num_batches_tracked)) == 0
    assert host(layer.eval()(x)).shape == shape  # the running statistics: as PyTorch, allowed
    if cls is not nn.BatchRenorm1d:
        with pytest.raises(ValueError, match="eps must be positive"):
            cls(2, eps=0.0, track_running_stats=False).eval()(x)


@pytest.mark.parametrize(
    ("make", "torch_expr", "names"),
    [
        (lambda: nn.BatchNorm1d(3, bias=False), "torch.nn.BatchNorm1d(3, bias=False)", ["weight"]),
        (lambda: nn.BatchNorm1d(3), "torch.nn.BatchNorm1d(3)", ["weight", "bias"]),
        (lambda: nn.BatchNorm2d(3, affine=False), "torch.nn.BatchNorm2d(3, affine=False)", []),
        (lambda: nn.GroupNorm(1, 3, bias=False), "torch.nn.GroupNorm(1, 3, bias=False)", ["weight"]),
        (lambda: nn.GroupNorm(1, 3, affine=False), "torch.nn.GroupNorm(1, 3, affine=False)", []),
        (
            lambda: nn.InstanceNorm1d(3, affine=True, bias=False),
            "torch.nn.InstanceNorm1d(3, affine=True, bias=False)",
            ["weight"],
        ),
        (lambda: nn.InstanceNorm3d(3), "torch.nn.InstanceNorm3d(3)", []),
        (lambda: nn.LayerNorm(3, bias=False), "torch.nn.LayerNorm(3, bias=False)", ["weight"]),
        (lambda: nn.LayerNorm(3), "torch.nn.LayerNorm(3)", ["weight", "bias"]),
    ],
)
def test_bias_argument_and_repr_as_torch(backend, make, torch_expr, names):
    layer = make()
    assert [n for n, _ in layer.named_parameters()] == names
    if HAS_TORCH:
        import torch

        ref = eval(torch_expr, {"torch": torch})
        assert repr(layer) == repr(ref)
        assert list(layer.state_dict()) == list(ref.state_dict())


def test_instance_norm_without_weights_normalizes_another_channel_count(backend):
    """affine=False, no running stats: num_features is unused; PyTorch warns and normalizes."""
    x = np.random.default_rng(0).normal(2.0, 3.0, (2, 5, 6))
    layer = nn.InstanceNorm1d(3)
    with pytest.warns(UserWarning, match="does not match num_features"):
        y = host(layer(x))
    np.testing.assert_allclose(y, _ref_norm(x, (2,))[0], atol=1e-5)
    g = np.random.default_rng(1).random((2, 5, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(host(layer.backward(g)), host(_in_backward(x, g)), atol=1e-4)
    with pytest.warns(UserWarning, match="dim=0"):  # unbatched (C, L)
        assert host(layer(x[0])).shape == (5, 6)
    for strict in (nn.InstanceNorm1d(3, affine=True), nn.InstanceNorm1d(3, track_running_stats=True)):
        with pytest.raises(ValueError, match="expects 3"):
            strict(x)


def _in_backward(x, g):
    layer = nn.InstanceNorm1d(x.shape[1])
    layer(x)
    return layer.backward(g)


def test_layer_norm_shape_mismatch_is_a_runtime_error(backend):
    with pytest.raises(RuntimeError, match=r"\(4,\)") as info:
        nn.LayerNorm(4)(np.ones((2, 5)))
    assert isinstance(info.value, ValueError | DualnormError)
    with pytest.raises(RuntimeError):
        nn.RMSNorm(4)(np.ones((2, 5)))


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
@pytest.mark.parametrize("again", ["weight_norm", "spectral_norm"])
def test_reparametrizing_twice_is_a_runtime_error(backend, wrap, again):
    layer = nn.Linear(3, 2)
    wrapped = getattr(nn.utils, wrap)(layer)
    for target in (layer, wrapped):
        with pytest.raises(RuntimeError, match="already reparametrized") as info:
            getattr(nn.utils, again)(target)
        assert isinstance(info.value, ValueError)


def test_strict_load_state_dict_mismatch_is_a_runtime_error(backend):
    layer = nn.Linear(3, 2)
    state = {k: host(v) for k, v in layer.state_dict().items()}
    with pytest.raises(RuntimeError, match="unexpected keys") as info:
        layer.load_state_dict({**state, "extra": np.zeros(2)})
    assert isinstance(info.value, ValueError)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        layer.load_state_dict({**state, "bias": np.zeros(3)})
    layer.load_state_dict({**state, "extra": np.zeros(2)}, strict=False)  # not strict: fine
