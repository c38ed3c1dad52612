"""One SimpleCNN training step at batch 64 (the seeds' network, 3x32x32 input): dualnorm vs PyTorch CPU.

    python -m benchmarks.simple_cnn                  # LRN, BN and GN; 2 threads; NumPy and torch
    python -m benchmarks.simple_cnn --backends numpy,mlx --norms lrn --threads 2 --rounds 3

A step is what training does: zero_grad, forward, cross-entropy, backward, SGD-with-momentum
update (built by dualnorm.bench_cnn, as dualnorm bench builds it). Each library runs in its own process with the same thread count (in one process
OpenBLAS's and PyTorch's thread pools fight over the cores), and the processes take turns:
``--rounds`` rounds of one process per library and norm, each timing ``--steps`` steps after
warm-up. Reported: the minimum step time over all rounds, in milliseconds, and the ratio to
PyTorch's from the same run. PyTorch's network is the seed's own module (its LRN is
``F.local_response_norm`` with k = 2), with dualnorm's initial weights loaded into it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

# The cases (and torch_simple_cnn, the seed's network in PyTorch) are shared with dualnorm bench.
from dualnorm.bench_cnn import BATCH, CnnCase, dualnorm_callables, torch_callables, torch_simple_cnn

__all__ = ["torch_simple_cnn"]
NORMS = ("lrn", "batch", "group")


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_NUM_THREADS"):
        os.environ[var] = str(n)


def _time_steps(step: Any, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def _dualnorm_worker(backend: str, norm: str, steps: int, warmup: int) -> list[float]:
    label = "mlx-cpu" if backend == "mlx" else backend  # Linux mlx[cpu]; a Mac's GPU: --backends mlx-gpu
    step = dualnorm_callables(CnnCase("step", (BATCH, 3, 32, 32), norm=norm), label)["step"]
    return _time_steps(step, steps, warmup)


def _torch_worker(norm: str, steps: int, warmup: int, threads: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    step = torch_callables(CnnCase("step", (BATCH, 3, 32, 32), norm=norm))["step"]
    return _time_steps(step, steps, warmup)


def _worker(args: argparse.Namespace) -> None:
    if args.worker == "torch":
        times = _torch_worker(args.norm, args.steps, args.warmup, args.threads)
    else:
        times = _dualnorm_worker(args.worker, args.norm, args.steps, args.warmup)
    print(json.dumps({"times": times}))


def _spawn(library: str, norm: str, args: argparse.Namespace) -> list[float]:
    cmd = [sys.executable, "-m", "benchmarks.simple_cnn", "--worker", library, "--norm", norm]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_NUM_THREADS"):
        env[var] = str(args.threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{library}/{norm} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["times"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.simple_cnn", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--backends", default="numpy", help="dualnorm backends, comma-separated (default numpy)"
    )
    parser.add_argument("--norms", default=",".join(NORMS), help=f"comma-separated of {', '.join(NORMS)}")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per library and norm, taking turns")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--norm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _set_threads(args.threads)
    if args.worker:
        _worker(args)
        return 0
    libraries = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch is not installed: timing dualnorm alone", file=sys.stderr)
        else:
            libraries.append("torch")
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    best: dict[tuple[str, str], float] = {}
    for r in range(args.rounds):
        for norm in norms:
            for library in libraries:
                t = min(_spawn(library, norm, args)) * 1e3
                best[(library, norm)] = min(best.get((library, norm), float("inf")), t)
                print(f"round {r + 1}: {library:6s} {norm:6s} {t:8.1f} ms", file=sys.stderr)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(
        f"SimpleCNN training step, batch {BATCH}, {args.threads} threads, best of {args.rounds}x{args.steps} "
        f"steps (ms; load average {load:.1f})"
    )
    header = f"{'norm':8s}" + "".join(f"{lib:>12s}" for lib in libraries)
    if "torch" in libraries:
        header += "".join(f"{lib + '/torch':>14s}" for lib in libraries if lib != "torch")
    print(header)
    for norm in norms:
        row = f"{norm:8s}" + "".join(f"{best[(lib, norm)]:12.1f}" for lib in libraries)
        if "torch" in libraries:
            row += "".join(
                f"{best[(lib, norm)] / best[('torch', norm)]:14.2f}" for lib in libraries if lib != "torch"
            )
        print(row)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({f"{lib}/{norm}": ms for (lib, norm), ms in best.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
