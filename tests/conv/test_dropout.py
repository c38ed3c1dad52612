"""Dropout and Dropout2d: statistics, seeded determinism (across backends too), eval identity, p = 0
and p = 1, whole-channel masks, PyTorch's warnings and errors, repr, backward."""

from __future__ import annotations

import doctest
import importlib.util
import warnings

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm.errors import InputError, InputTypeError, RuntimeInputError, StateError
from dualnorm.nn import dropout as dropout_module

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _host(a):
    return np.asarray(dualnorm.to_numpy(a))


def test_statistics_and_scale(backend):
    p = 0.3
    dualnorm.manual_seed(1)
    y = _host(nn.Dropout(p)(np.ones((200, 500), np.float32)))
    dropped = float((y == 0).mean())
    sigma = np.sqrt(p * (1 - p) / y.size)
    assert abs(dropped - p) < 5 * sigma
    kept = y[y != 0]
    np.testing.assert_allclose(kept, np.float32(1 / (1 - p)))
    assert abs(y.mean() - 1.0) < 0.01  # the expectation is kept


def test_same_seed_same_mask_on_every_backend(backend):
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    dualnorm.manual_seed(7)
    layer = nn.Dropout(0.5)
    first = _host(layer(x))
    second = _host(layer(x))
    dualnorm.manual_seed(7)
    again = _host(nn.Dropout(0.5)(x))
    np.testing.assert_array_equal(first, again)  # a seeded run repeats
    assert not np.array_equal(first, second)  # successive calls draw new masks
    with dualnorm.use_backend("numpy"):
        dualnorm.manual_seed(7)
        on_numpy = _host(nn.Dropout(0.5)(x))
    np.testing.assert_array_equal(first, on_numpy)


def test_generator_argument_gives_its_own_stream(backend):
    x = np.ones((4, 32), np.float32)
    a = _host(nn.Dropout(0.5, generator=np.random.default_rng(3))(x))
    dualnorm.manual_seed(123)  # the global seed does not matter then
    b = _host(nn.Dropout(0.5, generator=np.random.default_rng(3))(x))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", [nn.Dropout, nn.Dropout2d])
def test_eval_is_identity_and_p0_keeps_everything(backend, cls):
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 5)).astype(np.float32)
    layer = cls(0.5).eval()
    np.testing.assert_array_equal(_host(layer(x)), x)
    np.testing.assert_array_equal(_host(layer.backward(np.full(x.shape, 2.0))), np.full(x.shape, 2.0))
    layer = cls(0.0)
    np.testing.assert_array_equal(_host(layer(x)), x)


@pytest.mark.parametrize("cls", [nn.Dropout, nn.Dropout2d])
def test_p1_gives_zeros_and_keeps_nan_as_torch(backend, cls):
    x = np.array([[[[np.nan, np.inf, 1.0, -2.0]]]], dtype=np.float32)
    y = _host(cls(1)(x))
    np.testing.assert_array_equal(y, np.array([[[[np.nan, np.nan, 0.0, 0.0]]]], dtype=np.float32))
    if HAS_TORCH:
        import torch

        np.testing.assert_array_equal(y, getattr(torch.nn, cls.__name__)(1)(torch.tensor(x)).numpy())


def test_backward_uses_the_forward_mask(backend):
    dualnorm.manual_seed(2)
    layer = nn.Dropout(0.25)
    x = np.random.default_rng(0).standard_normal((6, 7)).astype(np.float32) + 3.0  # no zeros
    y = _host(layer(x))
    grad = _host(layer.backward(np.ones(x.shape, np.float32)))
    np.testing.assert_allclose(grad, y / x, rtol=1e-6)
    with pytest.raises(StateError, match="already called"):
        layer.backward(np.ones(x.shape, np.float32))


def test_backward_matches_mx_grad():
    mx = pytest.importorskip("mlx.core")
    with dualnorm.use_backend("mlx", device="cpu"):
        x = mx.array(np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32))
        g = mx.array(np.random.default_rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32))
        for cls in (nn.Dropout, nn.Dropout2d):
            dualnorm.manual_seed(5)
            layer = cls(0.4)
            layer(x)
            grad = layer.backward(g)

            def loss(v, cls=cls):
                dualnorm.manual_seed(5)  # the same mask
                return mx.sum(cls(0.4)(v) * g)

            np.testing.assert_allclose(np.array(grad), np.array(mx.grad(loss)(x)), rtol=1e-6)


def test_dropout2d_drops_whole_channels(backend):
    dualnorm.manual_seed(0)
    y = _host(nn.Dropout2d(0.5)(np.ones((16, 8, 3, 4), np.float32)))
    per_channel = y.reshape(16, 8, -1)
    assert (per_channel.min(axis=2) == per_channel.max(axis=2)).all()
    assert set(np.unique(per_channel).tolist()) == {0.0, 2.0}


def test_dropout2d_follows_torch_on_other_ranks(backend):
    layer = nn.Dropout2d(0.5)
    with pytest.warns(UserWarning, match="assuming that channel-wise 1D dropout"):
        y = _host(layer(np.ones((6, 5, 9), np.float32)))
    assert (y.min(axis=2) == y.max(axis=2)).all()  # (N, C, L): one draw per sample and channel
    with pytest.warns(UserWarning, match="Received a 2-D input to dropout2d"):
        layer(np.ones((6, 5), np.float32))
    with pytest.warns(UserWarning, match="Received a 5-D input to dropout2d"):
        layer(np.ones((1, 2, 2, 2, 2), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            RuntimeInputError, match="Dropout2d: Feature dropout requires at least 2 dimensions"
        ):
            layer(np.ones(5, np.float32))
        layer.eval()
        assert _host(layer(np.ones(5, np.float32))).tolist() == [1.0] * 5  # eval: passes, as torch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(np.ones((2, 3, 4, 4), np.float32))  # 4-D: no warning


def test_inplace_writes_into_a_numpy_input():
    with dualnorm.use_backend("numpy"):
        x = np.ones((4, 8), np.float32)
        y = nn.Dropout(0.5, inplace=True)(x)
        assert y is x and set(np.unique(x).tolist()) <= {0.0, 2.0}
        x = np.ones((4, 8), np.float32)
        nn.Dropout(0.5)(x)
        assert (x == 1).all()


@pytest.mark.parametrize("p", [1.5, -0.1])
@pytest.mark.parametrize("cls", [nn.Dropout, nn.Dropout2d])
def test_p_outside_0_1_is_torchs_error(cls, p):
    with pytest.raises(
        InputError, match=f"dropout probability has to be between 0 and 1, but got {p}"
    ) as info:
        cls(p)
    assert cls.__name__ in str(info.value) and isinstance(info.value, ValueError)
    if HAS_TORCH:
        import torch

        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            getattr(torch.nn, cls.__name__)(p)


def test_p_not_a_number_is_a_type_error():
    with pytest.raises(InputTypeError, match="Dropout: p must be a number"):
        nn.Dropout("a")


@pytest.mark.parametrize(
    "expr", ["Dropout()", "Dropout(1)", "Dropout2d(0.3, inplace=True)", "Dropout(p=0.25)"]
)
def test_repr_is_torchs(expr):
    ours = repr(eval(f"nn.{expr}", {"nn": nn}))
    if HAS_TORCH:
        import torch

        assert ours == repr(eval(f"torch.nn.{expr}", {"torch": torch}))
    assert ours.startswith(expr.split("(")[0] + "(p=")


def test_empty_input_and_float64(backend):
    layer = nn.Dropout(0.5)
    assert tuple(layer(np.zeros((0, 4), np.float32)).shape) == (0, 4)
    assert tuple(layer.backward(np.zeros((0, 4), np.float32)).shape) == (0, 4)
    assert str(layer(np.ones((2, 3))).dtype).endswith("float64")


def test_docstring_examples():
    result = doctest.testmod(dropout_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
