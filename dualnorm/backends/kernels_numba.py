"""Fused numba kernels for the NumPy backend (``pip install "dualnorm[fast]"``).

Each layer is a few passes over memory, multithreaded with ``prange``:

* forward: one pass for the statistics, one to normalize (rows of layer/group/RMS norm
  are normalized while they are still in cache);
* backward: one pass for the per-channel (or per-row) sums, one to write dL/dx.

Statistics are shifted sums accumulated in float64 (the shift is a value of the data,
so 1e4 + N(0, 1e-2) float32 input loses nothing); per-thread partial sums are merged
in float64 after the parallel loop. Normalizing subtracts a float32 head of the mean
(exact for data near the mean) and folds the float64 tail into the affine constants,
as :mod:`kernels_numpy` does.

Lazy: numba is imported the first time an array of at least ``MIN_ELEMENTS`` elements
reaches a kernel, or when a training run starts (:func:`warm_up`, through
``Backend.warm_up``); from then on every array of at least ``LOADED_MIN`` elements takes the
compiled kernels. Smaller arrays, float16, and a process that only calls small layers
outside a run take the NumPy kernels. Below ``PARALLEL_MIN`` elements a kernel runs on one
thread (waking the pool costs more than the work). Compiled code is
cached on disk (``NUMBA_CACHE_DIR``, default ``$XDG_CACHE_HOME/dualnorm/numba``). A
compile that takes more than a second is announced to :func:`add_compile_listener`
callbacks (the CLI prints them) and to the ``dualnorm`` logger.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from dualnorm.backends import kernels_numpy as _npk
from dualnorm.backends.base import Backend
from dualnorm.nn.functional import writes_out

# Per call numba takes 0.2-0.36x the NumPy kernels' time from 1 000 elements up
# (benchmarks/crossover.py), but importing numba costs ~0.4 s warm (5 s cold, when it compiles).
# A script's layers import it from 2^17 elements, where one call saves about a millisecond;
# training runs import it in the background and switch after their first record (warm_up),
# which pays back within the run.
# 0 = numba at every size.
MIN_ELEMENTS = 1 << 17
# Once numba is loaded (by a large layer or warm_up), its import is paid: from LOADED_MIN elements
# up the serial kernels take 0.2-0.36x the NumPy kernels' time (benchmarks/crossover.py).
LOADED_MIN = 1 << 12
NOTICE_AFTER_S = 1.0
# Below this many elements, one thread (twice as many for batch norm's two-launch kernels). With
# OpenMP's launch (~3 µs) threads pay from 2^14-2^16 elements for the row norms and from 2^17 for
# batch norm; under workqueue (~35 µs a launch) they lose below 2^18 (benchmarks/ratios.py, 1t/2t).
PARALLEL_MIN = 1 << 16
WORKQUEUE_PARALLEL_MIN = 1 << 18
_parallel_min = PARALLEL_MIN  # WORKQUEUE_PARALLEL_MIN when that layer is the one that loaded
SPIN_TURNS = 2_000  # GOMP_SPINCOUNT: see _load_threading_layer

log = logging.getLogger("dualnorm")
_listeners: list[Callable[[str], None]] = []
_lock = threading.Lock()  # one parallel launch at a time (numba's workqueue layer is not re-entrant)
_compiled: dict[str, Any] = {}
_seen: set[tuple[Any, ...]] = set()  # (kernel, dtype.char, ndim) each kernel has been called with
_ready: dict[tuple[Any, ...], Any] = {}  # of those, the ones that run without _lock (serial, re-entrant)


class _ThreadsSet(threading.local):
    n = 0  # the numba thread count this thread last set


_threads_set = _ThreadsSet()
_announced = False
_TAG = object()  # first item of a context made here (smaller arrays carry the NumPy kernels')
_numba: Any = None
_import_lock = threading.Lock()
_small_layers = False  # arrays from LOADED_MIN elements take numba (set by _import_numba)
_loader: threading.Thread | None = None  # start_warm_up's import, then the primer
_imported = threading.Event()  # set when the loader's import has ended
_numba_max_threads = 1  # numba.config.NUMBA_NUM_THREADS, once numba is imported


def available() -> bool:
    """True when numba can be imported (without importing it)."""
    return importlib.util.find_spec("numba") is not None


def add_compile_listener(callback: Callable[[str], None]) -> Callable[[], None]:
    """Call ``callback(message)`` when a compile takes longer than a second; returns a remover."""
    _listeners.append(callback)
    return lambda: _listeners.remove(callback) if callback in _listeners else None


def cache_dir() -> str:
    """Where compiled kernels are kept: ``NUMBA_CACHE_DIR`` if the user set it, else the user cache."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dualnorm", "numba")


def _import_numba(small_layers: bool = True) -> Any:
    """numba, imported once (two threads' first large layers: one import, helpers compiled once).

    ``small_layers``: from now on arrays from ``LOADED_MIN`` elements take the compiled kernels
    too (the import is paid). False only for the background import of :func:`start_warm_up`."""
    global _small_layers
    with _import_lock:
        numba = _numba or _import_numba_now()
        if small_layers:
            _small_layers = True
        return numba


def _import_numba_now() -> Any:
    global _numba
    if _numba is None:
        os.environ.setdefault("NUMBA_CACHE_DIR", cache_dir())
        if "numba" not in sys.modules:
            # OpenMP first: a parallel launch costs 3-16 µs there against 35 µs under workqueue
            # (2-core VM), which decides whether threads pay at 2^16-2^20 elements. Then TBB, then
            # workqueue (not re-entrant: _lock covers it), whichever loads (macOS may lack libomp).
            os.environ.setdefault("NUMBA_THREADING_LAYER_PRIORITY", "omp tbb workqueue")
        import numba

        _numba = numba
        globals()["prange"] = numba.prange
        globals()["_numba_max_threads"] = numba.config.NUMBA_NUM_THREADS  # fixed once numba is loaded
        for helper in (
            "_bn_finish",
            "_bn_grad_finish",
            "_bn_sums_rows",
            "_bn_grad_sums_rows",
            "_merge_sums",
        ):  # inside kernels
            globals()[helper] = numba.njit(cache=True)(globals()[helper])
        # fastmath=False said outright: left unsaid, numba lets LLVM fuse k * rm + m * mean into an FMA,
        # one rounding fewer than NumPy's (the running statistics are bit for bit the reference's)
        globals()["_running_stats"] = numba.njit(cache=True, fastmath=False)(_running_stats)
        _load_threading_layer(numba)
    return _numba


def start_warm_up() -> None:
    """Import numba in a background thread (~0.4 s when its cache is warm); :func:`warm_up` joins it.

    The import alone changes no kernel choice: small layers switch to the compiled kernels only
    at ``warm_up()``, a fixed point of the caller's, so a run's numbers never depend on when the
    import ended."""
    global _loader
    if _numba is None and _loader is None:
        _loader = threading.Thread(target=_import_and_prime, name="dualnorm-numba-import", daemon=True)
        _loader.start()


def _import_and_prime() -> None:
    try:
        _import_numba(small_layers=False)
    finally:
        _imported.set()  # what warm_up() waits for; the primer may still run when it returns
    try:
        _prime()
    except Exception:  # a failed primer costs the first kernel that time, nothing more
        log.debug("numba primer failed", exc_info=True)


def _prime() -> None:
    """The process's first compiled call (a compile or a cache load) sets up numba's CPU target:
    ~0.3 s that the first kernel after the switch would otherwise pay in the training thread."""
    _numba.njit(cache=True)(_primer)(np.ones(2, np.float32), np.empty(2))


def _primer(a, out):
    for i in range(a.shape[0]):
        out[i] = np.sqrt(np.float64(a[i]))


def warm_up() -> None:
    """Import numba now (or join :func:`start_warm_up`'s import); from here on layers from
    ``LOADED_MIN`` elements take the compiled kernels. Training runs do this after their first
    record (``Backend.warm_up``): the demos' small layers then run 3-10x faster per call, which
    pays for the import within the run (`dualnorm run init-sweep` 28.6 s -> 25.2 s, dying-relu
    11.1 s -> 9.2 s, import included), while the first record comes as soon as before."""
    if _loader is not None:
        _imported.wait()
    _import_numba()


def _load_threading_layer(numba: Any) -> None:
    """Start numba's thread pool now, with OpenMP's spin-wait bounded (unless the user chose one).

    GNU OpenMP spins a waiting thread for 300 000 turns by default, forever under
    OMP_WAIT_POLICY=ACTIVE. Beside busy processes a spinning thread loses the core to them and
    a kernel waits out the scheduler: LayerNorm at 2^16 elements, 2 threads, two busy processes
    beside it, took 8 ms (active) or, in one run of two, 1.2 ms (20 000 turns) instead of 30 µs.
    Passive waiting adds ~20 µs to every launch on free cores. 2 000 turns kept the free-core
    speed and stayed under 0.2 ms a call under load (python -m benchmarks.threading_layer).
    libgomp reads its settings once, when it loads: they are set only for that moment, so an
    OpenMP runtime loaded later (PyTorch's) keeps its own defaults."""
    chosen = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    if not chosen:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_TURNS)
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        if numba.threading_layer() == "workqueue":
            global _parallel_min
            _parallel_min = WORKQUEUE_PARALLEL_MIN
    except Exception:  # no layer loads (e.g. a broken TBB): the serial kernels still work
        log.debug("numba threading layer did not load", exc_info=True)
    finally:
        if not chosen:
            del os.environ["GOMP_SPINCOUNT"]


def _after_fork_in_child() -> None:
    # GNU OpenMP cannot run in a forked child of a process that used it (numba aborts the child):
    # the child keeps to the serial kernels, which never touch the pool.
    global _forked
    _forked = True


_forked = False
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


prange = range  # replaced by numba.prange before anything is compiled

# Only reductions may be reordered (so LLVM vectorizes them); NaN/Inf semantics stay.
_REDUCE_MATH = {"reassoc", "contract"}


def _kernel(name: str) -> Any:
    """The compiled ``name``; ``name:serial`` is the same source without threads (``prange`` is
    ``range``), for small arrays: no pool to wake, and it compiles in a fraction of the time."""
    fn = _compiled.get(name)
    if fn is None:
        numba = _import_numba()
        base, _, variant = name.partition(":")
        py, reduces = _SOURCES[base]
        fn = _compiled[name] = numba.njit(
            parallel=variant != "serial", cache=True, fastmath=_REDUCE_MATH if reduces else False, nogil=True
        )(_variant_source(py, variant))
    return fn


def _variant_source(py: Callable[..., Any], variant: str) -> Callable[..., Any]:
    """``py`` under a name of its own per variant: numba's on-disk cache keys an entry by the
    function's qualified name and signature, not by ``parallel=``, so the serial and parallel
    compiles of one function would share (and overwrite) one entry, and whichever was compiled
    first would be loaded for both."""
    if not variant:
        return py
    fn = types.FunctionType(py.__code__, py.__globals__, f"{py.__name__}_{variant}", py.__defaults__)
    fn.__qualname__ = f"{py.__qualname__}_{variant}"
    fn.__module__ = py.__module__
    fn.__doc__ = py.__doc__
    return fn


def _by_threads(name: str) -> tuple[str, str]:
    """Kernel ``name``'s variants, indexed by ``nt > 1``: the serial one, then the threaded one."""
    return name + ":serial", name


def _announce(message: str) -> None:
    log.info(message)
    for callback in list(_listeners):
        try:
            callback(message)
        except Exception:  # a listener must not break training
            log.exception("compile listener failed")


def _run(name: str, *args: Any) -> Any:
    """Call kernel ``name``; a compile that takes more than a second is announced (once a process).

    Serial kernels are re-entrant (``nogil``, no thread pool): they run without a lock, so
    threads of the caller's own (data-parallel workers) overlap. A parallel launch holds
    ``_lock`` only under the workqueue layer, the one that is not re-entrant."""
    a = args[0]
    # (dtype.char, ndim: what varies between a kernel's signatures in practice; hashing a dtype
    # costs more than the rest of this)
    fn = _ready.get((name, a.dtype.char, a.ndim))
    if fn is not None:
        return fn(*args)
    return _run_first_or_locked(name, args)


def _run_first_or_locked(name: str, args: tuple[Any, ...]) -> Any:
    fn = _compiled.get(name) or _kernel(name)
    a = args[0]
    key = (name, a.dtype.char, a.ndim)
    if key in _seen:  # a parallel kernel under the workqueue layer: one launch at a time
        with _lock:
            return fn(*args)
    return _first_run(name, key, fn, args)


def _first_run(name: str, key: tuple[Any, ...], fn: Any, args: tuple[Any, ...]) -> Any:
    if _loader is not None and _loader.is_alive() and _loader is not threading.current_thread():
        _loader.join()  # the primer: one set-up of numba's target at a time
    timer = threading.Timer(NOTICE_AFTER_S, _announce_once)
    timer.daemon = True
    timer.start()
    t0 = time.perf_counter()
    try:
        with _lock:
            out = fn(*args)
        _seen.add(key)
        if name.endswith(":serial") or _layer() not in ("workqueue", None):
            _ready[key] = fn  # compiled for this signature and re-entrant: no lock from now on
        return out
    finally:
        timer.cancel()
        if time.perf_counter() - t0 > NOTICE_AFTER_S:
            log.info("numba kernel %s compiled or loaded in %.1f s", name, time.perf_counter() - t0)


def _layer() -> str | None:
    try:
        return _numba.threading_layer() if _numba is not None else None
    except ValueError:  # no parallel launch yet
        return None


def _announce_once() -> None:
    global _announced
    if not _announced:
        _announced = True
        _announce(f"dualnorm: compiling numba kernels (first run only; cached in {cache_dir()})")


def _threads(units: int, size: int, launches: int = 1) -> int:
    """Threads for a launch: one (the serial kernels) below ``PARALLEL_MIN`` elements, where
    waking a pool costs more than the work, and far more when the cores are busy; twice that for
    kernels of two parallel loops (batch norm: statistics, then normalization)."""
    if size < _parallel_min * launches or _forked:
        return 1
    if _numba is None:
        _import_numba()
    nt = _npk._num_threads  # the least of it, numba's and the units (min() costs 3 comparisons' time)
    if nt > _numba_max_threads:
        nt = _numba_max_threads
    if nt > units:
        nt = units
    return _threads_again(nt)


def _threads_again(nt: int) -> int:
    """``nt`` threads (one once forked), set as numba's count when a threaded launch needs it. A
    backward passes the count its forward chose (same units, same size) instead of choosing anew;
    it is set again when another launch on this thread changed it."""
    if nt > 1:
        if _forked:
            return 1
        if _threads_set.n != nt:  # numba's setting is per thread; setting it costs µs
            _numba.set_num_threads(nt)
            _threads_set.n = nt
    return nt


def _use(x: np.ndarray) -> bool:
    n = x.size
    # dtype.char: comparing the dtype with (np.float32, np.float64) costs 0.5 µs a call
    return (n >= MIN_ELEMENTS or (n >= LOADED_MIN and _small_layers)) and x.dtype.char in "fd"


# --- the kernels (plain Python, compiled by numba on first use) ----------------------------
#
# Layouts: batch norm sees (N, C, S) (S = 1 for (N, C), its own loops then run along C);
# row norms see (rows, D); group norm sees (N * G, Cg, S). ``acc*`` are per-thread partial
# sums (nt, ...) in float64, merged by the caller.


def _bn_finish(x, w, b, eps, m, shift, s1, s2, st, hd, rm, rv, keep, momentum, corr):
    """Per-channel statistics from the per-thread shifted sums into ``st`` (mean, var, 1/std, tail;
    float64) and ``hd`` (head, mean, var, and the updated running mean and var; x's dtype), and the
    affine constants. The caller's arrays, not returned ones: boxing five arrays for Python cost
    ~6 µs a call. When ``rm`` is given (C values), the running statistics updated from ``rm``/``rv``
    into ``hd[3:5]``: as :func:`_running_stats` computes them, bit for bit."""
    c = shift.shape[0]
    nt = s1.shape[0]
    mean, var, inv, tail = st[0], st[1], st[2], st[3]
    head = hd[0]
    a = np.empty(c, x.dtype)
    bb = np.empty(c, x.dtype)
    # Short loops over few arrays each: LLVM vectorizes those (one loop over ten arrays it did not,
    # and the channels' sqrt and division were most of a small layer's kernel time).
    t1 = s1[0]
    t2 = s2[0]
    for t in range(1, nt):
        for j in range(c):
            t1[j] += s1[t, j]
            t2[j] += s2[t, j]
    for j in range(c):
        d = t1[j] / m
        mean[j] = shift[j] + d
        var[j] = max(t2[j] / m - d * d, 0.0)
    for j in range(c):
        inv[j] = 1.0 / np.sqrt(var[j] + eps)
    for j in range(c):
        h = x.dtype.type(mean[j])
        head[j] = h
        tail[j] = mean[j] - np.float64(h)
    # y = (x - mean) * a + b = (x - head) * a + (b - tail * a): x - head is exact near the mean
    for j in range(c):
        aj = inv[j] * np.float64(w[j])
        a[j] = aj
        bb[j] = np.float64(b[j]) - tail[j] * aj
    for j in range(c):
        hd[1, j] = mean[j]
        hd[2, j] = var[j]
    if rm.shape[0] == c:
        _running_stats(rm, rv, hd[1], hd[2], keep, momentum, corr, hd[3:5])
    return a, bb


def _bn_sums_rows(x, shift, a1, a2, lo, hi):
    """a1[j] += sum of (x[i, j] - shift[j]), a2[j] += its squares, over rows lo..hi of (N, C) x.

    Four rows a pass: the per-channel sums live in memory (C of them), and loading and storing
    them for every row bounded the loop (stores), not the reads of x: 2.1x faster on 2 threads
    at 1024 x 1024, and it scales with threads where one row a pass did not."""
    c = x.shape[1]
    i = lo
    while i + 4 <= hi:
        r0, r1, r2, r3 = x[i], x[i + 1], x[i + 2], x[i + 3]  # row views: LLVM vectorizes along C
        for j in range(c):
            sh = shift[j]
            d0 = np.float64(r0[j]) - sh
            d1 = np.float64(r1[j]) - sh
            d2 = np.float64(r2[j]) - sh
            d3 = np.float64(r3[j]) - sh
            a1[j] += (d0 + d1) + (d2 + d3)
            a2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        i += 4
    for r in range(i, hi):
        xr = x[r]
        for j in range(c):
            d = np.float64(xr[j]) - shift[j]
            a1[j] += d
            a2[j] += d * d


def _bn_grad_sums_rows(g, x, head, a1, a2, lo, hi):
    """a1[j] += sum of g[i, j], a2[j] += sum of g[i, j] * (x[i, j] - head[j]), rows lo..hi (four a pass)."""
    c = x.shape[1]
    i = lo
    while i + 4 <= hi:
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        g0, g1, g2, g3 = g[i], g[i + 1], g[i + 2], g[i + 3]
        for j in range(c):
            h = head[j]
            v0, v1, v2, v3 = np.float64(g0[j]), np.float64(g1[j]), np.float64(g2[j]), np.float64(g3[j])
            a1[j] += (v0 + v1) + (v2 + v3)
            a2[j] += (v0 * np.float64(x0[j] - h) + v1 * np.float64(x1[j] - h)) + (
                v2 * np.float64(x2[j] - h) + v3 * np.float64(x3[j] - h)
            )
        i += 4
    for r in range(i, hi):
        xr = x[r]
        gr = g[r]
        for j in range(c):
            gv = np.float64(gr[j])
            a1[j] += gv
            a2[j] += gv * np.float64(xr[j] - head[j])


def _bn_forward2(x, w, b, eps, nt, y, st, hd, rm, rv, keep, momentum, corr):
    n, c = x.shape
    shift = np.empty(c)
    for j in range(c):
        shift[j] = x[0, j]
    s1 = np.zeros((nt, c))
    s2 = np.zeros((nt, c))
    for t in prange(nt):
        _bn_sums_rows(x, shift, s1[t], s2[t], n * t // nt, n * (t + 1) // nt)
    a, bb = _bn_finish(x, w, b, eps, n, shift, s1, s2, st, hd, rm, rv, keep, momentum, corr)
    head = hd[0]
    for t in prange(nt):
        for i in range(n * t // nt, n * (t + 1) // nt):
            xr = x[i]
            yr = y[i]
            for j in range(c):
                yr[j] = (xr[j] - head[j]) * a[j] + bb[j]


def _bn_forward3(x, w, b, eps, nt, y, st, hd, rm, rv, keep, momentum, corr):
    n, c, s = x.shape
    units = n * c
    shift = np.empty(c)
    for j in range(c):
        shift[j] = x[0, j, 0]
    s1 = np.zeros((nt, c))
    s2 = np.zeros((nt, c))
    for t in prange(nt):
        a1 = s1[t]
        a2 = s2[t]
        for u in range(units * t // nt, units * (t + 1) // nt):
            j = u % c
            xr = x[u // c, j]
            sh = shift[j]
            p = 0.0
            q = 0.0
            for k in range(s):
                d = np.float64(xr[k]) - sh
                p += d
                q += d * d
            a1[j] += p
            a2[j] += q
    a, bb = _bn_finish(x, w, b, eps, n * s, shift, s1, s2, st, hd, rm, rv, keep, momentum, corr)
    head = hd[0]
    for t in prange(nt):
        for u in range(units * t // nt, units * (t + 1) // nt):
            j = u % c
            xr = x[u // c, j]
            yr = y[u // c, j]
            h, aj, bj = head[j], a[j], bb[j]
            for k in range(s):
                yr[k] = (xr[k] - h) * aj + bj


def _bn_grad_finish(x, w, m, inv, tail, sg, sgx, gwb):
    """dx = a * (g + c2 * (x - head)) + k per channel, and the parameter gradients.

    a * c2 is kept as two factors: at 1e30 it is ~1e-60, below float32 (its term would vanish)."""
    c = inv.shape[0]
    nt = sg.shape[0]
    a = np.empty(c, x.dtype)
    c2 = np.empty(c, x.dtype)
    k = np.empty(c, x.dtype)
    gw = gwb[0]
    gb = gwb[1]
    for j in range(c):
        sum_g = 0.0
        sum_gt = 0.0
        for t in range(nt):
            sum_g += sg[t, j]
            sum_gt += sgx[t, j]
        sum_gc = sum_gt - tail[j] * sum_g  # sum of g * (x - mean)
        aj = np.float64(w[j]) * inv[j]
        c2j = -inv[j] * inv[j] * sum_gc / m
        a[j] = aj
        c2[j] = c2j
        k[j] = -aj * (sum_g / m) - aj * c2j * tail[j]
        gw[j] = inv[j] * sum_gc
        gb[j] = sum_g
    return a, c2, k


def _bn_backward2(g, x, w, st, hd, nt, dx, gwb):
    n, c = x.shape
    inv, tail, head = st[2], st[3], hd[0]  # as the forward left them
    sg = np.zeros((nt, c))
    sgx = np.zeros((nt, c))
    for t in prange(nt):
        _bn_grad_sums_rows(g, x, head, sg[t], sgx[t], n * t // nt, n * (t + 1) // nt)
    a, c2, k = _bn_grad_finish(x, w, n, inv, tail, sg, sgx, gwb)
    for t in prange(nt):
        for i in range(n * t // nt, n * (t + 1) // nt):
            xr = x[i]
            gr = g[i]
            dr = dx[i]
            for j in range(c):
                dr[j] = a[j] * (gr[j] + c2[j] * (xr[j] - head[j])) + k[j]


def _bn_backward3(g, x, w, st, hd, nt, dx, gwb):
    n, c, s = x.shape
    inv, tail, head = st[2], st[3], hd[0]
    units = n * c
    sg = np.zeros((nt, c))
    sgx = np.zeros((nt, c))
    for t in prange(nt):
        a1 = sg[t]
        a2 = sgx[t]
        for u in range(units * t // nt, units * (t + 1) // nt):
            j = u % c
            xr = x[u // c, j]
            gr = g[u // c, j]
            h = head[j]
            p = 0.0
            q = 0.0
            for k in range(s):
                gv = np.float64(gr[k])
                p += gv
                q += gv * np.float64(xr[k] - h)
            a1[j] += p
            a2[j] += q
    a, c2, k = _bn_grad_finish(x, w, n * s, inv, tail, sg, sgx, gwb)
    for t in prange(nt):
        for u in range(units * t // nt, units * (t + 1) // nt):
            j = u % c
            xr = x[u // c, j]
            gr = g[u // c, j]
            dr = dx[u // c, j]
            h, aj, cj, kj = head[j], a[j], c2[j], k[j]
            for q in range(s):
                dr[q] = aj * (gr[q] + cj * (xr[q] - h)) + kj


def _ln_forward(x, w, b, eps, centred, nt, y, mean, inv):
    rows, d = x.shape
    for t in prange(nt):
        for r in range(rows * t // nt, rows * (t + 1) // nt):
            xr = x[r]
            yr = y[r]
            shift = np.float64(xr[0]) if centred else 0.0
            sa = 0.0
            sb = 0.0
            for k in range(d):
                v = np.float64(xr[k]) - shift
                sa += v
                sb += v * v
            m = sa / d
            var = max(sb / d - m * m, 0.0) if centred else sb / d
            mu = shift + m if centred else 0.0
            istd = 1.0 / np.sqrt(var + eps)
            mean[r] = mu
            inv[r] = istd
            head = x.dtype.type(mu)
            off = x.dtype.type(-(mu - np.float64(head)) * istd)
            i32 = x.dtype.type(istd)
            for k in range(d):
                yr[k] = ((xr[k] - head) * i32 + off) * w[k] + b[k]


def _merge_sums(dw, db, gwb):
    # The threads' float64 sums, merged in thread order (as adding the rows would), into gwb's
    # two rows in the data's dtype: no further NumPy calls (two astype cost ~2 µs a backward).
    for k in range(dw.shape[1]):
        sw = dw[0, k]
        sb = db[0, k]
        for t in range(1, dw.shape[0]):
            sw += dw[t, k]
            sb += db[t, k]
        gwb[0, k] = sw
        gwb[1, k] = sb


def _ln_backward(g, x, w, mean, inv, centred, nt, dx, dw, db, gwb):
    rows, d = x.shape
    for t in prange(nt):
        dwt = dw[t]
        dbt = db[t]
        dwt[:] = 0.0
        dbt[:] = 0.0
        for r in range(rows * t // nt, rows * (t + 1) // nt):
            xr = x[r]
            gr = g[r]
            dr = dx[r]
            mu = mean[r]
            istd = inv[r]
            head = x.dtype.type(mu)
            off = x.dtype.type(-(mu - np.float64(head)) * istd)
            i32 = x.dtype.type(istd)
            s_gw = 0.0
            s_gwx = 0.0
            for k in range(d):
                xh = (xr[k] - head) * i32 + off
                gk = gr[k]
                gw = gk * w[k]
                s_gw += np.float64(gw)
                s_gwx += np.float64(gw * xh)
                dwt[k] += np.float64(gk * xh)
                dbt[k] += np.float64(gk)
            mg = x.dtype.type(s_gw / d) if centred else x.dtype.type(0.0)
            mgx = x.dtype.type(s_gwx / d)
            for k in range(d):
                xh = (xr[k] - head) * i32 + off
                dr[k] = i32 * (gr[k] * w[k] - mg - xh * mgx)
    _merge_sums(dw, db, gwb)


def _gn_forward(x, w, b, groups, eps, nt, y, mean, inv):
    # x: (N * G, Cg, S); w, b: (C,)
    units, cg, s = x.shape
    m = cg * s
    for t in prange(nt):
        for u in range(units * t // nt, units * (t + 1) // nt):
            shift = np.float64(x[u, 0, 0])
            sa = 0.0
            sb = 0.0
            for c in range(cg):
                xr = x[u, c]
                for k in range(s):
                    v = np.float64(xr[k]) - shift
                    sa += v
                    sb += v * v
            mm = sa / m
            var = max(sb / m - mm * mm, 0.0)
            mu = shift + mm
            istd = 1.0 / np.sqrt(var + eps)
            mean[u] = mu
            inv[u] = istd
            head = x.dtype.type(mu)
            tail = mu - np.float64(head)
            c0 = (u % groups) * cg
            for c in range(cg):
                # y = (x - head) * (istd * w) + (b - tail * istd * w)
                sc = istd * np.float64(w[c0 + c])
                a = x.dtype.type(sc)
                bb = x.dtype.type(np.float64(b[c0 + c]) - tail * sc)
                xr = x[u, c]
                yr = y[u, c]
                for k in range(s):
                    yr[k] = (xr[k] - head) * a + bb


def _gn_backward(g, x, w, groups, mean, inv, nt, dx, dw, db, gwb):
    units, cg, s = x.shape
    m = cg * s
    for t in prange(nt):
        for c in range(dw.shape[1]):
            dw[t, c] = 0.0
            db[t, c] = 0.0
        for u in range(units * t // nt, units * (t + 1) // nt):
            mu = mean[u]
            istd = inv[u]
            head = x.dtype.type(mu)
            c0 = (u % groups) * cg
            # with xc = x - head (exact) and tail = mu - head: x_hat = (xc - tail) * istd
            tail = mu - np.float64(head)
            s_gw = 0.0
            s_gwx = 0.0
            for c in range(cg):
                wc = np.float64(w[c0 + c])
                sg = 0.0
                sgx = 0.0
                xr = x[u, c]
                gr = g[u, c]
                for k in range(s):
                    gv = np.float64(gr[k])
                    sg += gv
                    sgx += gv * np.float64(xr[k] - head)
                sgh = (sgx - tail * sg) * istd  # sum of g * x_hat over this channel's slice
                dw[t, c0 + c] += sgh
                db[t, c0 + c] += sg
                s_gw += wc * sg
                s_gwx += wc * sgh
            mg = s_gw / m
            mgx = s_gwx / m
            # dx = istd * (g*w - mg - x_hat * mgx) = istd * (w g + c3 (x - head)) + k, with
            # c3 = -istd * mgx; istd * c3 stays two factors (~1e-60 at 1e30, below float32)
            c3 = -istd * mgx
            i32 = x.dtype.type(istd)
            c3_32 = x.dtype.type(c3)
            k2 = x.dtype.type(-istd * mg - istd * c3 * tail)
            for c in range(cg):
                wc = x.dtype.type(w[c0 + c])
                xr = x[u, c]
                gr = g[u, c]
                dr = dx[u, c]
                for k in range(s):
                    dr[k] = i32 * (wc * gr[k] + c3_32 * (xr[k] - head)) + k2
    _merge_sums(dw, db, gwb)


def _bne_forward2(x, head, a, bb, nt, y):
    """Eval-mode batch norm on (N, C): y = (x - head) * a + bb, constants from the running stats."""
    n, c = x.shape
    for t in prange(nt):
        for i in range(n * t // nt, n * (t + 1) // nt):
            xr = x[i]
            yr = y[i]
            for j in range(c):
                yr[j] = (xr[j] - head[j]) * a[j] + bb[j]


def _bne_forward3(x, head, a, bb, nt, y):
    n, c, s = x.shape
    units = n * c
    for t in prange(nt):
        for u in range(units * t // nt, units * (t + 1) // nt):
            j = u % c
            xr = x[u // c, j]
            yr = y[u // c, j]
            h, aj, bj = head[j], a[j], bb[j]
            for k in range(s):
                yr[k] = (xr[k] - h) * aj + bj


def _bne_backward2(g, x, head, ga, nt, dx, sg, sgx):
    """dx = g * ga in the same pass as the per-thread sums of g and g * (x - head)."""
    n, c = x.shape
    for t in prange(nt):
        a1 = sg[t]
        a2 = sgx[t]
        for i in range(n * t // nt, n * (t + 1) // nt):
            xr = x[i]
            gr = g[i]
            dr = dx[i]
            for j in range(c):
                gv = gr[j]
                dr[j] = gv * ga[j]
                a1[j] += np.float64(gv)
                a2[j] += np.float64(gv) * np.float64(xr[j] - head[j])


def _bne_backward3(g, x, head, ga, nt, dx, sg, sgx):
    n, c, s = x.shape
    units = n * c
    for t in prange(nt):
        a1 = sg[t]
        a2 = sgx[t]
        for u in range(units * t // nt, units * (t + 1) // nt):
            j = u % c
            xr = x[u // c, j]
            gr = g[u // c, j]
            dr = dx[u // c, j]
            h, gj = head[j], ga[j]
            p = 0.0
            q = 0.0
            for k in range(s):
                gv = gr[k]
                dr[k] = gv * gj
                p += np.float64(gv)
                q += np.float64(gv) * np.float64(xr[k] - h)
            a1[j] += p
            a2[j] += q


def _running_stats(rm, rv, mean, var, keep, momentum, corr, out):
    """out = (keep * rm + momentum * mean, keep * rv + momentum * (var * corr)), in the buffers'
    dtype and order of operations: bit for bit what the reference's NumPy expressions give."""
    t = out.dtype.type
    k, m, c = t(keep), t(momentum), t(corr)  # NumPy casts a Python float operand so too
    for j in range(rm.shape[0]):
        out[0, j] = k * rm[j] + m * mean[j]
        out[1, j] = k * rv[j] + m * (var[j] * c)


_SOURCES: dict[str, tuple[Callable[..., Any], bool]] = {
    "bn_forward2": (_bn_forward2, True),
    "bn_forward3": (_bn_forward3, True),
    "bn_backward2": (_bn_backward2, True),
    "bn_backward3": (_bn_backward3, True),
    "ln_forward": (_ln_forward, True),
    "ln_backward": (_ln_backward, True),
    "gn_forward": (_gn_forward, True),
    "gn_backward": (_gn_backward, True),
    "bne_forward2": (_bne_forward2, False),
    "bne_forward3": (_bne_forward3, False),
    "bne_backward2": (_bne_backward2, True),
    "bne_backward3": (_bne_backward3, True),
    "running_stats": (_running_stats, False),
}


# --- the KERNELS table: same signatures as dualnorm.nn.functional --------------------------


def _shaped(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a.reshape(shape)``, or ``a`` when it has that shape already (a reshape costs ~0.7 µs)."""
    return a if a.shape == shape else a.reshape(shape)


def _bn_view(x3: np.ndarray) -> tuple[np.ndarray, str]:
    """(N, C, S) as (N, C) when S == 1 (loops along C), else unchanged; and the kernel suffix."""
    if x3.shape[2] == 1:
        return x3.reshape(x3.shape[0], x3.shape[1]), "2"
    return x3, "3"


def _units(xv: np.ndarray) -> int:
    return xv.shape[0] if xv.ndim == 2 else xv.shape[0] * xv.shape[1]


@writes_out
def batch_norm_train(
    B: Backend,
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    if not _use(x):
        return _npk.batch_norm_train(B, x, weight, bias, eps, out=out)
    y, hd, ctx = _bn_train(x, weight, bias, eps, out)
    return y, hd[1], hd[2], ctx


def batch_norm_train_tracked(
    B: Backend,
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    momentum: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
    # The running statistics' update inside the forward kernel: the separate update was 7 µs of
    # Python a step warm, ~50 µs cache-cold after a large layer, for a loop over C values.
    c, dt = x.shape[1], x.dtype
    if not (_small_layers and _use(x) and _vectors_of(running_mean, running_var, c, dt)):
        return _reference("batch_norm_train_tracked")(
            B, x, weight, bias, eps, running_mean, running_var, momentum
        )
    n = x.size // c
    # keep = 1 - momentum as the reference computes it: a float, or a 0-d array of dtype dt
    y, hd, ctx = _bn_train(x, weight, bias, eps, None, running_mean, running_var, 1 - momentum, momentum, n)
    return y, hd[1], hd[2], hd[3], hd[4], ctx


def _vectors_of(a: Any, b: Any, n: int, dt: np.dtype) -> bool:
    """``a`` and ``b`` are NumPy (n,) vectors of dtype ``dt`` (else the reference, whose NumPy would
    promote)."""
    shape = (n,)
    return (
        type(a) is np.ndarray
        and type(b) is np.ndarray
        and a.shape == shape
        and b.shape == shape
        and (a.dtype is dt or a.dtype == dt)
        and (b.dtype is dt or b.dtype == dt)
    )


_no_running: dict[Any, np.ndarray] = {}  # per dtype: the kernels' running statistics for "no update"


def _bn_train(
    x: np.ndarray,
    weight: Any,
    bias: Any,
    eps: float,
    out: Any,
    rm: Any = None,
    rv: Any = None,
    keep: Any = 0.0,
    momentum: Any = 0.0,
    n: int = 2,
) -> tuple[Any, ...]:
    """y, hd (head, mean, var, new running mean, new running var: rows of x's dtype) and the context;
    the running statistics are updated when ``rm`` is given, from a batch of ``n`` per channel."""
    c = x.shape[1]
    dt = x.dtype
    if x.ndim == 2 and c > 1:  # (N, C), the common case, without the reshapes (~1.5 µs)
        xv, nd = np.ascontiguousarray(x), "2"
    else:
        x3 = np.ascontiguousarray(x).reshape(x.shape[0], c, -1)
        if c == 1:  # one channel: reduce the whole array as one contiguous run
            x3 = x3.reshape(1, 1, -1) if x3.shape[2] == 1 else x3
        xv, nd = _bn_view(x3)
    nt = _threads(_units(xv), xv.size, 2)
    y = _array_like(xv) if out is None else _out_view(out, xv)
    st = np.empty((4, c))  # mean, var, 1/std, tail (float64)
    hd = np.empty((5, c), dt)
    if rm is None:  # no update: running statistics of no channels
        rm = rv = _no_running.get(dt)
        if rm is None:
            rm = rv = _no_running[dt] = np.empty(0, dt)
    _run(
        _BN_FORWARD[nd][nt > 1],
        xv,
        _affine(weight, c, 1.0, dt),
        _affine(bias, c, 0.0, dt),
        float(eps),
        nt,
        y,
        st,
        hd,
        rm,
        rv,
        float(keep),
        float(momentum),
        n / (n - 1) if n > 1 else 1.0,  # the unbiased variance's factor
    )
    return _shaped(y, x.shape), hd, (_TAG, xv, nd, st, hd, x.shape, nt)


_BN_FORWARD = {nd: _by_threads("bn_forward" + nd) for nd in "23"}  # [nd][nt > 1]
_BN_BACKWARD = {nd: _by_threads("bn_backward" + nd) for nd in "23"}
_BNE_FORWARD = {nd: _by_threads("bne_forward" + nd) for nd in "23"}
_BNE_BACKWARD = {nd: _by_threads("bne_backward" + nd) for nd in "23"}


def batch_norm_train_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if ctx[0] is not _TAG:
        return _npk.batch_norm_train_backward(B, grad_y, ctx, weight)
    _, xv, nd, st, hd, shape, nt = ctx
    g = _grad_like(grad_y, xv)
    nt = _threads_again(nt)
    dx = _array_like(xv)
    c = st.shape[1]
    gwb = np.empty((2, c), xv.dtype)
    _run(_BN_BACKWARD[nd][nt > 1], g, xv, _affine(weight, c, 1.0, xv.dtype), st, hd, nt, dx, gwb)
    return _shaped(dx, shape), gwb[0], gwb[1]


_fills: dict[tuple[int, float, Any], np.ndarray] = {}


def _out_view(out: np.ndarray | None, xv: np.ndarray) -> np.ndarray:
    """Where the kernel writes y: ``out`` (checked by F.check_out) seen as ``xv``'s shape when it is
    contiguous, so no new array is made; else a new array (the dispatcher copies it into ``out``)."""
    if out is not None and out.flags.c_contiguous:
        return out.reshape(xv.shape)
    return _array_like(xv)


# Outputs past 32 MiB: glibc maps each such block afresh (its reuse threshold stops at 32 MiB)
# and the OS hands it out zeroed, page by page, as the kernel first writes it. A few such arrays
# are kept and handed out again once nothing else refers to them, as PyTorch's caching allocator
# does.
# (Reference counts decide: CPython only.)
SPARE_MIN_BYTES = 1 << 25 if sys.implementation.name == "cpython" else 1 << 62
SPARE_MAX = 6  # arrays kept in all; release_spares() lets them go
_spares: list[np.ndarray] = []
_spares_lock = threading.Lock()


def _array_like(a: np.ndarray) -> np.ndarray:
    """An uninitialized C-contiguous array shaped as ``a``: a kept one that nobody else refers to
    (CPython's reference count: a caller's array, a view of it or a saved context all count), else new."""
    if a.nbytes < SPARE_MIN_BYTES:
        return np.empty(a.shape, a.dtype)  # (np.empty_like's dispatch costs ~0.8 µs more)
    with _spares_lock:
        for i in range(len(_spares)):
            spare = _spares[i]
            # references: the list's, ``spare``'s and getrefcount's argument: no one else's
            if spare.shape == a.shape and spare.dtype == a.dtype and sys.getrefcount(spare) == 3:
                _spares.append(_spares.pop(i))  # the most recently used last
                return spare
        new = np.empty(a.shape, a.dtype)
        _spares.append(new)
        if len(_spares) > SPARE_MAX:
            del _spares[0]
        return new


def release_spares() -> None:
    """Let go of the large output arrays kept for reuse."""
    with _spares_lock:
        _spares.clear()


def _affine(v: np.ndarray | None, n: int, fill: float, dt: np.dtype) -> np.ndarray:
    """The parameter as a contiguous ``dt`` vector; ones / zeros (cached; never written) when absent."""
    if v is None:
        key = (n, fill, dt)
        arr = _fills.get(key)
        if arr is None:
            arr = _fills[key] = np.full(n, fill, dt)
        return arr
    if v.dtype == dt and v.flags.c_contiguous and v.ndim == 1:
        return v
    return np.ascontiguousarray(v, dtype=dt).reshape(n)


def _rows_fwd(
    x2: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, centred: bool, out: np.ndarray | None = None
) -> tuple[Any, ...]:
    rows = x2.shape[0]
    nt = _threads(rows, x2.size)
    y2 = _array_like(x2) if out is None else _out_view(out, x2)
    stats = np.empty((2, rows))  # mean, 1/std
    mean, inv = stats[0], stats[1]  # (indexing: unpacking iterates, 1.8 µs against 0.6)
    _run(_LN_FORWARD[nt > 1], x2, w, b, float(eps), centred, nt, y2, mean, inv)
    return y2, mean, inv, nt


def _rows_bwd(
    g2: np.ndarray, x2: np.ndarray, w: np.ndarray, mean: Any, inv: Any, centred: bool, nt: int
) -> tuple[Any, ...]:
    d = x2.shape[1]
    nt = _threads_again(nt)
    dx2 = _array_like(x2)
    sums = np.empty((2, nt, d))  # the threads' dweight and dbias, in float64
    gwb = np.empty((2, d), x2.dtype)  # merged
    _run(_LN_BACKWARD[nt > 1], g2, x2, w, mean, inv, centred, nt, dx2, sums[0], sums[1], gwb)
    return dx2, gwb[0], gwb[1]


_LN_FORWARD = _by_threads("ln_forward")  # [nt > 1]
_LN_BACKWARD = _by_threads("ln_backward")
_GN_FORWARD = _by_threads("gn_forward")
_GN_BACKWARD = _by_threads("gn_backward")


def _as_rows(x: np.ndarray, k: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x`` as contiguous (rows, d) for its trailing ``k`` axes, and the trailing shape."""
    shape = x.shape
    if k == 1:
        trailing = shape[-1:]
        d = shape[-1]
    else:
        trailing = shape[len(shape) - k :]
        d = math.prod(trailing)
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return (x if len(shape) == 2 and k == 1 else x.reshape(-1, d)), trailing


@writes_out
def layer_norm(
    B: Backend,
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    axes: tuple[int, ...],
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    if not _use(x):
        return _npk.layer_norm(B, x, weight, bias, axes, eps, out=out)
    x2, trailing = _as_rows(x, len(axes))
    d, dt = x2.shape[1], x.dtype
    y2, mean, inv, nt = _rows_fwd(x2, _affine(weight, d, 1.0, dt), _affine(bias, d, 0.0, dt), eps, True, out)
    return _shaped(y2, x.shape), (_TAG, x2, mean, inv, x.shape, trailing, nt)


def layer_norm_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray | None, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if ctx[0] is not _TAG:
        return _npk.layer_norm_backward(B, grad_y, ctx, weight, axes)
    _, x2, mean, inv, shape, trailing, nt = ctx
    dt = x2.dtype
    g2 = _grad_like(grad_y, x2)
    dx2, dw, db = _rows_bwd(g2, x2, _affine(weight, x2.shape[1], 1.0, dt), mean, inv, True, nt)
    if len(trailing) > 1:
        dw, db = dw.reshape(trailing), db.reshape(trailing)
    return _shaped(dx2, shape), dw, db


def _grad_like(g: np.ndarray, xv: np.ndarray) -> np.ndarray:
    """The gradient as contiguous, of ``xv``'s dtype and shape (the forward's view of its input)."""
    if g.dtype is not xv.dtype or not g.flags.c_contiguous:
        g = np.ascontiguousarray(g, dtype=xv.dtype)
    return g if g.shape == xv.shape else g.reshape(xv.shape)


@writes_out
def group_norm(
    B: Backend,
    x: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    if not _use(x):
        return _npk.group_norm(B, x, num_groups, weight, bias, eps, out=out)
    n, c = x.shape[0], x.shape[1]
    dt = x.dtype
    x3 = np.ascontiguousarray(x).reshape(n * num_groups, c // num_groups, -1)
    units = x3.shape[0]
    nt = _threads(units, x3.size)
    y3 = _array_like(x3) if out is None else _out_view(out, x3)
    mean = np.empty(units)
    inv = np.empty(units)
    w, b = _affine(weight, c, 1.0, dt), _affine(bias, c, 0.0, dt)
    _run(_GN_FORWARD[nt > 1], x3, w, b, num_groups, float(eps), nt, y3, mean, inv)
    return _shaped(y3, x.shape), (_TAG, x3, num_groups, mean, inv, x.shape, nt)


def group_norm_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if ctx[0] is not _TAG:
        return _npk.group_norm_backward(B, grad_y, ctx, weight)
    _, x3, num_groups, mean, inv, shape, nt = ctx
    c = shape[1]
    dt = x3.dtype
    g3 = _grad_like(grad_y, x3)
    nt = _threads_again(nt)
    dx3 = _array_like(x3)
    sums = np.empty((2, nt, c))  # the threads' dweight and dbias, in float64
    gwb = np.empty((2, c), dt)  # merged
    w = _affine(weight, c, 1.0, dt)
    _run(_GN_BACKWARD[nt > 1], g3, x3, w, num_groups, mean, inv, nt, dx3, sums[0], sums[1], gwb)
    return _shaped(dx3, shape), gwb[0], gwb[1]


@writes_out
def rms_norm(
    B: Backend,
    x: np.ndarray,
    weight: np.ndarray | None,
    axes: tuple[int, ...],
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    if not _use(x):
        from dualnorm.nn.functional import rms_norm as reference

        return reference.reference(B, x, weight, axes, eps)
    x2, trailing = _as_rows(x, len(axes))
    d, dt = x2.shape[1], x.dtype
    y2, mean, inv, nt = _rows_fwd(x2, _affine(weight, d, 1.0, dt), _affine(None, d, 0.0, dt), eps, False, out)
    return _shaped(y2, x.shape), (_TAG, x2, mean, inv, x.shape, trailing, nt)


def rms_norm_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray | None, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    if ctx[0] is not _TAG:
        from dualnorm.nn.functional import rms_norm_backward as reference

        return reference.reference(B, grad_y, ctx, weight, axes)
    _, x2, mean, inv, shape, trailing, nt = ctx
    dt = x2.dtype
    g2 = _grad_like(grad_y, x2)
    dx2, dw, _ = _rows_bwd(g2, x2, _affine(weight, x2.shape[1], 1.0, dt), mean, inv, False, nt)
    return _shaped(dx2, shape), (dw.reshape(trailing) if len(trailing) > 1 else dw)


@writes_out
def batch_norm_eval(
    B: Backend,
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    if not _use(x):
        from dualnorm.nn.functional import batch_norm_eval as reference

        return reference.reference(B, x, weight, bias, running_mean, running_var, eps)
    n, c = x.shape[0], x.shape[1]
    dt = x.dtype
    x3 = np.ascontiguousarray(x).reshape(n, c, -1)
    if c == 1:  # one channel: one contiguous run
        x3 = x3.reshape(1, 1, -1)
    xv, nd = _bn_view(x3)
    nt = _threads(_units(xv), x3.size)
    # Constants in float64; x - head is exact near the mean, the tail folds into the shift.
    mean = np.asarray(running_mean, dtype=np.float64).reshape(c)
    inv = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64).reshape(c) + eps)
    head = mean.astype(dt)
    tail = mean - head
    a = inv * (1.0 if weight is None else np.asarray(weight, dtype=np.float64).reshape(c))
    bb = (0.0 if bias is None else np.asarray(bias, dtype=np.float64).reshape(c)) - tail * a
    y = _out_view(out, xv)
    _run(_BNE_FORWARD[nd][nt > 1], xv, head, a.astype(dt), bb.astype(dt), nt, y)
    return _shaped(y, x.shape), (_TAG, xv, nd, inv, tail, head, x.shape, nt)


def batch_norm_eval_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if ctx[0] is not _TAG:
        from dualnorm.nn.functional import batch_norm_eval_backward as reference

        return reference.reference(B, grad_y, ctx, weight)
    _, xv, nd, inv, tail, head, shape, nt = ctx
    dt = xv.dtype
    c = inv.shape[0]
    g = _grad_like(grad_y, xv)
    nt = _threads_again(nt)
    ga = inv * (1.0 if weight is None else np.asarray(weight, dtype=np.float64).reshape(c))
    dx = _array_like(xv)
    sg = np.zeros((nt, c))
    sgx = np.zeros((nt, c))
    _run(_BNE_BACKWARD[nd][nt > 1], g, xv, head, ga.astype(dt), nt, dx, sg, sgx)
    sum_g = sg.sum(axis=0)
    grad_w = inv * (sgx.sum(axis=0) - tail * sum_g)  # sum of g * x_hat
    return _shaped(dx, shape), grad_w.astype(dt), sum_g.astype(dt)


def update_running_stats(
    B: Backend,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    momentum: Any,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    # One compiled loop instead of eight NumPy calls (~5 µs against ~15 µs a step), once numba is
    # loaded; the reference otherwise (importing numba for this would cost more than it saves).
    dt = running_mean.dtype
    c = running_mean.shape[0] if running_mean.ndim == 1 else -1
    vectors = _vectors_of(running_mean, running_var, c, dt) and _vectors_of(mean, var, c, dt)
    if not (_small_layers and dt.char in "fd" and vectors):
        return _reference("update_running_stats")(B, running_mean, running_var, mean, var, momentum, n)
    keep = 1 - momentum  # as the reference computes it: a float, or a 0-d array of dtype dt
    out = np.empty((2, running_mean.shape[0]), dt)
    _run(
        "running_stats:serial",
        running_mean,
        running_var,
        mean,
        var,
        float(keep),
        float(momentum),
        n / max(n - 1, 1),
        out,
    )
    return out[0], out[1]


def _reference(name: str) -> Callable[..., Any]:
    from dualnorm.nn import functional

    return getattr(functional, name).reference


KERNELS = {
    "batch_norm_train": batch_norm_train,
    "batch_norm_train_backward": batch_norm_train_backward,
    "batch_norm_eval": batch_norm_eval,
    "batch_norm_eval_backward": batch_norm_eval_backward,
    "layer_norm": layer_norm,
    "layer_norm_backward": layer_norm_backward,
    "group_norm": group_norm,
    "group_norm_backward": group_norm_backward,
    "rms_norm": rms_norm,
    "rms_norm_backward": rms_norm_backward,
    "update_running_stats": update_running_stats,
    "batch_norm_train_tracked": batch_norm_train_tracked,
}
