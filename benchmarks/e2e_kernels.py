"""End to end, the NumPy backend with numba and with the NumPy kernels, against the PyTorch loops.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 DUALNORM_NUM_THREADS=1 \\
        python -m benchmarks.e2e_kernels 1 e2e.json

A shorter companion of ``python -m benchmarks`` (no MLX rows, records at the default
interval): dying-relu, the full init-sweep and norm-zoo (no PyTorch loop for norm-zoo:
PyTorch has no batch renorm). The first argument is PyTorch's thread count.
"""

import json
import sys

import torch

from benchmarks import e2e
from benchmarks.layers import kernel_tables
from dualnorm.experiments.init_sweep import SCALES, variant_name


def main(threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    rows = []
    sweep_idx = list(range(len(SCALES)))
    sweep_variants = tuple(variant_name(i, n) for i in sweep_idx for n in ("batchnorm", "plain"))
    for name, steps, variants in (
        ("dying-relu", 10000, None),
        ("init-sweep", None, sweep_variants),
        ("norm-zoo", None, None),
    ):
        for impl, table in kernel_tables().items():
            with e2e.kernels_installed("numpy", table):
                r = e2e.run_dualnorm(name, "numpy", steps, None, variants=variants)
            rows.append((name, impl, r["s"]))
            print(rows[-1], flush=True)
        if name == "dying-relu":
            rows.append((name, "torch", e2e.torch_dying_relu(steps)))
            print(rows[-1], flush=True)
        elif name == "init-sweep":
            rows.append((name, "torch", e2e.torch_init_sweep(sweep_idx, 200)))
            print(rows[-1], flush=True)
    with open(out, "w") as fh:
        json.dump(rows, fh)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
