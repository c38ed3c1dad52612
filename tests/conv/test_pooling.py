"""Pooling layers: against PyTorch (outputs, indices, input gradients, ties), central differences in
float64 on NumPy, ``mx.grad`` on MLX, repr and every error."""

from __future__ import annotations

import doctest
import importlib.util
import warnings

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm.errors import DualnormError, InputError, InputTypeError, RuntimeInputError, StateError
from dualnorm.nn import functional as F
from dualnorm.nn import pooling

HAS_TORCH = importlib.util.find_spec("torch") is not None

# (constructor call, input shape): evaluated in dualnorm.nn and in torch.nn alike.
CASES = [
    ("MaxPool2d(2)", (2, 3, 8, 8)),
    ("MaxPool2d(2)", (2, 3, 7, 9)),  # the floor drops the last row and column
    ("MaxPool2d(2, return_indices=True)", (3, 6, 6)),  # unbatched
    ("MaxPool2d(3, stride=2, padding=1, return_indices=True)", (2, 2, 7, 7)),
    (
        "MaxPool2d((2, 3), stride=(1, 2), padding=1, dilation=(2, 1), ceil_mode=True, return_indices=True)",
        (2, 2, 9, 10),
    ),
    ("MaxPool2d(3, stride=2, ceil_mode=True, return_indices=True)", (1, 2, 6, 6)),
    ("MaxPool2d(3, stride=3, padding=1, ceil_mode=True, return_indices=True)", (1, 2, 5, 5)),
    ("MaxPool2d(3, stride=1, padding=1, dilation=2, return_indices=True)", (1, 2, 6, 5)),
    ("MaxPool1d(3)", (2, 3, 10)),
    ("MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True, return_indices=True)", (2, 3, 11)),
    ("MaxPool1d(2, return_indices=True)", (3, 9)),
    ("AvgPool2d(2)", (2, 3, 8, 8)),
    ("AvgPool2d(3, stride=2, padding=1)", (2, 2, 7, 7)),
    ("AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)", (2, 2, 8, 8)),
    ("AvgPool2d((3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True)", (1, 2, 6, 5)),
    ("AvgPool2d(3, stride=2, padding=1, divisor_override=2)", (3, 7, 7)),
    ("AvgPool1d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)", (2, 3, 8)),
    ("AvgPool1d(4)", (3, 9)),
    ("AdaptiveAvgPool2d(3)", (2, 3, 7, 5)),
    ("AdaptiveAvgPool2d((None, 3))", (2, 3, 4, 7)),
    ("AdaptiveAvgPool2d((5, None))", (3, 4, 7)),
    ("AdaptiveAvgPool2d((4, 9))", (1, 2, 7, 5)),  # more outputs than inputs along W
    ("AdaptiveAvgPool2d(1)", (2, 4, 5, 5)),
    ("AdaptiveAvgPool1d(4)", (2, 3, 7)),
    ("AdaptiveAvgPool1d(3)", (3, 10)),
]
IDS = [f"{expr}-{shape}" for expr, shape in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: waking torch's thread pool costs more than the math."""
    if not HAS_TORCH:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _host(a):
    return np.asarray(dualnorm.to_numpy(a))


def _run(expr, x, g):
    """dualnorm on the active backend: (y, indices or None, dL/dx)."""
    layer = eval(f"nn.{expr}", {"nn": nn})
    out = layer(x)
    y, idx = out if isinstance(out, tuple) else (out, None)
    grad = layer.backward(g)
    return _host(y), None if idx is None else _host(idx), _host(grad)


def _torch_run(expr, x, g):
    import torch

    layer = eval(f"torch.nn.{expr}", {"torch": torch})
    tx = torch.tensor(x, requires_grad=True)
    out = layer(tx)
    y, idx = out if isinstance(out, tuple) else (out, None)
    (y * torch.tensor(g)).sum().backward()
    return y.detach().numpy(), None if idx is None else idx.numpy(), tx.grad.numpy()


def _output_shape(expr, x):
    with dualnorm.use_backend("numpy"):
        out = eval(f"nn.{expr}", {"nn": nn})(x)
    return (out[0] if isinstance(out, tuple) else out).shape


def _inputs(shape, ties, seed=0):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many tied maxima per window
        return rng.integers(0, 3, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(("expr", "shape"), CASES, ids=IDS)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.torch
@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_matches_torch(backend, expr, shape, ties):
    x = _inputs(shape, ties)
    g = np.random.default_rng(1).standard_normal(_output_shape(expr, x)).astype(np.float32)
    y, idx, grad = _run(expr, x, g)
    ty, tidx, tgrad = _torch_run(expr, x, g)
    assert y.shape == ty.shape and y.dtype == ty.dtype
    np.testing.assert_allclose(y, ty, rtol=1e-6, atol=1e-6)
    if tidx is not None:
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(idx, tidx)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-6, atol=1e-6)


@pytest.mark.torch
@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize(
    "expr", ["MaxPool2d(2, return_indices=True)", "MaxPool2d(3, stride=2, padding=1, return_indices=True)"]
)
def test_max_pool_nan_and_minus_inf_as_torch(backend, expr):
    """A NaN wins its window (the last NaN, as torch scans); an all -inf window points inside the input."""
    x = _inputs((1, 2, 6, 6), ties=False)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan
    x[0, 1, :3, :3] = -np.inf
    g = np.random.default_rng(1).standard_normal(_output_shape(expr, x)).astype(np.float32)
    y, idx, grad = _run(expr, x, g)
    ty, tidx, tgrad = _torch_run(expr, x, g)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(idx, tidx)
    np.testing.assert_array_equal(grad, tgrad)


def test_ties_send_the_gradient_to_the_first_maximum(backend):
    x = np.array([[[[1.0, 1.0], [1.0, 1.0]]]], dtype=np.float32)
    pool = nn.MaxPool2d(2, return_indices=True)
    _, idx = pool(x)
    assert _host(idx).tolist() == [[[[0]]]]
    assert _host(pool.backward(np.ones((1, 1, 1, 1)))).tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]


def test_max_pool_known_values(backend):
    x = np.arange(16.0, dtype=np.float32).reshape(1, 1, 4, 4)
    y, idx = nn.MaxPool2d(2, return_indices=True)(x)
    assert _host(y).tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]
    assert _host(idx).tolist() == [[[[5, 7], [13, 15]]]]
    assert _host(nn.AvgPool2d(2)(x)).tolist() == [[[[2.5, 4.5], [10.5, 12.5]]]]
    assert _host(nn.AdaptiveAvgPool2d(1)(x)).tolist() == [[[[7.5]]]]


@pytest.mark.parametrize("expr", ["MaxPool2d(2)", "AvgPool2d(3, padding=1)", "AdaptiveAvgPool2d(2)"])
def test_empty_batch_gives_empty_output_and_gradient(backend, expr):
    layer = eval(f"nn.{expr}", {"nn": nn})
    y = layer(np.zeros((0, 3, 4, 4), np.float32))
    assert tuple(y.shape) == (0, 3, 2, 2) if "Avg" not in expr or "Adaptive" in expr else (0, 3, 4, 4)
    grad = layer.backward(np.zeros(tuple(y.shape), np.float32))
    assert tuple(grad.shape) == (0, 3, 4, 4)


def test_float64_input_stays_float64(backend):
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4))
    for layer in (nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3)):
        assert str(layer(x).dtype).endswith("float64")
        assert str(layer.backward(np.ones(tuple(layer(x).shape))).dtype).endswith("float64")


# --- gradients: central differences (NumPy, float64) and mx.grad (MLX) ------------------------

GRAD_CASES = [
    "MaxPool2d(3, stride=2, padding=1)",
    "MaxPool2d((2, 3), stride=(1, 2), padding=1, dilation=(2, 1), ceil_mode=True)",
    "MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True)",
    "AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)",
    "AvgPool2d(3, stride=2, padding=1, divisor_override=5)",
    "AvgPool1d(3, stride=2, padding=1)",
    "AdaptiveAvgPool2d((3, 4))",
    "AdaptiveAvgPool1d(4)",
]


def _grad_shape(expr):
    return (2, 2, 7) if "1d" in expr else (2, 2, 7, 6)


@pytest.mark.parametrize("expr", GRAD_CASES)
def test_backward_matches_central_differences(expr):
    with dualnorm.use_backend("numpy"):
        x = np.random.default_rng(3).standard_normal(_grad_shape(expr))  # distinct values: no ties
        layer = eval(f"nn.{expr}", {"nn": nn})
        y = layer(x)
        g = np.random.default_rng(4).standard_normal(y.shape)
        grad = layer.backward(g)
        numeric = np.zeros_like(x)
        h = 1e-6
        for i in np.ndindex(x.shape):
            up, down = x.copy(), x.copy()
            up[i] += h
            down[i] -= h
            numeric[i] = ((layer(up) * g).sum() - (layer(down) * g).sum()) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("expr", GRAD_CASES)
def test_mlx_backward_matches_mx_grad(expr):
    mx = pytest.importorskip("mlx.core")
    with dualnorm.use_backend("mlx", device="cpu"):
        layer = eval(f"nn.{expr}", {"nn": nn})
        x = mx.array(np.random.default_rng(3).standard_normal(_grad_shape(expr)).astype(np.float32))
        y = layer(x)
        g = mx.array(np.random.default_rng(4).standard_normal(tuple(y.shape)).astype(np.float32))
        grad = layer.backward(g)

        def loss(v):
            return mx.sum(eval(f"nn.{expr}", {"nn": nn})(v) * g)

        np.testing.assert_allclose(np.array(grad), np.array(mx.grad(loss)(x)), rtol=1e-6, atol=1e-6)


# --- the numpy backend's generic slice-add against the xp-contract default --------------------


def test_add_strided_default_matches_numpy_in_place():
    B = dualnorm.get_backend("numpy")
    rng = np.random.default_rng(0)
    value = rng.standard_normal((2, 3, 4))
    for starts, steps in (((1, 2), (3, 2)), ((0, 0), (1, 1)), ((2, 1), (2, 3))):
        default = type(B).__mro__[1].add_strided(B, np.zeros((2, 9, 12)), value, starts, steps)
        np.testing.assert_array_equal(default, B.add_strided(np.zeros((2, 9, 12)), value, starts, steps))


# --- repr -----------------------------------------------------------------------------------------

REPRS = [
    "MaxPool2d(2)",
    "MaxPool2d((2, 3), stride=(1, 2), padding=1, dilation=2, ceil_mode=True, return_indices=True)",
    "MaxPool1d(3)",
    "MaxPool1d(3, 2, 1, 2, True, True)",
    "AvgPool2d(2)",
    "AvgPool2d(3, 2, 1, True, False, 2)",
    "AvgPool1d(3)",
    "AvgPool1d(3, stride=2, padding=1, ceil_mode=True)",
    "AdaptiveAvgPool2d((None, 3))",
    "AdaptiveAvgPool2d(5)",
    "AdaptiveAvgPool1d(4)",
]


@pytest.mark.parametrize("expr", REPRS)
def test_repr_is_torchs(expr):
    ours = repr(eval(f"nn.{expr}", {"nn": nn}))
    if not HAS_TORCH:
        assert ours.startswith(expr.split("(")[0] + "(")
        return
    import torch

    assert ours == repr(eval(f"torch.nn.{expr}", {"torch": torch}))


def test_repr_known():
    assert (
        repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)"
    )
    assert repr(nn.AvgPool1d(3)) == "AvgPool1d(kernel_size=(3,), stride=(3,), padding=(0,))"


# --- errors ---------------------------------------------------------------------------------------

# (constructor, input shape, dualnorm class, torch's class name, text in both messages)
ERRORS = [
    (
        "MaxPool2d(2, padding=2)",
        (2, 3, 5, 5),
        RuntimeInputError,
        "RuntimeError",
        "pad should be at most half",
    ),
    (
        "MaxPool2d(3, padding=2, dilation=2)",
        (2, 3, 5, 5),
        RuntimeInputError,
        "RuntimeError",
        "half of kernel size",
    ),
    ("MaxPool2d(6)", (2, 3, 5, 5), RuntimeInputError, "RuntimeError", "Output size is too small"),
    ("MaxPool2d(2)", (3, 4), RuntimeInputError, "RuntimeError", "4D (batch mode) tensor"),
    ("MaxPool2d(2)", (1, 3, 4, 4, 4), RuntimeInputError, "RuntimeError", "4D (batch mode) tensor"),
    ("MaxPool2d(2)", (2, 0, 4, 4), RuntimeInputError, "RuntimeError", "optional 0 dim batch size"),
    ("MaxPool2d(2)", (2, 3, 0, 4), RuntimeInputError, "RuntimeError", "optional 0 dim batch size"),
    ("MaxPool1d(2)", (3,), RuntimeInputError, "RuntimeError", "Expected 2D or 3D (batch mode) tensor"),
    (
        "MaxPool1d(2)",
        (1, 3, 4, 4),
        RuntimeInputError,
        "RuntimeError",
        "Expected 2D or 3D (batch mode) tensor",
    ),
    ("MaxPool1d(2, padding=2)", (1, 1, 4), RuntimeInputError, "RuntimeError", "half of"),
    ("MaxPool1d(5)", (1, 3, 4), RuntimeInputError, "RuntimeError", None),
    ("MaxPool2d(0)", (2, 3, 5, 5), RuntimeInputError, "RuntimeError", "stride should not be zero"),
    ("MaxPool2d(2, stride=0)", (2, 3, 5, 5), RuntimeInputError, "RuntimeError", "stride should not be zero"),
    (
        "MaxPool2d(2, stride=-1)",
        (2, 3, 5, 5),
        RuntimeInputError,
        "RuntimeError",
        "stride should be greater than zero",
    ),
    (
        "MaxPool2d(2, dilation=0)",
        (2, 3, 5, 5),
        RuntimeInputError,
        "RuntimeError",
        "dilation should be greater than zero",
    ),
    ("MaxPool2d(2, padding=-1)", (2, 3, 5, 5), RuntimeInputError, "RuntimeError", "pad must be non-negative"),
    (
        "MaxPool2d((2, 2, 2))",
        (2, 3, 5, 5),
        RuntimeInputError,
        "RuntimeError",
        "kernel_size must either be a single int",
    ),
    ("MaxPool2d(2.0)", (2, 3, 5, 5), InputTypeError, "TypeError", None),
    (
        "AvgPool2d(2, padding=2)",
        (2, 3, 5, 5),
        RuntimeInputError,
        "RuntimeError",
        "pad should be at most half",
    ),
    ("AvgPool2d(6)", (2, 3, 5, 5), RuntimeInputError, "RuntimeError", "Output size is too small"),
    ("AvgPool2d(2)", (3, 4), RuntimeInputError, "IndexError", None),
    ("AvgPool2d(2)", (2, 3, 0, 4), RuntimeInputError, "RuntimeError", "optional 0 dim batch size"),
    (
        "AvgPool2d(2, divisor_override=0)",
        (2, 3, 5, 5),
        RuntimeInputError,
        "RuntimeError",
        "divisor must be not zero",
    ),
    ("AvgPool2d(0)", (2, 3, 5, 5), RuntimeInputError, "RuntimeError", "stride should not be zero"),
    ("AvgPool1d(2)", (3,), RuntimeInputError, "RuntimeError", "Expected 2 to 3 dimensions"),
    ("AvgPool1d(6)", (1, 3, 5), RuntimeInputError, "RuntimeError", "Output size is too small"),
    ("AvgPool1d(2, padding=2)", (1, 3, 5), RuntimeInputError, "RuntimeError", "pad should be at most half"),
    ("AdaptiveAvgPool2d((2,))", (2, 3, 5, 5), RuntimeInputError, "RuntimeError", "output_size must be 2"),
    ("AdaptiveAvgPool2d(-1)", (2, 3, 5, 5), RuntimeInputError, "RuntimeError", "greater than or equal to 0"),
    ("AdaptiveAvgPool2d(2)", (3, 4), RuntimeInputError, "RuntimeError", "Expected 3D or 4D tensor"),
    ("AdaptiveAvgPool2d(2)", (2, 3, 0, 4), RuntimeInputError, "RuntimeError", "non-zero size for non-batch"),
    (
        "AdaptiveAvgPool2d((2, 3, 4))",
        (1, 1, 4, 4),
        RuntimeInputError,
        "RuntimeError",
        "output_size must be 2",
    ),
    ("AdaptiveAvgPool2d(2.5)", (1, 1, 4, 4), InputTypeError, "TypeError", None),
    ("AdaptiveAvgPool1d(2)", (4,), RuntimeInputError, "RuntimeError", "Expected 2 to 3 dimensions"),
    ("AdaptiveAvgPool1d(-1)", (1, 1, 4), RuntimeInputError, "RuntimeError", "greater than or equal to 0"),
]


@pytest.mark.parametrize(
    ("expr", "shape", "cls", "torch_cls", "text"), ERRORS, ids=[f"{e[0]}-{e[1]}" for e in ERRORS]
)
def test_errors(backend, expr, shape, cls, torch_cls, text):
    layer = eval(f"nn.{expr}", {"nn": nn})
    x = np.ones(shape, np.float32)
    with pytest.raises(cls) as info:
        layer(x)
    message = str(info.value)
    assert type(layer).__name__ in message
    if text:
        assert text in message
    assert isinstance(info.value, DualnormError)
    if torch_cls != "IndexError":  # torch's AvgPool2d on 2-D input: an IndexError; here a RuntimeError
        assert isinstance(info.value, {"RuntimeError": RuntimeError, "TypeError": TypeError}[torch_cls])
    if HAS_TORCH:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(Exception) as theirs:
                eval(f"torch.nn.{expr}", {"torch": torch})(torch.ones(shape))
        assert type(theirs.value).__name__ == torch_cls
        if text:
            assert text in str(theirs.value)


def test_failed_forward_keeps_the_last_good_one(backend):
    pool = nn.MaxPool2d(2)
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    y = _host(pool(x))
    with pytest.raises(RuntimeInputError):
        pool(np.ones((1, 1, 1, 1), np.float32))
    grad = _host(pool.backward(np.ones(y.shape, np.float32)))
    assert grad.sum() == 4.0


def test_backward_state_errors(backend):
    pool = nn.MaxPool2d(2)
    with pytest.raises(StateError, match="before a forward"):
        pool.backward(np.ones((1, 1, 2, 2)))
    y = pool(np.ones((1, 1, 4, 4), np.float32))
    with pytest.raises(InputError, match="grad_output has shape"):
        pool.backward(np.ones((1, 1, 3, 3)))
    pool.backward(np.ones(tuple(y.shape)))
    with pytest.raises(StateError, match="already called"):
        pool.backward(np.ones(tuple(y.shape)))


def test_output_size_rule_is_torchs():
    # ceil mode may not start a window in the right padding: 5 + 2·1 with k=3, s=3 gives 2, not 3
    assert F.pool_output_size(5, 3, 3, 1, 1, True) == 2
    assert F.pool_output_size(6, 3, 2, 0, 1, True) == 3
    assert F.pool_output_size(6, 3, 2, 0, 1, False) == 2
    assert F.adaptive_bounds(7, 3) == [(0, 3), (2, 5), (4, 7)]


def test_docstring_examples():
    result = doctest.testmod(pooling, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_changed_arguments_are_checked_again(backend):
    pool = nn.MaxPool2d(2)
    x = np.ones((1, 1, 4, 4), np.float32)
    assert tuple(pool(x).shape) == (1, 1, 2, 2)
    pool.padding = 2  # the remembered geometry was for padding=0
    with pytest.raises(RuntimeInputError, match="MaxPool2d: pad should be at most half"):
        pool(x)
    pool.padding = 1
    assert tuple(pool(x).shape) == (1, 1, 3, 3)
