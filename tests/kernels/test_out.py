"""``out=`` on the functional norm forwards, as NumPy ufuncs take it: y is written into ``out``,
``out`` is returned, the rest (statistics, context, backward) is what a call without ``out`` gives.
Runs once per kernel table (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm.errors import InputError
from dualnorm.nn import functional as F

SHAPE = (6, 8, 5)  # (N, C, L): every forward takes it


def _args(name, B, x, w, b):
    if name == "batch_norm_train":
        return (x, w, b, 1e-5)
    if name == "batch_norm_eval":
        rm = B.asarray(np.linspace(-1, 1, 8).astype(np.float32))
        rv = B.asarray(np.linspace(0.5, 2, 8).astype(np.float32))
        return (x, w, b, rm, rv, 1e-5)
    if name == "layer_norm":
        return (x, w.reshape(-1)[:5], b.reshape(-1)[:5], (2,), 1e-5)
    if name == "group_norm":
        return (x, 4, w, b, 1e-5)
    return (x, w.reshape(-1)[:5], (2,), 1e-5)  # rms_norm


BACKWARD = {
    "batch_norm_train": lambda B, g, r, a: F.batch_norm_train_backward(B, g, r[3], a[1]),
    "batch_norm_eval": lambda B, g, r, a: F.batch_norm_eval_backward(B, g, r[1], a[1]),
    "layer_norm": lambda B, g, r, a: F.layer_norm_backward(B, g, r[1], a[1], a[3]),
    "group_norm": lambda B, g, r, a: F.group_norm_backward(B, g, r[1], a[2]),
    "rms_norm": lambda B, g, r, a: F.rms_norm_backward(B, g, r[1], a[1], a[2]),
}


def _data(B, rng):
    x = rng.standard_normal(SHAPE).astype(np.float32) * 2 + 1
    w = (rng.standard_normal(8) * 0.5 + 1).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    g = rng.standard_normal(SHAPE).astype(np.float32)
    return x, w, b, g


@pytest.mark.parametrize("name", sorted(F.OUT_FORWARDS))
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_out_receives_the_forward_and_changes_nothing_else(backend, rng, name, layout):
    B = dualnorm.get_backend()
    if B.name != "numpy":
        pytest.skip("out= is for NumPy arrays (see test_out_is_refused_on_mlx)")
    x, w, b, g = _data(B, rng)
    args = _args(name, B, x, w, b)
    fn = getattr(F, name)
    plain = fn(B, *args)
    want_dx = BACKWARD[name](B, g, plain, args)
    out = (
        np.full(SHAPE, np.nan, np.float32)
        if layout == "contiguous"
        else np.full((6, 8, 10), np.nan, np.float32)[..., ::2]
    )
    got = fn(B, *args, out=out)
    assert got[0] is out
    np.testing.assert_array_equal(out, plain[0])
    for a, c in zip(got[1:-1], plain[1:-1], strict=True):  # batch statistics
        np.testing.assert_array_equal(a, c)
    out[...] = 7.0  # reusing out after the call leaves the backward alone
    got_dx = BACKWARD[name](B, g, got, args)
    for a, c in zip(got_dx, want_dx, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("name", sorted(F.OUT_FORWARDS))
def test_a_kernel_table_writes_into_out_without_a_new_array(backend, rng, name, kernel_table):
    B = dualnorm.get_backend()
    impl = B.kernels.get(name)
    if B.name != "numpy" or impl is None or not getattr(impl, "writes_out", False):
        pytest.skip("no kernel here that writes out= itself")
    x, w, b, _ = _data(B, rng)
    out = np.empty(SHAPE, np.float32)
    y = impl(B, *_args(name, B, x, w, b), out=out)[0]
    assert np.shares_memory(y, out)


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        (np.empty((6, 8, 4), np.float32), "expected a writeable array of the input's shape (6, 8, 5)"),
        (np.empty(SHAPE, np.float64), "dtype float32"),
    ],
)
def test_a_wrong_out_is_a_clear_error(backend, rng, out, fragment):
    B = dualnorm.get_backend()
    if B.name != "numpy":
        pytest.skip("NumPy backend")
    x, *_ = _data(B, rng)
    with pytest.raises(InputError, match=r"layer_norm: out has shape") as info:
        F.layer_norm(B, x, None, None, (2,), 1e-5, out=out)
    assert fragment in str(info.value)


def test_out_over_the_input_is_refused(backend, rng):
    B = dualnorm.get_backend()
    if B.name != "numpy":
        pytest.skip("NumPy backend")
    x, *_ = _data(B, rng)
    with pytest.raises(InputError, match="out overlaps the input"):
        F.group_norm(B, x, 4, None, None, 1e-5, out=x)


def test_out_is_refused_on_mlx(backend, rng):
    B = dualnorm.get_backend()
    if B.name == "numpy":
        pytest.skip("MLX backend")
    x = B.asarray(rng.standard_normal(SHAPE).astype(np.float32))
    with pytest.raises(InputError, match="out= takes a NumPy array on the NumPy backend"):
        F.layer_norm(B, x, None, None, (2,), 1e-5, out=np.empty(SHAPE, np.float32))
