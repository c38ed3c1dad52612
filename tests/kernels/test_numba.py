"""Kernel cases beyond test_parity.py: RMS norm, NaN propagation, non-contiguous input,
weight without bias, the small-array fallback, the DUALNORM_KERNELS choice and the
compile notice. Tests taking ``backend`` run once per kernel table (see conftest.py)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import dualnorm
import dualnorm.nn as nn
from dualnorm.backends import _load_kernels, kernels_numba, kernels_numpy
from dualnorm.backends.numpy_backend import NumPyBackend
from dualnorm.errors import BackendError
from dualnorm.nn import functional as F

from .test_parity import _close, _np


def _call(B, table, name, *args):
    fn = table.get(name) or getattr(F, name).reference
    return fn(B, *args)


def _bn(B, table, x, w, b, g):
    xa, wa = B.asarray(x), None if w is None else B.asarray(w)
    ba = None if b is None else B.asarray(b)
    y, mean, var, ctx = _call(B, table, "batch_norm_train", xa, wa, ba, 1e-5)
    dx, dw, db = _call(B, table, "batch_norm_train_backward", B.asarray(g), ctx, wa)
    return [_np(B, a) for a in (y, mean, var, dx, dw, db)]


def _bne(B, table, x, w, b, g, rm, rv):
    xa, wa = B.asarray(x), None if w is None else B.asarray(w)
    ba = None if b is None else B.asarray(b)
    y, ctx = _call(B, table, "batch_norm_eval", xa, wa, ba, B.asarray(rm), B.asarray(rv), 1e-5)
    dx, dw, db = _call(B, table, "batch_norm_eval_backward", B.asarray(g), ctx, wa)
    return [_np(B, a) for a in (y, dx, dw, db)]


def _ln(B, table, x, w, b, g, axes):
    wa, ba = None if w is None else B.asarray(w), None if b is None else B.asarray(b)
    y, ctx = _call(B, table, "layer_norm", B.asarray(x), wa, ba, axes, 1e-5)
    dx, dw, db = _call(B, table, "layer_norm_backward", B.asarray(g), ctx, wa, axes)
    return [_np(B, a) for a in (y, dx, dw, db)]


def _gn(B, table, x, groups, w, b, g):
    wa, ba = None if w is None else B.asarray(w), None if b is None else B.asarray(b)
    y, ctx = _call(B, table, "group_norm", B.asarray(x), groups, wa, ba, 1e-5)
    dx, dw, db = _call(B, table, "group_norm_backward", B.asarray(g), ctx, wa)
    return [_np(B, a) for a in (y, dx, dw, db)]


def _rms(B, table, x, w, g, axes, eps=1e-6):
    wa = None if w is None else B.asarray(w)
    y, ctx = _call(B, table, "rms_norm", B.asarray(x), wa, axes, eps)
    dx, dw = _call(B, table, "rms_norm_backward", B.asarray(g), ctx, wa, axes)
    return [_np(B, a) for a in (y, dx, dw)]


# --- RMS norm ----------------------------------------------------------------------------------

RMS_CASES = [((5, 7), 1), ((3, 4, 6), 2), ((2, 1), 1), ((300, 512), 1)]


@pytest.mark.parametrize(("shape", "k"), RMS_CASES)
@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_matches_reference(backend, rng, shape, k, weighted):
    B = dualnorm.get_backend()
    if "rms_norm" not in B.kernels:
        pytest.skip(f"backend {B.name!r} has no fast path for rms_norm")
    axes = tuple(range(len(shape) - k, len(shape)))
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal(shape[len(shape) - k :]) + 1).astype(np.float32) if weighted else None
    got, want = _rms(B, B.kernels, x, w, g, axes), _rms(B, {}, x, w, g, axes)
    for name, a, e in zip(("y", "dx", "dweight"), got, want, strict=True):
        _close(a, e, f"{name} {shape}")


# --- NaN stays where it was ---------------------------------------------------------------------


def test_nan_stays_in_its_channel_batch_norm(backend, rng):
    B = dualnorm.get_backend()
    for shape in [(8, 3), (4, 3, 5)]:
        x = rng.standard_normal(shape).astype(np.float32)
        x[2, 1] = np.nan
        g = rng.standard_normal(shape).astype(np.float32)
        y, mean, var, dx, dw, _ = _bn(B, B.kernels, x, np.ones(3, np.float32), np.zeros(3, np.float32), g)
        for a in (y, dx):
            assert np.isnan(a[:, 1]).all(), shape
            assert np.isfinite(a[:, [0, 2]]).all(), shape
        assert np.isnan(mean[1]) and np.isnan(var[1]) and np.isnan(dw[1])
        assert np.isfinite(mean[[0, 2]]).all() and np.isfinite(dw[[0, 2]]).all()


def test_nan_stays_in_its_element_batch_norm_eval(backend, rng):
    """Running statistics: a NaN input spoils its own output, and only its channel's dweight."""
    B = dualnorm.get_backend()
    rm, rv = np.array([0.5, -1.0, 2.0], np.float32), np.array([1.0, 4.0, 0.25], np.float32)
    for shape in [(8, 3), (4, 3, 5)]:
        x = rng.standard_normal(shape).astype(np.float32)
        x[2, 1] = np.nan
        g = rng.standard_normal(shape).astype(np.float32)
        y, dx, dw, db = _bne(B, B.kernels, x, np.ones(3, np.float32), np.zeros(3, np.float32), g, rm, rv)
        nan = np.isnan(x)
        assert (np.isnan(y) == nan).all(), shape
        assert np.isfinite(dx).all() and np.isfinite(db).all(), shape
        assert np.isnan(dw[1]) and np.isfinite(dw[[0, 2]]).all(), shape


def test_nan_stays_in_its_row_layer_and_rms_norm(backend, rng):
    B = dualnorm.get_backend()
    x = rng.standard_normal((4, 6)).astype(np.float32)
    x[1, 3] = np.nan
    g = rng.standard_normal((4, 6)).astype(np.float32)
    w = np.ones(6, np.float32)
    outs = _ln(B, B.kernels, x, w, np.zeros(6, np.float32), g, (1,))[:2]
    outs += _rms(B, B.kernels, x, w, g, (1,))[:2]
    for a in outs:
        assert np.isnan(a[1]).all()
        assert np.isfinite(a[[0, 2, 3]]).all()


def test_nan_stays_in_its_group(backend, rng):
    B = dualnorm.get_backend()
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x[1, 2, 0] = np.nan  # sample 1, group 1 (channels 2-3)
    g = rng.standard_normal((3, 4, 5)).astype(np.float32)
    y, dx, _, _ = _gn(B, B.kernels, x, 2, np.ones(4, np.float32), np.zeros(4, np.float32), g)
    for a in (y, dx):
        assert np.isnan(a[1, 2:]).all()
        assert np.isfinite(a[1, :2]).all() and np.isfinite(a[[0, 2]]).all()


# --- non-contiguous input and weight without bias -----------------------------------------------


def test_non_contiguous_inputs_match_reference(backend, rng):
    B = dualnorm.get_backend()
    if B.name != "numpy":
        pytest.skip("MLX arrays have no user-visible strides")
    base = (rng.standard_normal((10, 6, 12)) + 2).astype(np.float32)
    g = rng.standard_normal((10, 6, 12)).astype(np.float32)
    for view, gv in ((base[:, :, ::2], g[:, :, ::2]), (base.transpose(0, 2, 1), g.transpose(0, 2, 1))):
        assert not view.flags.c_contiguous
        c = view.shape[1]
        w, b = np.full(c, 1.5, np.float32), np.full(c, -0.5, np.float32)
        dense, gd = np.ascontiguousarray(view), np.ascontiguousarray(gv)
        for a, e in zip(_bn(B, B.kernels, view, w, b, gv), _bn(B, {}, dense, w, b, gd), strict=True):
            _close(a, e, "batch norm")
        rm, rv = np.linspace(1.0, 3.0, c, dtype=np.float32), np.linspace(0.5, 2.0, c, dtype=np.float32)
        got, want = _bne(B, B.kernels, view, w, b, gv, rm, rv), _bne(B, {}, dense, w, b, gd, rm, rv)
        for a, e in zip(got, want, strict=True):
            _close(a, e, "batch norm eval")
        d = view.shape[-1]
        wd, bd = np.full(d, 1.5, np.float32), np.full(d, 0.5, np.float32)
        for a, e in zip(
            _ln(B, B.kernels, view, wd, bd, gv, (2,)), _ln(B, {}, dense, wd, bd, gd, (2,)), strict=True
        ):
            _close(a, e, "layer norm")
        for a, e in zip(
            _rms(B, B.kernels, view, wd, gv, (2,)), _rms(B, {}, dense, wd, gd, (2,)), strict=True
        ):
            _close(a, e, "rms norm")
        if c % 2 == 0:
            for a, e in zip(
                _gn(B, B.kernels, view, 2, w, b, gv), _gn(B, {}, dense, 2, w, b, gd), strict=True
            ):
                _close(a, e, "group norm")


def test_weight_without_bias(backend, rng):
    """PyTorch's bias=False: the kernels take weight and bias independently (a bias of zeros is the same)."""
    B = dualnorm.get_backend()
    x = (rng.standard_normal((16, 4, 3)) + 1).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, zero = np.array([0.5, 2.0, -1.0, 1.5], np.float32), np.zeros(4, np.float32)
    got, want = _bn(B, B.kernels, x, w, None, g), _bn(B, {}, x, w, zero, g)
    for a, e in zip(got, want, strict=True):
        _close(a, e, "batch norm")
    got, want = _gn(B, B.kernels, x, 2, w, None, g), _gn(B, {}, x, 2, w, zero, g)
    for a, e in zip(got, want, strict=True):
        _close(a, e, "group norm")


# --- below the size threshold the numba table hands over to the NumPy kernels -------------------


def test_small_arrays_take_the_numpy_kernels(backend, rng, kernel_table, monkeypatch):
    B = dualnorm.get_backend()
    if B.name != "numpy" or kernel_table != "numba":
        pytest.skip("the numba table on the NumPy backend only")
    monkeypatch.setattr(kernels_numba, "MIN_ELEMENTS", 10**9)
    calls = []
    original = kernels_numba._run
    monkeypatch.setattr(kernels_numba, "_run", lambda *a: calls.append(a[0]) or original(*a))
    x = (rng.standard_normal((32, 5)) + 3).astype(np.float32)
    g = rng.standard_normal((32, 5)).astype(np.float32)
    w, b = np.full(5, 2.0, np.float32), np.ones(5, np.float32)
    for a, e in zip(_bn(B, B.kernels, x, w, b, g), _bn(B, {}, x, w, b, g), strict=True):
        _close(a, e, "batch norm")
    for a, e in zip(_ln(B, B.kernels, x, w, b, g, (1,)), _ln(B, {}, x, w, b, g, (1,)), strict=True):
        _close(a, e, "layer norm")
    rm, rv = np.full(5, 3.0, np.float32), np.full(5, 2.0, np.float32)
    for a, e in zip(_bne(B, B.kernels, x, w, b, g, rm, rv), _bne(B, {}, x, w, b, g, rm, rv), strict=True):
        _close(a, e, "batch norm eval")
    for a, e in zip(_gn(B, B.kernels, x, 5, w, b, g), _gn(B, {}, x, 5, w, b, g), strict=True):
        _close(a, e, "group norm")
    for a, e in zip(_rms(B, B.kernels, x, w, g, (1,)), _rms(B, {}, x, w, g, (1,)), strict=True):
        _close(a, e, "rms norm")
    assert calls == []


def test_small_arrays_take_numba_once_it_is_loaded(backend, rng, kernel_table, monkeypatch):
    B = dualnorm.get_backend()
    if B.name != "numpy" or kernel_table != "numba":
        pytest.skip("the numba table on the NumPy backend only")
    monkeypatch.setattr(kernels_numba, "MIN_ELEMENTS", 1 << 17)
    calls = []
    original = kernels_numba._run
    monkeypatch.setattr(kernels_numba, "_run", lambda *a: calls.append(a[0]) or original(*a))
    x = (rng.standard_normal((64, 128)) + 3).astype(np.float32)  # 2^13 elements
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = np.full(128, 2.0, np.float32), np.ones(128, np.float32)
    kernels_numba._import_numba()
    monkeypatch.setattr(kernels_numba, "_small_layers", False)  # numba not loaded for small layers
    _ln(B, B.kernels, x, w, b, g, (1,))
    assert calls == []
    monkeypatch.setattr(kernels_numba, "_small_layers", True)  # loaded, as a large layer would have
    for a, e in zip(_ln(B, B.kernels, x, w, b, g, (1,)), _ln(B, {}, x, w, b, g, (1,)), strict=True):
        _close(a, e, "layer norm")
    assert calls == ["ln_forward:serial", "ln_backward:serial"]


# --- DUALNORM_KERNELS -----------------------------------------------------------------------


def _installed(monkeypatch, choice):
    monkeypatch.setenv("DUALNORM_KERNELS", choice)
    backend = NumPyBackend()
    _load_kernels(backend)
    return backend.kernels


def test_kernel_choice_numpy_and_reference(monkeypatch):
    assert _installed(monkeypatch, "numpy")["batch_norm_train"] is kernels_numpy.batch_norm_train
    assert _installed(monkeypatch, "reference") == {}


def test_kernel_choice_numba_when_installed(monkeypatch):
    if not kernels_numba.available():
        pytest.skip("numba is not installed")
    for choice in ("numba", ""):
        kernels = _installed(monkeypatch, choice)
        assert kernels["batch_norm_train"] is kernels_numba.batch_norm_train, choice


def test_kernel_choice_numba_without_numba_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels_numba, "available", lambda: False)
    with pytest.raises(BackendError, match=r'numba is not installed.*pip install "dualnorm\[fast\]"'):
        _installed(monkeypatch, "numba")
    # unset: the NumPy kernels, silently
    assert _installed(monkeypatch, "")["layer_norm"] is kernels_numpy.layer_norm


def test_unknown_kernel_choice_is_an_error(monkeypatch):
    with pytest.raises(BackendError, match=r"DUALNORM_KERNELS='fast'.*numba, numpy or reference"):
        _installed(monkeypatch, "fast")


# --- cache directory and compile notice ---------------------------------------------------------


def test_cache_dir_follows_the_user(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernels_numba.cache_dir() == str(tmp_path / "dualnorm" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert kernels_numba.cache_dir() == str(tmp_path / "mine")


def _slow_kernel(seconds):
    """Stands in for a numba dispatcher whose first call compiles."""
    calls = []

    def kernel(*args):
        if not calls:
            time.sleep(seconds)
        calls.append(args)
        return "result"

    return kernel


def test_a_slow_compile_is_announced_once(monkeypatch):
    monkeypatch.setattr(kernels_numba, "NOTICE_AFTER_S", 0.01)
    monkeypatch.setattr(kernels_numba, "_announced", False)
    monkeypatch.setitem(kernels_numba._compiled, "fake", _slow_kernel(0.3))
    monkeypatch.setitem(kernels_numba._compiled, "fake2", _slow_kernel(0.3))
    monkeypatch.setattr(kernels_numba, "_seen", set())
    heard = []
    remove = kernels_numba.add_compile_listener(heard.append)
    try:
        x = np.zeros(3)
        assert kernels_numba._run("fake", x) == "result"
        assert len(heard) == 1 and "compiling numba kernels" in heard[0]
        assert kernels_numba._run("fake", x) == "result"  # compiled: no second notice
        assert kernels_numba._run("fake2", x) == "result"  # another slow compile: still one line
        assert len(heard) == 1
    finally:
        remove()


def test_the_cli_prints_compile_notices(monkeypatch, capsys):
    from dualnorm import cli

    monkeypatch.setattr(kernels_numba, "_listeners", [])
    drive = cli._drive

    def compiling_drive(*args, **kwargs):  # a compile announced while the run trains
        kernels_numba._announce("dualnorm: compiling numba kernels (test)")
        return drive(*args, **kwargs)

    monkeypatch.setattr(cli, "_drive", compiling_drive)
    assert cli.main(["run", "dying-relu", "--steps", "2", "--quiet", "--backend", "numpy"]) == 0
    assert "dualnorm: compiling numba kernels (test)" in capsys.readouterr().err
    assert kernels_numba._listeners == []  # the run's listener went with the run


# --- the NumPy kernels' small (N, C) path is the blocked path, bit for bit -----------------------


# The kernels are called directly here, below the layer call that silences float warnings (inf - inf).
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", ["plain", "large-mean", "nan", "inf", "no-affine", "float64"])
def test_small_batch_norm_path_is_bitwise_the_blocked_path(rng, monkeypatch, case):
    B = NumPyBackend()
    dt = np.float64 if case == "float64" else np.float32
    x = rng.standard_normal((100, 7)).astype(dt)
    if case == "large-mean":
        x = (1e4 + x * 1e-2).astype(dt)
    elif case == "nan":
        x[3, 2] = np.nan
    elif case == "inf":
        x[5, 4] = np.inf
    g = rng.standard_normal(x.shape).astype(dt)
    w, b = (None, None) if case == "no-affine" else (np.linspace(0.5, 2, 7, dtype=dt), np.ones(7, dt))
    runs = []
    for small in (True, False):
        if not small:
            monkeypatch.setattr(kernels_numpy, "_small_2d", lambda x: False)
        y, mean, var, ctx = kernels_numpy.batch_norm_train(B, x, w, b, 1e-5)
        runs.append((y, mean, var, *kernels_numpy.batch_norm_train_backward(B, g, ctx, w)))
    for got, want in zip(*runs, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


# --- running statistics: one compiled loop, bit for bit the reference -------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, 0.37, "cumulative"])
def test_running_stats_kernel_is_bitwise_the_reference(rng, dtype, momentum, monkeypatch):
    if not kernels_numba.available():
        pytest.skip("numba is not installed")
    kernels_numba._import_numba()
    B = NumPyBackend()
    c = 37
    rm, rv = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.5
    mean, var = rng.standard_normal(c).astype(dtype) * 3, rng.random(c).astype(dtype) * 7
    factor = 1.0 / np.asarray(7).astype(dtype) if momentum == "cumulative" else momentum
    calls = []
    original = kernels_numba._run
    monkeypatch.setattr(kernels_numba, "_run", lambda *a: calls.append(a[0]) or original(*a))
    got = kernels_numba.update_running_stats(B, rm, rv, mean, var, factor, 13)
    want = F.update_running_stats.reference(B, rm, rv, mean, var, factor, 13)
    assert calls == ["running_stats:serial"]
    for a, e in zip(got, want, strict=True):
        assert a.dtype == e.dtype == dtype
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("shape", [(300, 40), (64, 12, 9, 9), (2, 1)])
@pytest.mark.parametrize("momentum", [0.1, "cumulative"])
def test_running_update_inside_the_forward_kernel_is_bitwise_the_separate_one(
    rng, shape, momentum, monkeypatch
):
    if not kernels_numba.available():
        pytest.skip("numba is not installed")
    kernels_numba._import_numba()
    monkeypatch.setattr(kernels_numba, "MIN_ELEMENTS", 0)  # the kernels at every size
    monkeypatch.setattr(kernels_numba, "LOADED_MIN", 0)
    B = NumPyBackend()
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    w, b = (rng.standard_normal(shape[1]).astype(np.float32) for _ in range(2))
    rm, rv = rng.standard_normal(shape[1]).astype(np.float32), rng.random(shape[1]).astype(np.float32) + 0.5
    factor = 1.0 / np.asarray(7).astype(np.float32) if momentum == "cumulative" else momentum
    calls = []
    original = kernels_numba._run
    monkeypatch.setattr(kernels_numba, "_run", lambda *a: calls.append(a[0]) or original(*a))
    y, mean, var, new_mean, new_var, _ = kernels_numba.batch_norm_train_tracked(
        B, x, w, b, 1e-5, rm, rv, factor
    )
    layout = "2" if len(shape) == 2 and shape[1] > 1 else "3"  # one channel: one contiguous run
    assert [c.partition(":")[0] for c in calls] == ["bn_forward" + layout]
    y2, mean2, var2, _ = kernels_numba.batch_norm_train(B, x, w, b, 1e-5)
    separate = kernels_numba.update_running_stats(B, rm, rv, mean2, var2, factor, x.size // shape[1])
    for got, want in zip((y, mean, var, new_mean, new_var), (y2, mean2, var2, *separate), strict=True):
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_running_stats_without_numba_loaded_is_the_reference(rng, monkeypatch):
    monkeypatch.setattr(kernels_numba, "_small_layers", False)  # numba not loaded for small layers
    calls = []
    monkeypatch.setattr(kernels_numba, "_run", lambda *a: calls.append(a[0]))
    B = NumPyBackend()
    rm, rv, mean, var = (rng.random(5).astype(np.float32) for _ in range(4))
    got = kernels_numba.update_running_stats(B, rm, rv, mean, var, 0.1, 8)
    want = F.update_running_stats.reference(B, rm, rv, mean, var, 0.1, 8)
    assert calls == []
    for a, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, e)


# --- threading layer: OpenMP's spin bounded while it loads, serial kernels after a fork ---------

_LAYER_PROBE = """
import os, json
from dualnorm.backends import kernels_numba as K
K._import_numba()
import numba
print(json.dumps({"layer": numba.threading_layer(), "spin": os.environ.get("GOMP_SPINCOUNT"),
                  "min": K._parallel_min}))
"""


def test_threading_layer_loads_and_leaves_the_environment_as_it_was():
    import json
    import subprocess
    import sys

    if not kernels_numba.available():
        pytest.skip("numba is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.pop("NUMBA_THREADING_LAYER", None)
    done = subprocess.run(
        [sys.executable, "-c", _LAYER_PROBE], env=env, capture_output=True, text=True, check=True, timeout=300
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["spin"] is None  # set only while libgomp loaded; PyTorch's OpenMP keeps its defaults
    assert got["layer"] in ("omp", "tbb", "workqueue")
    want = kernels_numba.WORKQUEUE_PARALLEL_MIN if got["layer"] == "workqueue" else kernels_numba.PARALLEL_MIN
    assert got["min"] == want


def test_a_forked_child_keeps_to_the_serial_kernels():
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what a large launch would use, then leave at once
        try:
            os.write(write, str(kernels_numba._threads(64, 1 << 22)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"1"
    os.close(read)
    assert kernels_numba._forked is False  # the parent keeps its threads


# --- training runs: numba imported in the background, small layers switch at one fixed point ----


def _fresh_process_state(monkeypatch):
    monkeypatch.setattr(kernels_numba, "_small_layers", False)
    monkeypatch.setattr(kernels_numba, "_loader", None)


def test_a_run_switches_small_layers_to_numba_after_its_first_record(monkeypatch):
    from dualnorm.experiments import RunConfig, get_experiment

    if not kernels_numba.available():
        pytest.skip("numba is not installed")
    monkeypatch.delenv("DUALNORM_KERNELS", raising=False)
    _fresh_process_state(monkeypatch)
    calls = []
    original = kernels_numba._run
    monkeypatch.setattr(kernels_numba, "_run", lambda *a: calls.append(a[0]) or original(*a))
    config = RunConfig(backend="numpy", steps=3, record_every=1, variants=("s00-batchnorm",))
    run = get_experiment("init-sweep").run(config)
    first = next(run)
    assert first.step == 1 and calls == []  # (100, 100) batch norm: the NumPy kernels at step 1
    assert not kernels_numba._small_layers  # whenever the background import ended
    second = next(run)
    assert second.step == 2 and kernels_numba._small_layers
    assert "bn_forward2:serial" in calls and "running_stats:serial" not in calls  # updated in the kernel
    run.close()


_PRIMER_CHECK = """
import threading
import numpy as np
from dualnorm.backends import kernels_numba as K
primer_started, release = threading.Event(), threading.Event()
K._prime = lambda: primer_started.set() or release.wait(60)
K._compiled["fake"] = lambda x: "result"
K.start_warm_up()
assert primer_started.wait(60)
K.warm_up()  # returns while the primer still runs
assert K._loader.is_alive() and K._small_layers
result = []
first = threading.Thread(target=lambda: result.append(K._run("fake", np.ones(2))))
first.start()
first.join(0.5)
assert first.is_alive() and result == [], "a first kernel call did not wait for the primer"
release.set()
first.join(60)
assert result == ["result"]
print("ok")
"""


def test_warm_up_waits_for_the_import_and_a_first_kernel_for_the_primer():
    # The primer (numba's target set-up) runs in the loader after the import: warm_up() must not
    # wait for it (the switch comes after the first record), a first kernel call must (one set-up).
    # In a fresh process: this one may have imported numba already.
    import subprocess
    import sys

    if not kernels_numba.available():
        pytest.skip("numba is not installed")
    env = {k: v for k, v in os.environ.items() if k != "DUALNORM_KERNELS"}
    done = subprocess.run([sys.executable, "-c", _PRIMER_CHECK], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_run_gives_the_same_numbers_every_time(monkeypatch):
    from dualnorm.experiments import RunConfig, get_experiment

    monkeypatch.delenv("DUALNORM_KERNELS", raising=False)
    config = RunConfig(backend="numpy", steps=4, record_every=1, variants=("s00-batchnorm",))
    losses = []
    for _ in range(2):
        _fresh_process_state(monkeypatch)
        losses.append([r.loss for r in get_experiment("init-sweep").run(config)])
    assert losses[0] == losses[1] and len(losses[0]) == 4


# --- large outputs kept for reuse: handed out again only once nothing refers to them ----------


@pytest.fixture
def small_spares(monkeypatch):
    if not kernels_numba.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(kernels_numba, "MIN_ELEMENTS", 0)  # the compiled kernels at any size
    monkeypatch.setattr(kernels_numba, "SPARE_MIN_BYTES", 1024)  # kept from 1 KiB instead of 32 MiB
    monkeypatch.setenv("DUALNORM_KERNELS", "numba")
    kernels_numba.release_spares()
    yield
    kernels_numba.release_spares()


def _address(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("make", [lambda: nn.LayerNorm(64), lambda: nn.BatchNorm1d(64)], ids=["LN", "BN1d"])
def test_an_output_still_held_is_never_handed_out_again(rng, small_spares, make):
    layer = make()
    xs = [rng.standard_normal((32, 64)).astype(np.float32) for _ in range(4)]
    g = rng.standard_normal((32, 64)).astype(np.float32)
    held = layer(xs[0])
    kept = held.copy()
    view = layer(xs[1])[::2]  # only a view of the second output survives
    view_kept = view.copy()
    for x in xs[2:]:
        layer(x)
        dx = layer.backward(g)
    dx_kept = dx.copy()
    for x in xs:  # more forwards and backwards, whose outputs are dropped at once
        layer(x)
        layer.backward(g)
    np.testing.assert_array_equal(held, kept)
    np.testing.assert_array_equal(view, view_kept)
    np.testing.assert_array_equal(dx, dx_kept)


def test_a_dropped_output_is_reused(rng, small_spares):
    layer = nn.LayerNorm(64)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    first = layer(x)
    address, want = _address(first), first.copy()
    del first
    again = layer(x)
    assert _address(again) == address  # no new memory for it
    np.testing.assert_array_equal(again, want)
    kernels_numba.release_spares()
    assert not kernels_numba._spares
