"""MaxPool2d(2) forward and forward+backward: dualnorm against PyTorch CPU and a plain NumPy version.

    python -m benchmarks.pooling                  # 2 threads, both shapes
    python -m benchmarks.pooling --threads 1 --repeats 15

Every library gets the same thread count. PyTorch is timed in a child process (its thread pool
and NumPy's fight over the cores when they share one), twice, before and after the in-process
rows, and its faster run is kept. Times are medians over ``--repeats`` interleaved calls;
the ratio is dualnorm / torch: below 1 is faster. The plain NumPy version is the textbook one:
a reshape-and-reduce forward and an argmax-and-scatter backward.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

SHAPES = [(64, 32, 32, 32), (64, 64, 16, 16)]


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_NUM_THREADS"):
        os.environ[var] = str(n)


def _inputs(shape: tuple[int, ...]) -> tuple[Any, Any]:
    from dualnorm.bench_cnn import CnnCase, case_inputs

    return case_inputs(CnnCase("maxpool", shape))


def plain_numpy(x: Any, g: Any) -> dict[str, Callable[[], Any]]:
    import numpy as np

    n, c, h, w = x.shape

    def forward() -> Any:
        return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    def fwdbwd() -> Any:
        forward()
        windows = (
            x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
        )
        winner = windows.argmax(axis=-1)[..., None]  # argmax: the first of tied maxima
        dx = np.zeros(windows.shape, x.dtype)
        np.put_along_axis(dx, winner, g[..., None], axis=-1)
        return dx.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(x.shape)

    return {"fwd": forward, "fwdbwd": fwdbwd}


def dualnorm_impl(backend: str, x: Any, g: Any) -> dict[str, Callable[[], Any]]:
    """dualnorm's calls on the inputs of ``x``'s shape, built as ``dualnorm bench`` builds them."""
    from dualnorm.bench_cnn import CnnCase, dualnorm_callables

    return dualnorm_callables(CnnCase("maxpool", tuple(x.shape)), backend)


def torch_impl(x: Any, g: Any) -> dict[str, Callable[[], Any]]:
    """PyTorch's calls, as ``dualnorm bench`` builds them (same seeded inputs as :func:`_inputs`)."""
    from dualnorm.bench_cnn import CnnCase, torch_callables

    return torch_callables(CnnCase("maxpool", tuple(x.shape)))


def _measure(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    from dualnorm.bench import median, time_interleaved

    times = time_interleaved(fns, repeats=repeats, warmup=2)
    return {name: median(values) * 1e3 for name, values in times.items()}


def _torch_child(threads: int, repeats: int) -> dict[str, dict[str, float]]:
    import torch

    torch.set_num_threads(threads)
    out = {}
    for shape in SHAPES:
        x, g = _inputs(shape)
        fns = torch_impl(x, g)
        out[str(shape)] = _measure(fns, repeats)
    return out


def _torch_in_child(threads: int, repeats: int) -> dict[str, dict[str, float]] | None:
    cmd = [sys.executable, "-m", "benchmarks.pooling", "--torch-child", "--threads", str(threads)]
    cmd += ["--repeats", str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if done.returncode != 0:
        print(f"torch: not measured ({done.stderr.strip().splitlines()[-1:] or 'no output'})")
        return None
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pooling", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per measurement (default 15)")
    parser.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _set_threads(args.threads)
    if args.torch_child:
        print(json.dumps(_torch_child(args.threads, args.repeats)))
        return 0

    import dualnorm
    from dualnorm.backends import kernels_numpy
    from dualnorm.bench import machine

    kernels_numpy.set_num_threads(args.threads)
    info = machine()
    print(
        f"MaxPool2d(2), float32, {args.threads} thread(s), median of {args.repeats}; load {info.get('loadavg')}"
    )
    torch_runs = [_torch_in_child(args.threads, args.repeats)]
    ours: dict[str, dict[str, float]] = {}
    for shape in SHAPES:
        x, g = _inputs(shape)
        fns: dict[str, Callable[[], Any]] = {}
        for label, impl in [("numpy", lambda x=x, g=g: dualnorm_impl("numpy", x, g)), ("plain", None)]:
            table = impl() if impl is not None else plain_numpy(x, g)
            fns.update({f"{label}:{k}": v for k, v in table.items()})
        if "mlx" in dualnorm.available_backends():
            fns.update({f"mlx:{k}": v for k, v in dualnorm_impl("mlx", x, g).items()})
        ours[str(shape)] = _measure(fns, args.repeats)
    torch_runs.append(_torch_in_child(args.threads, args.repeats))

    header = f"{'shape':<18} {'pass':<7} {'dualnorm':>9} {'torch':>9} {'ratio':>6} {'plain np':>9} {'mlx':>9}"
    print(header)
    print("-" * len(header))
    for shape in SHAPES:
        key = str(shape)
        for kind in ("fwd", "fwdbwd"):
            ms = ours[key]
            torch_ms = min((run[key][kind] for run in torch_runs if run), default=float("nan"))
            ratio = ms[f"numpy:{kind}"] / torch_ms
            mlx_ms = ms.get(f"mlx:{kind}", float("nan"))
            print(
                f"{key:<18} {kind:<7} {ms[f'numpy:{kind}']:>7.2f}ms {torch_ms:>7.2f}ms {ratio:>6.2f} "
                f"{ms[f'plain:{kind}']:>7.2f}ms {mlx_ms:>7.2f}ms"
            )
    print(
        "ratio = dualnorm (NumPy) / torch CPU: below 1 is faster. mlx: dualnorm on MLX (Linux mlx[cpu]: not a speed target)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
