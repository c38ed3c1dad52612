"""Fast paths for the NumPy backend (registered into ``backend.kernels``).

Normalization is a few passes over memory; NumPy, left alone, makes many more (one
per operator, each allocating a full-size temporary) and reduces (N, C, H, W) over
non-contiguous axes. These kernels compute the same numbers as
:mod:`dualnorm.nn.functional` (``tests/kernels`` pins them) but:

* walk the data in cache-sized blocks (``CHUNK`` elements): every element-wise step
  of a block runs while the block is in L2, so memory sees about one read per input
  and one write per output per pass;
* reduce with BLAS (``block @ ones``, ``np.vecdot``) over contiguous rows;
* split the blocks over a few threads (NumPy and BLAS release the GIL);
* keep the input and the per-channel statistics for the backward instead of a
  full-size ``x_hat``, and rebuild ``x_hat`` block by block there.

Stability is that of the reference: each block is centred on its own mean (a
corrected two-pass in cache) and blocks are merged with Chan et al.'s pairwise
formula in float64. The mean is split into a float32 head and a float64 tail:
``x - head`` is exact for data near the mean, and the tail is folded into the
affine constants, so float32 inputs like 1e4 + N(0, 1e-2) normalize correctly.

Threads: ``DUALNORM_NUM_THREADS`` (default: the CPU count, at most 8), or
:func:`set_num_threads`. Arrays below ``PARALLEL_MIN`` elements use one thread.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from dualnorm.backends.base import Backend
from dualnorm.nn import functional as F
from dualnorm.stats import chan_merge

CHUNK = 1 << 17  # elements per block: 256 KiB of float32, comfortably inside L2
PARALLEL_MIN = 1 << 18  # below this many elements, threads cost more than they save

_num_threads = int(os.environ.get("DUALNORM_NUM_THREADS", "0") or 0) or min(os.cpu_count() or 1, 8)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_local = threading.local()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for large arrays (1 = no threads)."""
    global _num_threads, _pool
    with _pool_lock:
        _num_threads = max(1, int(n))
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def get_num_threads() -> int:
    return _num_threads


def _parallel(fn: Callable[[int, int], Any], units: int, elements: int) -> list[Any]:
    """Run ``fn(lo, hi)`` over contiguous parts of ``range(units)``; results in order."""
    global _pool
    parts = min(_num_threads, units) if elements >= PARALLEL_MIN else 1
    if parts <= 1:
        return [fn(0, units)]
    bounds = [units * i // parts for i in range(parts + 1)]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_num_threads, thread_name_prefix="dualnorm")
        pool = _pool
    # np.errstate is per thread: give the workers the caller's, so np.errstate(all="ignore")
    # around a diverging run silences the parts computed here too.
    caller_errstate = np.geterr()

    def in_caller_errstate(lo: int, hi: int) -> Any:
        with np.errstate(**caller_errstate):
            return fn(lo, hi)

    futures = [pool.submit(in_caller_errstate, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    first = fn(bounds[0], bounds[1])  # the calling thread does a share too
    return [first] + [f.result() for f in futures]


def _scratch(size: int, dtype: np.dtype, slot: int = 0) -> np.ndarray:
    """A per-thread reusable 1-D buffer of at least ``size`` elements."""
    key = (slot, dtype)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(max(size, CHUNK), dtype)
    return buf[:size]


def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    cache = getattr(_local, "ones", None)
    if cache is None:
        cache = _local.ones = {}
    v = cache.get((n, dtype))
    if v is None:
        v = cache[(n, dtype)] = np.ones(n, dtype)
    return v


# A float32 BLAS sum or dot drifts on long rows (7e-6 relative at 4M elements, 5e-5 in
# layer norm over 9.4M): rows longer than SEG are summed in float32 segments of SEG
# elements (accurate, still BLAS), and the segments' sums are added in float64.
SEG = 1 << 12


def _rowsum(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Per-row sums of ``a`` (or of ``a * b``) for 2-D contiguous rows, as float64 (rows,)."""
    rows, length = a.shape
    if length <= SEG:
        part = a @ _ones(length, a.dtype) if b is None else np.vecdot(a, b)
        return part.astype(np.float64)
    full = length - length % SEG

    def segments(v: np.ndarray) -> np.ndarray:  # (rows, full // SEG, SEG), a view
        step = v.strides[1]
        return np.lib.stride_tricks.as_strided(v, (rows, full // SEG, SEG), (v.strides[0], SEG * step, step))

    if b is None:
        head = np.vecdot(segments(a), _ones(SEG, a.dtype))
        tail = a[:, full:].sum(axis=1, dtype=np.float64)
    else:
        head = np.vecdot(segments(a), segments(b))
        tail = np.vecdot(a[:, full:].astype(np.float64), b[:, full:].astype(np.float64))
    return head.sum(axis=1, dtype=np.float64) + tail


def _out_view(out: np.ndarray | None, xv: np.ndarray) -> np.ndarray:
    """Where a forward writes y: ``out`` (checked by F.check_out) seen as ``xv``'s shape when it is
    contiguous, so no new array is made; else a new array (the dispatcher copies it into ``out``)."""
    if out is not None and out.flags.c_contiguous:
        return out.reshape(xv.shape)
    return np.empty_like(xv)


def _split_mean(mean: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean -> (head in ``dtype``, float64 tail) with head + tail == mean."""
    head = mean.astype(dtype)
    return head, mean - head


# --- batch norm: statistics per channel over (N, *) of channels-first input ---------------
#
# The input is viewed as (N, C, S) (S = 1 for (N, C)); blocks are runs of samples.


def _bn_view(x: np.ndarray) -> np.ndarray:
    n, c = x.shape[0], x.shape[1]
    return np.ascontiguousarray(x).reshape(n, c, -1)


def _bn_block(n: int, c: int, s: int) -> int:
    return max(1, CHUNK // max(1, c * s))


def _colsum(block: np.ndarray, ones_k: np.ndarray, ones_s: np.ndarray) -> np.ndarray:
    """Per-channel sums of a (k, C, S) block, float32 BLAS, returned as float64 (C,)."""
    k, c, s = block.shape
    if s == 1:
        sums = (ones_k @ block.reshape(k, c)).astype(np.float64)
    elif s > SEG:
        sums = _rowsum(block.reshape(k * c, s)).reshape(k, c).sum(axis=0)
    else:
        sums = (block.reshape(k * c, s) @ ones_s).reshape(k, c).sum(axis=0, dtype=np.float64)
    if np.isinf(sums).any():  # a float32 sum past 3.4e38 (data near 3e38): the float64 sum is finite
        sums = block.sum(axis=(0, 2), dtype=np.float64)
    return sums


def _coldot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-channel sums of a*b over a (k, C, S) block, as float64 (C,)."""
    k, c, s = a.shape
    if s == 1:
        return np.einsum("ij,ij->j", a.reshape(k, c), b.reshape(k, c)).astype(np.float64)
    if s > SEG:
        return _rowsum(a.reshape(k * c, s), b.reshape(k * c, s)).reshape(k, c).sum(axis=0)
    return np.vecdot(a.reshape(k * c, s), b.reshape(k * c, s)).reshape(k, c).sum(axis=0, dtype=np.float64)


FOLD_LIMIT = 64.0  # |mean| / std below which x * a + b replaces (x - mean) * a + b
# The backward's sums fold only near zero: sum(g * x) - mean * sum(g) cancels the mean's share
# of a float32 dot, an error |mean| / std times that of sum(g * (x - mean)) (at mean -50, std 1:
# weight gradients 20-60x further from float64 than PyTorch's).
BACKWARD_FOLD_LIMIT = 1.0


def _can_fold(head: np.ndarray, inv_std: np.ndarray, limit: float = FOLD_LIMIT) -> bool:
    """True when every channel's mean is within ``limit`` standard deviations of zero.

    Then ``x * a - mean * a`` loses at most log2(limit) bits to cancellation
    (relative error ~ 64 * 6e-8 in float32 at FOLD_LIMIT), so the subtraction can be folded into
    the affine constants. Data far from zero (1e4 + noise) keep the exact path.
    """
    return bool((np.abs(head.astype(np.float64)) * inv_std <= limit).all())


def _chan_view(x3: np.ndarray) -> np.ndarray:
    """(N, C, S) as (N, C) when S == 1 (inner loops run along C), else unchanged."""
    return x3.reshape(x3.shape[0], x3.shape[1]) if x3.shape[2] == 1 else x3


def _chan_const(v: np.ndarray, dt: np.dtype, s: int) -> np.ndarray:
    """A per-channel constant shaped to broadcast against :func:`_chan_view`."""
    v = np.asarray(v).astype(dt)
    return v if s == 1 else v[:, None]


def _bn_stats(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance (float64) of (N, C, S) ``x3``."""
    n, c, s = x3.shape
    dt = x3.dtype
    step = _bn_block(n, c, s)

    def part(lo: int, hi: int) -> tuple[float, np.ndarray, np.ndarray]:
        ones_s, count = _ones(s, dt), 0.0
        mean = np.zeros(c)
        m2 = np.zeros(c)
        for i in range(lo, hi, step):
            block = x3[i : min(i + step, hi)]
            k = block.shape[0]
            nb = float(k * s)
            ones_k = _ones(k, dt)
            m0 = (_colsum(block, ones_k, ones_s) / nb).astype(dt)
            d = _scratch(block.size, dt).reshape(block.shape)
            np.subtract(_chan_view(block), _chan_const(m0, dt, s), out=_chan_view(d))
            sd = _colsum(d, ones_k, ones_s)
            bmean = m0 + sd / nb
            bm2 = np.maximum(_coldot(d, d) - sd * sd / nb, 0.0)
            count, mean, m2 = chan_merge((count, mean, m2), (nb, bmean, bm2))
        return count, mean, m2

    count, mean, m2 = functools.reduce(chan_merge, _parallel(part, n, x3.size))
    return _in_float64_where_float32_overflowed(x3, mean, m2 / count)


def _in_float64_where_float32_overflowed(
    x3: np.ndarray, mean: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Channels of (N, C, S) ``x3`` whose float32 passes overflowed get their mean and variance again
    in float64, where they are finite: squares past 3.4e38 (|x - mean| > 1.8e19, e.g. data at 1e30:
    1 / std is then representable, 1e-30, and x_hat is not 0), and deviations past it (data spread
    across -3e38..3e38: mean -inf or NaN). A channel holding inf or NaN gets what float64 gives
    (mean +-inf or NaN, variance NaN), as PyTorch. Costs nothing where nothing overflowed."""
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(var)))
    if bad.size:
        xb = x3[:, bad, :].astype(np.float64)
        mean, var = mean.copy(), var.copy()
        mean[bad] = xb.mean(axis=(0, 2))
        var[bad] = xb.var(axis=(0, 2))
    return mean, var


def _small_2d(x: np.ndarray) -> bool:
    """(N, C) input that is one block on one thread: the small path below (the demos' layers)."""
    return x.ndim == 2 and x.shape[0] <= _bn_block(x.shape[0], x.shape[1], 1) and x.size < PARALLEL_MIN


def _bn_constants(
    mean: np.ndarray, var: np.ndarray, weight: Any, bias: Any, eps: float, dt: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Per-channel float64 constants of the batch-norm forward: (inv_std, head, tail, a, b, fold).

    y = (x - head - tail) * inv_std * w + beta = (x - head) * a + b, with b = beta - tail * a;
    when ``fold``, y = x * a + b (b then also absorbs head * a): one operation fewer, exact
    enough near zero.
    """
    inv_std = 1.0 / np.sqrt(var + eps)
    head, tail = _split_mean(mean, dt)
    a = inv_std if weight is None else inv_std * weight.astype(np.float64)
    b = -tail * a if bias is None else bias.astype(np.float64) - tail * a
    fold = _can_fold(head, inv_std)
    if fold:
        b = b - head.astype(np.float64) * a
    return inv_std, head, tail, a, b, fold


def _bn_train_small(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """:func:`batch_norm_train` on one (N, C) block: the same operations in the same order
    (bit for bit the same results), without the blocking and threading machinery, whose
    Python overhead dominates at (100, 100)."""
    x2 = np.ascontiguousarray(x)
    n, c = x2.shape
    dt = x2.dtype
    nb = float(n)
    ones_k = _ones(n, dt)
    m0 = (_colsum(x2.reshape(n, c, 1), ones_k, ones_k) / nb).astype(dt)
    d = _scratch(x2.size, dt).reshape(n, c)
    np.subtract(x2, m0, out=d)
    sd = _colsum(d.reshape(n, c, 1), ones_k, ones_k)
    bmean = m0 + sd / nb
    bm2 = np.maximum(np.einsum("ij,ij->j", d, d).astype(np.float64) - sd * sd / nb, 0.0)
    count, mean, m2 = chan_merge((0.0, np.zeros(c), np.zeros(c)), (nb, bmean, bm2))
    mean, var = _in_float64_where_float32_overflowed(x2.reshape(n, c, 1), mean, m2 / count)
    inv_std, head, tail, a, b, fold = _bn_constants(mean, var, weight, bias, eps, dt)
    y = _out_view(out, x2)
    if fold:
        np.multiply(x2, a.astype(dt), out=y)
    else:
        np.subtract(x2, head, out=y)
        np.multiply(y, a.astype(dt), out=y)
    np.add(y, b.astype(dt), out=y)
    ctx = (x2.reshape(n, c, 1), head, tail, inv_std, x.shape)
    return y, mean.astype(dt), var.astype(dt), ctx


@F.writes_out
def batch_norm_train(
    B: Backend,
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    if _small_2d(x):
        return _bn_train_small(x, weight, bias, eps, out)
    x3 = _bn_view(x)
    n, c, s = x3.shape
    dt = x3.dtype
    mean, var = _bn_stats(x3)
    inv_std, head, tail, a, b, fold = _bn_constants(mean, var, weight, bias, eps, dt)
    xv, yv = _chan_view(x3), _chan_view(_out_view(out, x3))
    a32, b32, head_b = _chan_const(a, dt, s), _chan_const(b, dt, s), _chan_const(head, dt, s)
    y3 = yv.reshape(x3.shape)
    step = _bn_block(n, c, s)

    def part(lo: int, hi: int) -> None:
        for i in range(lo, hi, step):
            j = min(i + step, hi)
            out = yv[i:j]
            if fold:
                np.multiply(xv[i:j], a32, out=out)
            else:
                np.subtract(xv[i:j], head_b, out=out)
                np.multiply(out, a32, out=out)
            np.add(out, b32, out=out)

    _parallel(part, n, x3.size)
    ctx = (x3, head, tail, inv_std, x.shape)
    return y3.reshape(x.shape), mean.astype(dt), var.astype(dt), ctx


def batch_norm_train_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x3, head, tail, inv_std, shape = ctx
    n, c, s = x3.shape
    dt = x3.dtype
    if len(shape) == 2 and _small_2d(x3.reshape(n, c)):
        return _bn_train_backward_small(grad_y, x3.reshape(n, c), head, tail, inv_std, weight)
    g3 = np.ascontiguousarray(grad_y, dtype=dt).reshape(n, c, s)
    step = _bn_block(n, c, s)
    fold = _can_fold(head, inv_std, BACKWARD_FOLD_LIMIT)
    head_b = head[:, None]

    def sums(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        ones_s = _ones(s, dt)
        sg, sgt = np.zeros(c), np.zeros(c)
        for i in range(lo, hi, step):
            j = min(i + step, hi)
            gb = g3[i:j]
            sg += _colsum(gb, _ones(j - i, dt), ones_s)
            if fold:  # sum of g*x directly; the mean is removed below
                sgt += _coldot(gb, x3[i:j])
            else:
                t = _scratch(gb.size, dt).reshape(gb.shape)
                np.subtract(x3[i:j], head_b, out=t)
                sgt += _coldot(gb, t)
        return sg, sgt

    parts = _parallel(sums, n, x3.size)
    sum_g = sum(p[0] for p in parts)
    sum_gt = sum(p[1] for p in parts)
    m = float(n * s)
    shift = head.astype(np.float64) + tail if fold else tail
    sum_gc = sum_gt - shift * sum_g  # sum of g * (x - mean)
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    a = w * inv_std
    mean_gxhat = inv_std * sum_gc / m
    # dx = a * (g - mean(g) - x_hat * mean(g x_hat)) = a * (g + c2 * (x - head)) + k; a * c2 stays
    # two factors: at 1e30 it is ~1e-60, below float32, and its term would vanish
    c2 = -inv_std * mean_gxhat
    k = -a * (sum_g / m) - a * c2 * tail
    if fold:  # = a * (g + c2 * x) + (k - a * c2 * head)
        k = k - a * c2 * head.astype(np.float64)
    gv, xv = _chan_view(g3), _chan_view(x3)
    dxv = _chan_view(np.empty_like(x3))
    a32, c2_32, k32, head_c = (_chan_const(v, dt, s) for v in (a, c2, k, head))
    dx3 = dxv.reshape(x3.shape)

    def apply(lo: int, hi: int) -> None:
        for i in range(lo, hi, step):
            j = min(i + step, hi)
            out = dxv[i:j]
            t = _scratch(out.size, dt).reshape(out.shape)
            if fold:
                np.multiply(xv[i:j], c2_32, out=t)
            else:
                np.subtract(xv[i:j], head_c, out=t)
                np.multiply(t, c2_32, out=t)
            np.add(gv[i:j], t, out=out)
            np.multiply(out, a32, out=out)
            np.add(out, k32, out=out)

    _parallel(apply, n, x3.size)
    grad_w = (inv_std * sum_gc).astype(dt)
    return dx3.reshape(shape), grad_w, sum_g.astype(dt)


def _bn_train_backward_small(
    grad_y: np.ndarray,
    x2: np.ndarray,
    head: np.ndarray,
    tail: np.ndarray,
    inv_std: np.ndarray,
    weight: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`batch_norm_train_backward` on one (N, C) block, operation for operation."""
    n, c = x2.shape
    dt = x2.dtype
    g2 = np.ascontiguousarray(grad_y, dtype=dt).reshape(n, c)
    fold = _can_fold(head, inv_std, BACKWARD_FOLD_LIMIT)
    sg, sgt = np.zeros(c), np.zeros(c)
    sg += (_ones(n, dt) @ g2).astype(np.float64)
    if fold:
        sgt += np.einsum("ij,ij->j", g2, x2).astype(np.float64)
    else:
        t = _scratch(g2.size, dt).reshape(n, c)
        np.subtract(x2, head, out=t)
        sgt += np.einsum("ij,ij->j", g2, t).astype(np.float64)
    sum_g = sum((sg,))
    sum_gt = sum((sgt,))
    m = float(n)
    shift = head.astype(np.float64) + tail if fold else tail
    sum_gc = sum_gt - shift * sum_g
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    a = w * inv_std
    mean_gxhat = inv_std * sum_gc / m
    c2 = -inv_std * mean_gxhat
    k = -a * (sum_g / m) - a * c2 * tail
    if fold:
        k = k - a * c2 * head.astype(np.float64)
    dx = np.empty_like(x2)
    t = _scratch(dx.size, dt).reshape(n, c)
    if fold:
        np.multiply(x2, c2.astype(dt), out=t)
    else:
        np.subtract(x2, head.astype(dt), out=t)
        np.multiply(t, c2.astype(dt), out=t)
    np.add(g2, t, out=dx)
    np.multiply(dx, a.astype(dt), out=dx)
    np.add(dx, k.astype(dt), out=dx)
    grad_w = (inv_std * sum_gc).astype(dt)
    return dx, grad_w, sum_g.astype(dt)


# --- row norms: statistics per row of a (rows, D) view (layer norm, group norm) -----------
#
# Blocks are runs of "units" (layer norm: one row; group norm: one sample = G rows), so
# every statistic is complete inside a block and the whole forward (and backward) of a
# block happens in cache: one read of x, one write of y.


def _rows_forward(
    x2: np.ndarray,
    rows_per_unit: int,
    affine_shape: tuple[int, ...],
    w: np.ndarray | None,
    b: np.ndarray | None,
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x2: (units, U) contiguous. Returns y2 (in ``out`` when given), head, tail, inv_std (per row)."""
    units, size = x2.shape
    dt = x2.dtype
    d_len = size // rows_per_unit
    rows = units * rows_per_unit
    head = np.empty(rows, dt)
    tail = np.empty(rows)
    inv = np.empty(rows)
    y2 = _out_view(out, x2)
    step = max(1, CHUNK // size)

    def part(lo: int, hi: int) -> None:
        for i in range(lo, hi, step):
            j = min(i + step, hi)
            r0, r1 = i * rows_per_unit, j * rows_per_unit
            xv = x2[i:j].reshape(r1 - r0, d_len)
            d = y2[i:j].reshape(r1 - r0, d_len)  # work in the output block while it is in cache
            m0 = (_rowsum(xv) * (1.0 / d_len)).astype(dt)
            np.subtract(xv, m0[:, None], out=d)
            sd = _rowsum(d)
            corr = sd / d_len
            var = np.maximum(_rowsum(d, d) / d_len - corr * corr, 0.0)
            if np.isinf(var).any():  # float32 squares past 3.4e38 (data at 1e30): those rows in float64
                bad = np.flatnonzero(np.isinf(var))
                var[bad] = xv[bad].astype(np.float64).var(axis=1)
            istd = 1.0 / np.sqrt(var + eps)
            mean = m0 + corr
            h = mean.astype(dt)
            head[r0:r1] = h
            tail[r0:r1] = mean - h
            inv[r0:r1] = istd
            np.subtract(d, corr.astype(dt)[:, None], out=d)
            np.multiply(d, istd.astype(dt)[:, None], out=d)
            if w is not None:
                yv = y2[i:j].reshape((j - i, *affine_shape))
                np.multiply(yv, w, out=yv)
                if b is not None:
                    np.add(yv, b, out=yv)
            elif b is not None:
                yv = y2[i:j].reshape((j - i, *affine_shape))
                np.add(yv, b, out=yv)

    _parallel(part, units, x2.size)
    return y2, head, tail, inv


def _rows_backward(
    x2: np.ndarray,
    g2: np.ndarray,
    rows_per_unit: int,
    affine_shape: tuple[int, ...],
    w: np.ndarray | None,
    head: np.ndarray,
    tail: np.ndarray,
    inv: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns dx2 and float64 sums of g * x_hat and g over the units (shape ``affine_shape``)."""
    units, size = x2.shape
    dt = x2.dtype
    d_len = size // rows_per_unit
    dx2 = np.empty_like(x2)
    step = max(1, CHUNK // size)
    head32, tail32, inv32 = head, tail.astype(dt), inv.astype(dt)

    def part(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        sgx = np.zeros(affine_shape)
        sg = np.zeros(affine_shape)
        for i in range(lo, hi, step):
            j = min(i + step, hi)
            r0, r1 = i * rows_per_unit, j * rows_per_unit
            n_rows = r1 - r0
            xv = x2[i:j].reshape(n_rows, d_len)
            gv = g2[i:j].reshape(n_rows, d_len)
            xh = _scratch(n_rows * d_len, dt, 0).reshape(n_rows, d_len)
            np.subtract(xv, head32[r0:r1, None], out=xh)
            np.subtract(xh, tail32[r0:r1, None], out=xh)
            np.multiply(xh, inv32[r0:r1, None], out=xh)
            ga = (j - i, *affine_shape)
            gw = _scratch(n_rows * d_len, dt, 1).reshape(n_rows, d_len)
            prod = gw.reshape(ga)
            np.multiply(gv.reshape(ga), xh.reshape(ga), out=prod)
            sgx += prod.sum(axis=0, dtype=np.float64)
            sg += gv.reshape(ga).sum(axis=0, dtype=np.float64)
            if w is not None:
                np.multiply(gv.reshape(ga), w, out=prod)
            else:
                np.copyto(gw, gv)
            mg = (_rowsum(gw) * (1.0 / d_len)).astype(dt)
            mgx = (_rowsum(gw, xh) * (1.0 / d_len)).astype(dt)
            out = dx2[i:j].reshape(n_rows, d_len)
            np.multiply(xh, mgx[:, None], out=xh)
            np.subtract(gw, xh, out=out)
            np.subtract(out, mg[:, None], out=out)
            np.multiply(out, inv32[r0:r1, None], out=out)
        return sgx, sg

    parts = _parallel(part, units, x2.size)
    return dx2, sum(p[0] for p in parts), sum(p[1] for p in parts)


@F.writes_out
def layer_norm(
    B: Backend,
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    axes: tuple[int, ...],
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    trailing = tuple(x.shape[x.ndim - len(axes) :])
    d_len = int(np.prod(trailing))
    x2 = np.ascontiguousarray(x).reshape(-1, d_len)
    w = None if weight is None else weight.reshape(d_len).astype(x2.dtype, copy=False)
    b = None if bias is None else bias.reshape(d_len).astype(x2.dtype, copy=False)
    y2, head, tail, inv = _rows_forward(x2, 1, (d_len,), w, b, eps, out)
    return y2.reshape(x.shape), (x2, head, tail, inv, x.shape, trailing)


def layer_norm_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray | None, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x2, head, tail, inv, shape, trailing = ctx
    d_len = x2.shape[1]
    g2 = np.ascontiguousarray(grad_y, dtype=x2.dtype).reshape(x2.shape)
    w = None if weight is None else weight.reshape(d_len).astype(x2.dtype, copy=False)
    dx2, sgx, sg = _rows_backward(x2, g2, 1, (d_len,), w, head, tail, inv)
    dt = x2.dtype
    return dx2.reshape(shape), sgx.astype(dt).reshape(trailing), sg.astype(dt).reshape(trailing)


@F.writes_out
def group_norm(
    B: Backend,
    x: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    n, c = x.shape[0], x.shape[1]
    x2 = np.ascontiguousarray(x).reshape(n, -1)
    s = x2.shape[1] // c
    dt = x2.dtype
    w = None if weight is None else weight.astype(dt, copy=False).reshape(c, 1)
    b = None if bias is None else bias.astype(dt, copy=False).reshape(c, 1)
    y2, head, tail, inv = _rows_forward(x2, num_groups, (c, s), w, b, eps, out)
    return y2.reshape(x.shape), (x2, num_groups, head, tail, inv, x.shape)


def group_norm_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x2, num_groups, head, tail, inv, shape = ctx
    c = shape[1]
    s = x2.shape[1] // c
    dt = x2.dtype
    g2 = np.ascontiguousarray(grad_y, dtype=dt).reshape(x2.shape)
    w = None if weight is None else weight.astype(dt, copy=False).reshape(c, 1)
    dx2, sgx, sg = _rows_backward(x2, g2, num_groups, (c, s), w, head, tail, inv)
    return dx2.reshape(shape), sgx.sum(axis=1).astype(dt), sg.sum(axis=1).astype(dt)


# --- pooling: the common non-overlapping MaxPool2d(2) ----------------------------------------
#
# Viewed as (N, C, H/2, 2, W/2, 2), each window's four places are four strided views; the max
# is three element-wise maxima of them (a reduction over the two size-2 axes is 15x slower in
# NumPy). The backward rebuilds "first of tied maxima" from the input and the output: the
# gradient goes to the first place (row by row) equal to the max. Any other geometry, indices,
# or a NaN (whose winner is the last NaN, as PyTorch scans) goes to the reference.


class _MaxPool2x2Context(NamedTuple):
    x: np.ndarray  # the input, cropped to whole windows
    y: np.ndarray
    in_shape: tuple[int, ...]


def _quarters(v: np.ndarray) -> list[np.ndarray]:
    """The four places of every 2x2 window of (N, C, 2h, 2w) ``v``, in PyTorch's scan order."""
    n, c, h, w = v.shape
    six = v.reshape(n, c, h // 2, 2, w // 2, 2)
    return [six[:, :, :, i, :, j] for i in (0, 1) for j in (0, 1)]


def max_pool2d(
    B: Backend,
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    return_indices: bool = False,
) -> tuple[np.ndarray, Any, Any]:
    h, w = x.shape[2], x.shape[3]
    common = kernel == stride == (2, 2) and padding == (0, 0) and dilation == (1, 1)
    if not common or return_indices or tuple(out_hw) != (h // 2, w // 2):
        return F.max_pool2d.reference(B, x, kernel, stride, padding, dilation, out_hw, return_indices)
    whole = np.ascontiguousarray(x[:, :, : 2 * out_hw[0], : 2 * out_hw[1]])
    y = np.empty((x.shape[0], x.shape[1], *out_hw), dtype=x.dtype)

    def part(lo: int, hi: int) -> None:
        a, b, c, d = _quarters(whole[lo:hi])
        out = y[lo:hi]
        np.maximum(a, b, out=out)
        np.maximum(out, c, out=out)
        np.maximum(out, d, out=out)

    _parallel(part, x.shape[0], x.size)
    return y, None, _MaxPool2x2Context(whole, y, tuple(x.shape))


def max_pool2d_backward(B: Backend, grad_y: np.ndarray, ctx: Any) -> np.ndarray:
    if not isinstance(ctx, _MaxPool2x2Context):
        return F.max_pool2d_backward.reference(B, grad_y, ctx)
    whole, y, in_shape = ctx
    if np.isnan(y).any():
        out_hw = (y.shape[2], y.shape[3])
        _, _, ref = F.max_pool2d.reference(B, whole, (2, 2), (2, 2), (0, 0), (1, 1), out_hw)
        grad = F.max_pool2d_backward.reference(B, grad_y, ref)
    else:
        grad = np.empty(whole.shape, dtype=grad_y.dtype)

        def part(lo: int, hi: int) -> None:
            g, m = grad_y[lo:hi], y[lo:hi]
            places, intos = _quarters(whole[lo:hi]), _quarters(grad[lo:hi])
            taken = places[0] == m  # the first place wins every tie
            np.multiply(g, taken, out=intos[0])
            for place, into in zip(places[1:3], intos[1:3], strict=True):
                won = place == m
                won &= ~taken
                taken |= won
                np.multiply(g, won, out=into)
            np.multiply(g, ~taken, out=intos[3])  # without NaN, one of the four is the max

        _parallel(part, whole.shape[0], whole.size)
    if grad.shape == tuple(in_shape):
        return grad
    full = np.zeros(in_shape, dtype=grad.dtype)  # the rows/columns the floor left out get nothing
    full[:, :, : grad.shape[2], : grad.shape[3]] = grad
    return full


# === convolution ==================================================================================
#
# conv2d as one BLAS product per group for the whole batch: the column buffer, laid out
# (C, kh, kw, N, OH, OW), is filled by kh*kw strided slice copies (no loop over pixels), and
# W (O, C*kh*kw) @ col (C*kh*kw, N*OH*OW) gives (O, N, OH*OW), copied once to NCHW. One large
# product rather than one per image: a threaded BLAS synchronizes its threads once per call, and
# on 2 busy cores 64 per-image calls took 2.5-3.4x as long as the one call (benchmarks/conv.py's
# shapes, 2 threads; equal on 1 thread). The backward: dW = dY @ colᵀ and dcol = Wᵀ @ dY (written
# over the column buffer, which dW no longer needs), then col2im as kh*kw strided slice-adds.


def _conv_taps(kh: int, kw: int, out_hw: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]):
    """(i, j, rows, cols): each kernel tap and the strided slices of the padded input it meets."""
    (oh, ow), (sh, sw), (dh, dw) = out_hw, stride, dilation
    for i in range(kh):
        for j in range(kw):
            yield (
                i,
                j,
                slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
                slice(j * dw, j * dw + sw * (ow - 1) + 1, sw),
            )


# The column buffer is 9x the input for a 3x3 kernel (75 MB at (64, 32, 32, 32)); a fresh one per
# forward costs its page faults every step (50 vs 29 ms to fill 75 MB, fresh vs reused, on the
# loaded 2-core machine). Its backward is done with it, so it goes back to this thread's few spares,
# and the next forward of that shape takes it up again.
_SPARE_COLUMNS = 8  # buffers kept per thread, at most
_SPARE_BYTES = 512 << 20  # and at most this much memory


def _columns(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    spares = getattr(_local, "columns", None)
    if spares is not None:
        found = spares.pop((shape, np.dtype(dtype)), None)
        if found is not None:
            return found
    return np.empty(shape, dtype)


def _give_back_columns(col: np.ndarray) -> None:
    spares = getattr(_local, "columns", None)
    if spares is None:
        spares = _local.columns = {}
    if col.nbytes > _SPARE_BYTES:
        return
    spares[(col.shape, col.dtype)] = col
    while len(spares) > _SPARE_COLUMNS or sum(a.nbytes for a in spares.values()) > _SPARE_BYTES:
        spares.pop(next(iter(spares)))  # the longest unused


def conv2d(
    B: Backend,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int],
    groups: int,
) -> tuple[np.ndarray, Any]:
    n, c, h, w = x.shape
    out_c, cg, kh, kw = weight.shape
    (pt, pb), (pl, pr) = padding
    oh = F.conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    ow = F.conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    x_cn = x.transpose(1, 0, 2, 3)  # (C, N, H, W): a view; the copies below read it in place
    if pt or pb or pl or pr:
        padded = np.zeros((c, n, h + pt + pb, w + pl + pr), x.dtype)
        padded[:, :, pt : pt + h, pl : pl + w] = x_cn
    else:
        padded = x_cn
    col = _columns((c, kh, kw, n, oh, ow), x.dtype)
    for i, j, rows, cols in _conv_taps(kh, kw, (oh, ow), stride, dilation):
        col[:, i, j] = padded[:, :, rows, cols]
    k, pixels = cg * kh * kw, n * oh * ow
    y = np.matmul(weight.reshape(groups, out_c // groups, k), col.reshape(groups, k, pixels))
    y_nchw = np.empty((n, out_c, oh * ow), x.dtype)
    y_onl = y.reshape(out_c, n, oh * ow).transpose(1, 0, 2)
    if bias is None:
        np.copyto(y_nchw, y_onl)
    else:
        np.add(y_onl, bias.reshape(1, out_c, 1), out=y_nchw)
    return y_nchw.reshape(n, out_c, oh, ow), (col, (n, c, h, w), padding, stride, dilation, groups)


def conv2d_backward(B: Backend, grad_y: np.ndarray, ctx: Any, weight: np.ndarray) -> tuple[Any, Any, Any]:
    col, (n, c, h, w), padding, stride, dilation, groups = ctx
    _, out_c, oh, ow = grad_y.shape
    _, cg, kh, kw = weight.shape
    k, og, pixels = cg * kh * kw, out_c // groups, n * oh * ow
    dt = col.dtype
    g = _scratch(out_c * n * oh * ow, dt, 0).reshape(out_c, n, oh * ow)  # dY laid out as the products
    np.copyto(g, grad_y.reshape(n, out_c, oh * ow).transpose(1, 0, 2))
    g = g.reshape(groups, og, pixels)
    cols = col.reshape(groups, k, pixels)
    grad_b = g.sum(axis=2).reshape(out_c)
    grad_w = np.matmul(g, cols.transpose(0, 2, 1)).reshape(weight.shape)
    w_t = weight.astype(dt, copy=False).reshape(groups, og, k).transpose(0, 2, 1)
    grad_col = np.matmul(w_t, g, out=cols).reshape(col.shape)  # the columns are spent: reuse them
    (pt, pb), (pl, pr) = padding
    grad_pad = _scratch(c * n * (h + pt + pb) * (w + pl + pr), dt, 1).reshape(c, n, h + pt + pb, w + pl + pr)
    grad_pad.fill(0)
    for i, j, rows, cols_ in _conv_taps(kh, kw, (oh, ow), stride, dilation):
        grad_pad[:, :, rows, cols_] += grad_col[:, i, j]
    grad_x = np.empty((n, c, h, w), dt)
    np.copyto(grad_x, grad_pad[:, :, pt : pt + h, pl : pl + w].transpose(1, 0, 2, 3))
    _give_back_columns(col)  # this context is spent: one backward per forward
    return grad_x, grad_w, grad_b


# --- local response normalization (the cnn branch) --------------------------------------------
#
# The reference pads the squares and adds size shifted copies, and raises s to -beta with pow:
# on SimpleCNN's (64, 32, 32, 32) that is most of the layer. Here the window sum adds shifted
# slices in place into one buffer (no padded copy), and s^-0.75 (beta's default and AlexNet's)
# is 1 / (sqrt(s) * sqrt(sqrt(s))): two square roots instead of an exp and a log per element.


def _lrn_window_sum_into(v: np.ndarray, front: int, back: int, out: np.ndarray) -> np.ndarray:
    np.copyto(out, v)
    channels = v.shape[1]
    for offset in range(1, min(front, channels - 1) + 1):  # channel c gets v[c - offset]
        out[:, offset:] += v[:, :-offset]
    for offset in range(1, min(back, channels - 1) + 1):  # channel c gets v[c + offset]
        out[:, :-offset] += v[:, offset:]
    return out


def _neg_power(s: np.ndarray, beta: float) -> np.ndarray:
    if beta == 0.75:
        root = np.sqrt(s)
        root *= np.sqrt(root)  # s^0.75
        return np.divide(1.0, root, out=root)
    if beta == 0.5:
        root = np.sqrt(s)
        return np.divide(1.0, root, out=root)
    return np.power(s, -beta)


def local_response_norm(B: Backend, x: np.ndarray, size: int, alpha: float, beta: float, k: float):
    squares = np.multiply(x, x)
    s = _lrn_window_sum_into(squares, size // 2, (size - 1) // 2, np.empty_like(squares))
    s *= x.dtype.type(alpha / size)
    s += x.dtype.type(k)
    scale = _neg_power(s, beta)
    return np.multiply(x, scale, out=squares), (x, s, scale)


def local_response_norm_backward(
    B: Backend, grad_y: np.ndarray, ctx: Any, size: int, alpha: float, beta: float
) -> np.ndarray:
    x, s, scale = ctx
    t = np.multiply(grad_y, x)
    t *= scale
    t /= s
    through_s = _lrn_window_sum_into(t, (size - 1) // 2, size // 2, np.empty_like(t))
    through_s *= x
    through_s *= x.dtype.type(2.0 * alpha * beta / size)
    grad_x = np.multiply(grad_y, scale, out=t)
    grad_x -= through_s
    return grad_x


KERNELS = F.kernels_in(globals())  # every function above named as the functional it replaces
