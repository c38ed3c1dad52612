"""Merging per-part statistics: a numerically stable parallel update (Chan, Golub & LeVeque 1979).

Used by the NumPy kernels (blocks and threads of one array) and by SyncBatchNorm (ranks).

Each rank ``i`` summarizes its shard of a channel by ``(n_i, mean_i, M2_i)`` where
``M2_i = sum((x - mean_i)^2)`` (the sum of squared deviations). For two parts::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + delta^2 * n_a * n_b / n

and for all ranks at once, shifted by a reference mean ``s`` (one of the rank means) so
that only small differences are ever summed::

    d_i   = mean_i - s
    dm    = sum(n_i * d_i) / n                  (global mean = s + dm)
    M2    = sum(M2_i) + sum(n_i * (d_i - dm)^2)

Both avoid the sum of squares ``E[x^2] - E[x]^2``, which loses every digit in float32
when the data sit far from zero (e.g. 1e4 + small noise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["chan_merge", "merge_moments"]


def chan_merge(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    """Combine ``(n, mean, M2)`` of two disjoint parts into that of their union (Chan et al.)."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    if n == 0:
        return 0, mean_a, m2_a
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2


def merge_moments(
    xp: Any, counts: np.ndarray, means: Any, m2s: Any, means_lo: Any = None
) -> tuple[int, Any, Any, Any]:
    """Merge the per-rank statistics of every channel at once.

    Args:
        xp: the array namespace (``numpy`` or ``mlx.core``).
        counts: per-rank element counts per channel, host integers, shape ``(P,)``.
        means: per-rank means, shape ``(P, C)`` (ignored where the count is 0).
        m2s: per-rank sums of squared deviations, shape ``(P, C)``.
        means_lo: optional low parts of the means (the mean of rank ``i`` is
            ``means[i] + means_lo[i]`` unrounded), as the corrected two-pass algorithm
            produces them; keeps float32 digits for data far from zero.

    Returns:
        ``(n, mean, M2, offsets)``: the global count, the global mean and M2 (shape
        ``(C,)``), and ``offsets`` of shape ``(P, C)`` with ``offsets[i] = mean - mean_i``
        computed from small differences only, so that rank ``i`` can centre its data
        as ``(x - mean_i) - offsets[i]`` without cancellation.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    n = int(counts.sum())
    if n == 0:
        zeros = means[0] * 0
        return 0, zeros, zeros, means * 0
    ref = int(np.argmax(counts > 0))  # the first rank that holds data: its mean is the shift
    weights = xp.array(counts.astype(np.float64)).astype(means.dtype).reshape((-1, 1))
    d = means - means[ref]
    if means_lo is not None:
        d = d + (means_lo - means_lo[ref])
    d = xp.where(weights > 0, d, 0.0)  # ranks without data carry a meaningless mean
    dm = xp.sum(weights * d, axis=0) / n
    dev = d - dm
    m2 = xp.sum(m2s, axis=0) + xp.sum(weights * dev * dev, axis=0)
    mean = means[ref] + dm if means_lo is None else means[ref] + (means_lo[ref] + dm)
    return n, mean, m2, -dev
