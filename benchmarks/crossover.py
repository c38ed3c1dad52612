"""Where the numba kernels start to pay: forward+backward time, numba vs the NumPy kernels.

    python -m benchmarks.crossover

Prints, per layer and size, the median time of each table (2 threads unless
DUALNORM_NUM_THREADS says otherwise) and the ratio numba / NumPy; ``MIN_ELEMENTS`` in
``dualnorm/backends/kernels_numba.py`` is set from these rows.
"""

from __future__ import annotations

import functools
import os

import numpy as np

os.environ.setdefault("DUALNORM_NUM_THREADS", "2")

import dualnorm
from dualnorm.backends import kernels_numba, kernels_numpy
from dualnorm.bench import median, time_interleaved

SIZES = [1 << k for k in range(10, 21)]


def _fwdbwd(table, kind: str, x: np.ndarray, g: np.ndarray, w: np.ndarray, b: np.ndarray):
    B = dualnorm.get_backend("numpy")
    if kind == "batch_norm":
        _, _, _, ctx = table.batch_norm_train(B, x, w, b, 1e-5)
        return table.batch_norm_train_backward(B, g, ctx, w)
    if kind == "layer_norm":
        _, ctx = table.layer_norm(B, x, w, b, (1,), 1e-5)
        return table.layer_norm_backward(B, g, ctx, w, (1,))
    _, ctx = table.group_norm(B, x, 8, w, b, 1e-5)
    return table.group_norm_backward(B, g, ctx, w)


def main() -> None:
    kernels_numba.MIN_ELEMENTS = 0
    rng = np.random.default_rng(0)
    print("layer        elements  shape            numpy us   numba us  numba/numpy")
    for kind, width in (("batch_norm", 100), ("layer_norm", 100), ("group_norm", 64)):
        for size in SIZES:
            shape = (max(2, size // width), width) if kind != "group_norm" else (max(1, size // 1024), 64, 16)
            x = rng.standard_normal(shape).astype(np.float32)
            g = rng.standard_normal(shape).astype(np.float32)
            c = shape[1]
            w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
            fns = {
                name: functools.partial(_fwdbwd, t, kind, x, g, w, b)
                for name, t in (("numpy", kernels_numpy), ("numba", kernels_numba))
            }
            times = time_interleaved(fns, repeats=15, warmup=3, min_time=0.05)
            tn, tb = median(times["numpy"]) * 1e6, median(times["numba"]) * 1e6
            print(f"{kind:12s} {x.size:9d}  {shape!s:15s} {tn:9.1f} {tb:10.1f}  {tb / tn:8.2f}", flush=True)


if __name__ == "__main__":
    main()
