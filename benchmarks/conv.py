"""Conv2d forward and forward+backward: dualnorm (NumPy, and MLX with --mlx) against PyTorch CPU and a
plain per-image-GEMM NumPy version, at the issue's three shapes (3x3 kernel, padding 1).

    python -m benchmarks.conv                  # 2 threads, 5 rounds
    python -m benchmarks.conv --threads 1 --rounds 3 --mlx

Each library runs in its own process with its thread count fixed before it is imported
(OPENBLAS/OMP/MKL_NUM_THREADS, torch.set_num_threads): in one process OpenBLAS's and
PyTorch's thread pools fight over the cores. The processes take turns, round after round,
and each time is the minimum over every repeat of every round. Ratios are library / torch:
below 1 is faster than torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

SHAPES = [  # (N, C, H=W, out_channels)
    (64, 3, 32, 32),
    (64, 32, 16, 64),
    (64, 32, 32, 64),
]
LIBRARIES = ("torch", "dualnorm-numpy", "numpy-gemm", "dualnorm-mlx")


# --- the worker: one library, timed in its own process ------------------------------------------


def _best(fn: Any, repeats: int) -> float:
    fn()  # warm up: allocations, JIT, thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _cases(library: str) -> dict[str, Any]:
    """dualnorm's and PyTorch's calls, built as ``dualnorm bench`` builds them (dualnorm.bench_cnn)."""
    from dualnorm.bench_cnn import CnnCase, dualnorm_callables, torch_callables

    cases = {}
    for n, c, hw, out in SHAPES:
        case = CnnCase("conv", (n, c, hw, hw), out)
        if library == "torch":
            fns = torch_callables(case)
        else:  # MLX on its CPU device, as the numbers are
            backend = library.split("-", 1)[1]
            fns = dualnorm_callables(case, "mlx-cpu" if backend == "mlx" else backend)
        cases[str((n, c, hw, out))] = (fns["fwd"], fns["fwdbwd"])
    return cases


def _gemm_cases() -> dict[str, Any]:
    """The textbook version: per image, an im2col and a GEMM (the backward likewise)."""
    import numpy as np

    rng = np.random.default_rng(0)
    cases = {}
    for n, c, hw, out in SHAPES:
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        g = rng.standard_normal((n, out, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((out, c * 9)) * 0.1).astype(np.float32)
        b = np.zeros((out, 1), np.float32)

        def im2col(image: Any, hw: int = hw) -> Any:
            padded = np.pad(image, ((0, 0), (1, 1), (1, 1)))
            return np.stack(
                [padded[:, i : i + hw, j : j + hw] for i in range(3) for j in range(3)], 1
            ).reshape(-1, hw * hw)

        def fwd(x=x, w=w, b=b, out=out, hw=hw, im2col=im2col) -> Any:
            cols = [im2col(image) for image in x]
            return np.stack([w @ col + b for col in cols]).reshape(len(x), out, hw, hw), cols

        def fwdbwd(x=x, g=g, w=w, fwd=fwd, hw=hw) -> Any:
            _, cols = fwd()
            grad_w = np.zeros_like(w)
            grad_x = np.empty_like(x)
            for k, (col, gk) in enumerate(zip(cols, g.reshape(len(x), -1, hw * hw), strict=True)):
                grad_w += gk @ col.T
                grad_col = (w.T @ gk).reshape(-1, 9, hw, hw)
                padded = np.zeros((x.shape[1], hw + 2, hw + 2), np.float32)
                for t in range(9):
                    i, j = divmod(t, 3)
                    padded[:, i : i + hw, j : j + hw] += grad_col[:, t]
                grad_x[k] = padded[:, 1:-1, 1:-1]
            return grad_x, grad_w, g.sum(axis=(0, 2, 3))

        cases[str((n, c, hw, out))] = (fwd, fwdbwd)
    return cases


def worker(library: str, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    if library == "torch":
        import torch

        torch.set_num_threads(threads)
    cases = _gemm_cases() if library == "numpy-gemm" else _cases(library)
    return {
        shape: {"fwd": _best(fwd, repeats), "fwdbwd": _best(fwdbwd, repeats)}
        for shape, (fwd, fwdbwd) in cases.items()
    }


# --- the driver: processes in turn, then the table -----------------------------------------------


def _run_worker(library: str, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_NUM_THREADS"):
        env[var] = str(threads)
    code = (
        "import json, sys; from benchmarks.conv import worker; "
        f"print(json.dumps(worker({library!r}, {threads}, {repeats})))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {library} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="times each library's process runs, in turn")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement and round")
    parser.add_argument("--mlx", action="store_true", help="also time dualnorm on MLX (CPU device)")
    parser.add_argument("--json", metavar="FILE", help="write the minimum times (seconds) as JSON")
    args = parser.parse_args(argv)

    libraries = [lib for lib in LIBRARIES if args.mlx or lib != "dualnorm-mlx"]
    best: dict[str, dict[str, dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for library in libraries if round_ % 2 == 0 else reversed(libraries):
            for shape, times in _run_worker(library, args.threads, args.repeats).items():
                slot = best.setdefault(library, {}).setdefault(shape, {})
                for key, value in times.items():
                    slot[key] = min(value, slot.get(key, float("inf")))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    print(
        f"Conv2d 3x3 pad 1, float32, {args.threads} thread(s), min over {args.rounds} rounds x "
        f"{args.repeats} repeats; ratio = library / torch (< 1 is faster)"
    )
    head = f"{'shape (N,C,H,W)->O':<22} {'pass':<7} {'torch ms':>9}"
    for library in libraries[1:]:
        head += f" {library + ' ms':>20} {'ratio':>6}"
    print(head)
    for n, c, hw, out in SHAPES:
        shape = str((n, c, hw, out))
        for key, label in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd")):
            torch_s = best["torch"][shape][key]
            row = f"{f'({n},{c},{hw},{hw})->{out}':<22} {label:<7} {torch_s * 1e3:>9.2f}"
            for library in libraries[1:]:
                t = best[library][shape][key]
                row += f" {t * 1e3:>20.2f} {t / torch_s:>6.2f}"
            print(row)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"threads": args.threads, "rounds": args.rounds, "seconds": best}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
