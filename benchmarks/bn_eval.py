"""Eval-mode batch norm (running statistics): the numba kernel vs the reference, PyTorch and a copy.

    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 DUALNORM_NUM_THREADS=2 python -m benchmarks.bn_eval

Best of 20 calls each, milliseconds; the ratios are from the same run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import dualnorm
from dualnorm.backends import kernels_numba as kn
from dualnorm.nn import functional as F


def _best(f: Callable[[], Any], n: int = 20) -> float:
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def _measure(B: Any, torch: Any, shape: tuple[int, ...]) -> dict[str, float]:
    rng = np.random.default_rng(0)
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)

    def pair(fwd: Any, bwd: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
        def f() -> Any:
            return fwd(B, x, w, b, rm, rv, 1e-5)

        def fb() -> Any:
            return bwd(B, g, f()[1], w)

        return f, fb

    nb_f, nb_fb = pair(kn.batch_norm_eval, kn.batch_norm_eval_backward)
    ref_f, ref_fb = pair(F.batch_norm_eval.reference, F.batch_norm_eval_backward.reference)
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    tw, tb = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
    trm, trv = torch.from_numpy(rm), torch.from_numpy(rv)
    txg = tx.clone().requires_grad_()

    def t_f() -> Any:
        with torch.no_grad():
            return torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, False)

    def t_fb() -> None:
        torch.nn.functional.batch_norm(txg, trm, trv, tw, tb, False).backward(tg)

    return {
        "numba fwd": _best(nb_f),
        "numba fwd+bwd": _best(nb_fb),
        "reference fwd": _best(ref_f),
        "reference fwd+bwd": _best(ref_fb),
        "torch fwd": _best(t_f),
        "torch fwd+bwd": _best(t_fb),
        "copy": _best(x.copy),
    }


def main() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    B = dualnorm.get_backend("numpy")
    for shape in [(4096, 1024), (64, 64, 32, 32)]:
        r = _measure(B, torch, shape)
        print(shape, {k: round(v, 3) for k, v in r.items()})
        print(
            f"  fwd/torch {r['numba fwd'] / r['torch fwd']:.2f}  fwd+bwd/torch "
            f"{r['numba fwd+bwd'] / r['torch fwd+bwd']:.2f}  fwd/copy {r['numba fwd'] / r['copy']:.2f}  "
            f"fwd+bwd/copy {r['numba fwd+bwd'] / r['copy']:.2f}"
        )


if __name__ == "__main__":
    main()
