"""Conv1d and Conv2d against torch.nn (outputs, input and parameter gradients, repr, state_dict),
float64 central differences on NumPy, mx.grad on MLX, and every error PyTorch raises."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm.errors import InputError, RuntimeInputError, StateError
from dualnorm.nn import functional as F

HAS_MLX = importlib.util.find_spec("mlx") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")


def host(a):
    return np.asarray(dualnorm.to_numpy(a), dtype=np.float64)


# (id, dims, constructor kwargs, input shape): every argument, and the corners between them.
CASES = [
    ("basic", 2, dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 7, 6)),
    ("pad1", 2, dict(in_channels=3, out_channels=5, kernel_size=3, padding=1), (2, 3, 6, 6)),
    ("stride2-pad", 2, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1), (2, 2, 7, 8)),
    (
        "rect-all",
        2,
        dict(
            in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)
        ),
        (2, 4, 9, 8),
    ),
    ("dilation", 2, dict(in_channels=2, out_channels=2, kernel_size=3, dilation=2, padding=2), (1, 2, 7, 7)),
    ("groups2", 2, dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, bias=False), (2, 4, 5, 6)),
    ("depthwise", 2, dict(in_channels=3, out_channels=6, kernel_size=3, groups=3, padding=1), (2, 3, 5, 5)),
    ("same-even", 2, dict(in_channels=2, out_channels=3, kernel_size=(4, 3), padding="same"), (2, 2, 6, 5)),
    (
        "same-dil",
        2,
        dict(in_channels=2, out_channels=2, kernel_size=3, padding="same", dilation=2),
        (1, 2, 6, 7),
    ),
    ("valid", 2, dict(in_channels=2, out_channels=3, kernel_size=(2, 3), padding="valid"), (2, 2, 5, 6)),
    (
        "reflect",
        2,
        dict(in_channels=2, out_channels=3, kernel_size=3, padding=2, padding_mode="reflect"),
        (2, 2, 5, 4),
    ),
    (
        "replicate",
        2,
        dict(
            in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=(3, 1), padding_mode="replicate"
        ),
        (2, 2, 5, 6),
    ),
    (
        "circular-same",
        2,
        dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", groups=4, padding_mode="circular"),
        (2, 4, 5, 6),
    ),
    ("unbatched2d", 2, dict(in_channels=3, out_channels=2, kernel_size=2, padding=1), (3, 5, 4)),
    ("c1d", 1, dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 9)),
    (
        "c1d-all",
        1,
        dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=2, dilation=2, groups=2),
        (3, 4, 11),
    ),
    (
        "c1d-same",
        1,
        dict(in_channels=2, out_channels=3, kernel_size=4, padding="same", padding_mode="reflect"),
        (2, 2, 7),
    ),
    (
        "c1d-circular",
        1,
        dict(in_channels=2, out_channels=2, kernel_size=3, padding=1, padding_mode="circular", bias=False),
        (2, 2, 5),
    ),
    ("unbatched1d", 1, dict(in_channels=2, out_channels=3, kernel_size=3, padding="same"), (2, 6)),
]
IDS = [c[0] for c in CASES]


def _ours(dims, kwargs, dtype="float64"):
    return (nn.Conv2d if dims == 2 else nn.Conv1d)(**kwargs, dtype=dtype)


def _step(layer, x, G):
    layer.zero_grad()
    y = layer(x)
    dx = layer.backward(G)
    grads = {name: host(p.grad) for name, p in layer.named_parameters()}
    return host(y), host(dx), grads


# --- against PyTorch -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(saved)


def _theirs(torch, dims, kwargs, layer):
    module = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv1d)(**kwargs).double()
    module.load_state_dict({k: torch.tensor(host(v)) for k, v in layer.state_dict().items()})
    return module


@needs_torch
@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_torch(backend, torch, case, dtype):
    _, dims, kwargs, shape = case
    layer = _ours(dims, kwargs, dtype)
    ref = _theirs(torch, dims, kwargs, layer)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = ref(tx)
    G = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(G))
    y, dx, grads = _step(layer, x.astype(dtype), G.astype(dtype))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == "float64" else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol, err_msg="output")
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol, err_msg="dL/dx")
    assert set(grads) == {n for n, _ in ref.named_parameters()}
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), **tol, err_msg=f"dL/d{name}")


@needs_torch
@pytest.mark.torch
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_repr_and_state_dict_match_torch(torch, case):
    _, dims, kwargs, _ = case
    layer = _ours(dims, kwargs)
    ref = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv1d)(**kwargs)
    assert repr(layer) == repr(ref)
    ours = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert list(ours) == list(ref.state_dict())


@needs_torch
@pytest.mark.torch
def test_state_dict_round_trips_with_torch(backend, torch):
    ref = torch.nn.Conv2d(3, 8, 3, padding=1, groups=1)
    layer = nn.Conv2d(3, 8, 3, padding=1)
    layer.load_state_dict(ref.state_dict())  # torch tensors load as they are
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(host(layer(x)), ref(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    back = torch.nn.Conv2d(3, 8, 3, padding=1)
    back.load_state_dict({k: torch.tensor(host(v).astype(np.float32)) for k, v in layer.state_dict().items()})
    for key, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


# --- initialization --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims,kwargs",
    [
        (2, dict(in_channels=6, out_channels=8, kernel_size=(3, 2), groups=2)),
        (1, dict(in_channels=4, out_channels=5, kernel_size=5)),
    ],
)
def test_default_init_is_torchs_uniform_and_seeded(dims, kwargs):
    """kaiming_uniform_(a=sqrt(5)) and the bias: both U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same on both backends."""
    draws = []
    for name in ["numpy", *(["mlx"] if HAS_MLX else [])]:
        with dualnorm.use_backend(name, device="cpu"):
            dualnorm.manual_seed(11)
            layer = _ours(dims, kwargs, "float32")
            draws.append((host(layer.weight.data), host(layer.bias.data)))
    weight, bias = draws[0]
    fan_in = math.prod(weight.shape[1:])
    bound = 1 / math.sqrt(fan_in)
    for values in (weight, bias):
        assert np.abs(values).max() <= bound
    assert np.abs(weight).max() > 0.8 * bound and weight.std() == pytest.approx(
        bound / math.sqrt(3), rel=0.25
    )
    for w, b in draws[1:]:
        np.testing.assert_array_equal(w, weight)
        np.testing.assert_array_equal(b, bias)


# --- gradients: central differences (NumPy, float64) and mx.grad (MLX) ---------------------------------

GRAD_CASES = [
    c
    for c in CASES
    if c[0]
    in {
        "rect-all",
        "depthwise",
        "same-even",
        "reflect",
        "replicate",
        "circular-same",
        "c1d-all",
        "unbatched1d",
    }
]


def _central_diff(f, v, h=1e-6):
    grad = np.zeros_like(v)
    for i in np.ndindex(v.shape):
        plus, minus = v.copy(), v.copy()
        plus[i] += h
        minus[i] -= h
        grad[i] = (f(plus) - f(minus)) / (2 * h)
    return grad


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_numpy_float64_central_differences(case):
    _, dims, kwargs, shape = case
    with dualnorm.use_backend("numpy"):
        dualnorm.manual_seed(0)
        layer = _ours(dims, kwargs)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    G = rng.standard_normal(tuple(layer(x).shape))
    _, dx, grads = _step(layer, x, G)

    def loss(x_):
        return float(np.sum(host(layer(x_)) * G))

    np.testing.assert_allclose(dx, _central_diff(loss, x), rtol=1e-6, atol=1e-7)
    for name, p in layer.named_parameters():
        base = p.data.copy()

        def param_loss(v, p=p):
            p.data = v
            return float(np.sum(host(layer(x)) * G))

        numeric = _central_diff(param_loss, base)
        p.data = base
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_mlx_backward_matches_mx_grad_of_reference(case, dtype):
    """The MLX layer's backward (mx.conv_general's VJP in float32) vs mx.grad through the reference
    forward (strided slices, a stack and a matmul in mlx ops) in float64."""
    import mlx.core as mx

    _, dims, kwargs, shape = case
    with dualnorm.use_backend("mlx", device="cpu"):
        dualnorm.manual_seed(0)
        layer = _ours(dims, kwargs, dtype)
        B = dualnorm.get_backend()
        rng = np.random.default_rng(5)
        x = rng.standard_normal(shape).astype(np.float32).astype(np.float64)
        G = rng.standard_normal(tuple(layer(x).shape))
        _, dx, grads = _step(layer, x, G)
        pads = layer._pads if dims == 2 else ((0, 0), *layer._pads)
        stride = layer.stride if dims == 2 else (1, *layer.stride)
        dilation = layer.dilation if dims == 2 else (1, *layer.dilation)
        mode = layer.padding_mode
        unbatched = len(shape) == dims + 1

        def loss(x_, params):
            x4 = x_.reshape(1, *x_.shape) if unbatched else x_
            w4 = params["weight"]
            if dims == 1:
                x4 = x4.reshape(x4.shape[0], x4.shape[1], 1, x4.shape[2])
                w4 = w4.reshape(w4.shape[0], w4.shape[1], 1, w4.shape[2])
            if mode != "zeros":
                x4 = F.conv_pad(B, x4, pads, mode)
            y, _ = F.conv2d.reference(
                B,
                x4,
                w4,
                params.get("bias"),
                stride,
                pads if mode == "zeros" else ((0, 0), (0, 0)),
                dilation,
                layer.groups,
            )
            return mx.sum(y.reshape(G.shape) * mx.array(G, dtype=mx.float64))

        params = {n: mx.array(host(p.data), dtype=mx.float64) for n, p in layer.named_parameters()}
        ref_dx, ref_dp = mx.grad(loss, argnums=(0, 1))(mx.array(x, dtype=mx.float64), params)
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(dx, np.array(ref_dx), **tol)
        for name in params:
            np.testing.assert_allclose(grads[name], np.array(ref_dp[name]), **tol, err_msg=name)


# --- module behaviour --------------------------------------------------------------------------------


def test_unbatched_is_the_batch_of_one(backend):
    layer = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 5, 5))
    G = np.random.default_rng(1).standard_normal((4, 5, 5))
    y, dx, grads = _step(layer, x, G)
    y1, dx1, grads1 = _step(layer, x[None], G[None])
    assert y.shape == (4, 5, 5) and dx.shape == (3, 5, 5)
    np.testing.assert_allclose(y, y1[0])
    np.testing.assert_allclose(dx, dx1[0])
    for name in grads:
        np.testing.assert_allclose(grads[name], grads1[name])


def test_parameter_gradients_accumulate_and_backward_runs_once(backend):
    layer = nn.Conv1d(2, 3, 3, dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 2, 6))
    G = np.ones((2, 3, 4))
    with pytest.raises(StateError, match="before a forward"):
        layer.backward(G)
    layer(x)
    layer.backward(G)
    once = host(layer.weight.grad).copy()
    with pytest.raises(StateError, match="already called"):
        layer.backward(G)
    layer(x)
    with pytest.raises(InputError, match=r"grad_output has shape \(2, 3, 5\), expected \(2, 3, 4\)"):
        layer.backward(np.ones((2, 3, 5)))
    layer.backward(G)
    np.testing.assert_allclose(host(layer.weight.grad), 2 * once)


def test_empty_batch_gives_empty_output_and_zero_gradients(backend):
    layer = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    y = layer(np.zeros((0, 3, 7, 7), np.float32))
    assert tuple(y.shape) == (0, 5, 4, 4)
    dx = layer.backward(np.zeros((0, 5, 4, 4), np.float32))
    assert tuple(dx.shape) == (0, 3, 7, 7)
    assert not host(layer.weight.grad).any() and host(layer.weight.grad).shape == (5, 3, 3, 3)
    assert not host(layer.bias.grad).any()


def test_module_moves_between_backends_and_trains_in_a_sequential():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 1, 3, stride=2))
    x = np.random.default_rng(0).standard_normal((2, 1, 7, 7)).astype(np.float32)
    y = host(model(x))
    assert y.shape == (2, 1, 3, 3)
    assert host(model.backward(np.ones_like(y))).shape == x.shape
    if HAS_MLX:
        model.to("mlx")
        np.testing.assert_allclose(host(model(x)), y, rtol=1e-5, atol=1e-6)


# --- errors: PyTorch's, before any state changes ----------------------------------------------------------

BUILD_ERRORS = [
    (
        dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding="same"),
        "padding='same' is not supported for strided convolutions",
    ),
    (dict(in_channels=3, out_channels=8, kernel_size=3, groups=2), "in_channels must be divisible by groups"),
    (
        dict(in_channels=4, out_channels=6, kernel_size=3, groups=4),
        "out_channels must be divisible by groups",
    ),
    (dict(in_channels=4, out_channels=8, kernel_size=3, groups=0), "groups must be a positive integer"),
    (
        dict(in_channels=4, out_channels=8, kernel_size=3, padding="full"),
        "Invalid padding string 'full', should be one of",
    ),
    (
        dict(in_channels=4, out_channels=8, kernel_size=3, padding_mode="mirror"),
        "padding_mode must be one of",
    ),
    (dict(in_channels=4, out_channels=8, kernel_size=0), "kernel_size must be a positive int"),
    (
        dict(in_channels=4, out_channels=8, kernel_size=(3, 3, 3)),
        "kernel_size must be a positive int or a tuple of 2",
    ),
    (dict(in_channels=4, out_channels=8, kernel_size=3, stride=0), "stride must be a positive int"),
    (dict(in_channels=4, out_channels=8, kernel_size=3, padding=-1), "padding must be a non-negative int"),
    (dict(in_channels=4, out_channels=8, kernel_size=3, dilation=(1, 0)), "dilation must be a positive int"),
    (dict(in_channels=0, out_channels=8, kernel_size=3), "in_channels must be a positive integer"),
]


@pytest.mark.parametrize("kwargs,message", BUILD_ERRORS, ids=[m[:30] for _, m in BUILD_ERRORS])
def test_bad_arguments_raise_torchs_value_error(kwargs, message):
    with pytest.raises(ValueError, match=r"^Conv2d: ") as info:
        nn.Conv2d(**kwargs)
    assert isinstance(info.value, InputError)
    assert message in str(info.value)


@needs_torch
@pytest.mark.torch
@pytest.mark.parametrize("kwargs,message", BUILD_ERRORS[:6], ids=[m[:30] for _, m in BUILD_ERRORS[:6]])
def test_build_errors_are_the_ones_torch_raises(torch, kwargs, message):
    with pytest.raises(ValueError) as info:
        torch.nn.Conv2d(**kwargs)
    assert message.split("(")[0].strip() in str(info.value)


FORWARD_ERRORS = [
    (
        2,
        dict(in_channels=3, out_channels=8, kernel_size=3),
        (2, 4, 8, 8),
        "Given groups=1, weight of size [8, 3, 3, 3], expected input[2, 4, 8, 8] to have 3 channels, but got 4 channels instead",
    ),
    (
        2,
        dict(in_channels=4, out_channels=8, kernel_size=3, groups=2),
        (6, 8, 8),
        "Given groups=2, weight of size [8, 2, 3, 3], expected input[1, 6, 8, 8] to have 4 channels, but got 6 channels instead",
    ),
    (
        2,
        dict(in_channels=3, out_channels=8, kernel_size=3),
        (2, 3, 2, 2),
        "Calculated padded input size per channel: (2 x 2). Kernel size: (3 x 3). Kernel size can't be greater than actual input size",
    ),
    (
        2,
        dict(in_channels=3, out_channels=8, kernel_size=3, dilation=2, padding=1),
        (1, 3, 2, 9),
        "Calculated padded input size per channel: (4 x 11). Kernel size: (5 x 5).",
    ),
    (
        1,
        dict(in_channels=3, out_channels=8, kernel_size=5),
        (2, 3, 2),
        "Calculated padded input size per channel: (2). Kernel size: (5).",
    ),
    (
        2,
        dict(in_channels=3, out_channels=8, kernel_size=3),
        (8, 8),
        "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [8, 8]",
    ),
    (
        1,
        dict(in_channels=3, out_channels=8, kernel_size=3),
        (1, 3, 8, 8),
        "Expected 2D (unbatched) or 3D (batched) input to conv1d, but got input of size: [1, 3, 8, 8]",
    ),
    (
        2,
        dict(in_channels=3, out_channels=8, kernel_size=3, padding=3, padding_mode="reflect"),
        (1, 3, 3, 3),
        "Padding size should be less than the corresponding input dimension, but got: padding (3, 3) at dimension 3 of input [1, 3, 3, 3]",
    ),
    (
        2,
        dict(in_channels=3, out_channels=8, kernel_size=3, padding=4, padding_mode="circular"),
        (1, 3, 3, 3),
        "Padding value causes wrapping around more than once",
    ),
]


@pytest.mark.parametrize("case", FORWARD_ERRORS, ids=[c[3][:30] for c in FORWARD_ERRORS])
def test_bad_input_raises_torchs_runtime_error_and_changes_nothing(backend, case):
    dims, kwargs, shape, message = case
    layer = _ours(dims, kwargs, "float32")
    good = np.zeros((1, kwargs["in_channels"], *([12] * dims)), np.float32)
    layer(good)
    saved, weight = layer._saved, host(layer.weight.data)
    with pytest.raises(RuntimeError) as info:
        layer(np.zeros(shape, np.float32))
    assert isinstance(info.value, RuntimeInputError)
    assert str(info.value).startswith(f"Conv{dims}d: ")
    assert message in str(info.value)
    assert layer._saved is saved  # the last forward can still be backpropagated
    np.testing.assert_array_equal(host(layer.weight.data), weight)
    layer.backward(np.zeros(tuple(layer(good).shape), np.float32))


@needs_torch
@pytest.mark.torch
@pytest.mark.parametrize("case", FORWARD_ERRORS, ids=[c[3][:30] for c in FORWARD_ERRORS])
def test_forward_errors_are_the_ones_torch_raises(torch, case):
    dims, kwargs, shape, message = case
    module = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv1d)(**kwargs)
    with pytest.raises(RuntimeError) as info:
        module(torch.zeros(shape))
    assert message in str(info.value)


def test_docstring_examples():
    import doctest

    import dualnorm.nn.conv

    result = doctest.testmod(dualnorm.nn.conv, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0
