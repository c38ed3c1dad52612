"""Per-call overhead of the norm layers over their numba kernels (NumPy backend).

Each layer call is timed whole, and again with the compiled kernels stubbed out (the stub
returns the real kernel's result): the second time is the overhead, the Python around the
kernel (checks, dispatch, allocation, reshapes, running statistics). Minima over the repeats.
As in a training step, the parameters' gradients are zeroed before each backward (set, not added).

    python -m benchmarks.overhead [--exp 20] [--repeats 30] [--threads 1] [--in-step]

``--in-step`` makes the calls inside ``backend.compute()``, as a training step does (NumPy's error
state is then set once for the step, not per layer call).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any


def layers(exp: int) -> dict[str, tuple[Callable[[], Any], tuple[int, ...]]]:
    import dualnorm.nn as nn

    n = 1 << exp
    c2 = 64
    s2 = max(1, n // (64 * c2))
    side = int(s2**0.5)
    return {
        "BN1d": (lambda: nn.BatchNorm1d(1024), (n // 1024, 1024)),
        "BN2d": (lambda: nn.BatchNorm2d(c2), (64, c2, side, s2 // side)),
        "LN": (lambda: nn.LayerNorm(1024), (n // 1024, 1024)),
        "RMS": (lambda: nn.RMSNorm(1024), (n // 1024, 1024)),
        "GN": (lambda: nn.GroupNorm(32, 64), (n // (64 * 256), 64, 16, 16)),
        "IN": (lambda: nn.InstanceNorm2d(64, affine=True), (n // (64 * 256), 64, 16, 16)),
    }


def measure(exp: int, repeats: int, in_step: bool = False) -> list[tuple[str, str, float, float]]:
    """Rows of (layer, pass, call µs, overhead µs), minima over ``repeats`` calls.

    The overhead is the same call with the compiled kernels replaced by a stub that returns
    what the real kernel returned for these arguments (its outputs already written): what the
    call costs besides the kernel itself, measurable to a microsecond on a loaded machine.
    """
    import numpy as np

    from dualnorm.backends import kernels_numba

    run = kernels_numba._run
    memo: dict[str, Any] = {}

    def stub(name: str, *args: Any) -> Any:
        return memo[name]

    def remember(name: str, *args: Any) -> Any:
        memo[name] = out = run(name, *args)
        return out

    import contextlib

    from dualnorm.backends import get_backend

    rng = np.random.default_rng(0)
    rows = []
    numpy_backend = get_backend("numpy")
    step = numpy_backend.compute if in_step else contextlib.nullcontext
    try:
        for label, (make, shape) in layers(exp).items():
            layer = make()
            x = rng.standard_normal(shape).astype(np.float32)
            g = rng.standard_normal(shape).astype(np.float32)
            kernels_numba._run = remember
            for _ in range(3):  # compile / load, warm the pages
                layer(x)
                layer.backward(g)
            for which in ("fwd", "bwd"):
                best = {"real": 1e9, "stub": 1e9}
                with step():
                    for _ in range(repeats):
                        for mode in ("real", "stub"):
                            kernels_numba._run = run if mode == "real" else stub
                            if which == "bwd":
                                layer(x)  # a fresh context for each backward
                                layer.zero_grad()  # as a training step: the gradients are set, not added
                            t0 = time.perf_counter()
                            layer(x) if which == "fwd" else layer.backward(g)
                            best[mode] = min(best[mode], time.perf_counter() - t0)
                rows.append((label, which, best["real"] * 1e6, best["stub"] * 1e6))
    finally:
        kernels_numba._run = run
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--exp", type=int, default=20, help="log2 of the element count (default 20)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="threads (default: dualnorm's default)")
    parser.add_argument("--in-step", action="store_true", help="call the layers inside backend.compute()")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["DUALNORM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("DUALNORM_KERNELS", "numba")
    rows = measure(args.exp, args.repeats, args.in_step)
    where = "inside backend.compute(), as in a training step" if args.in_step else "called on their own"
    print(f"2^{args.exp} elements, float32, min of {args.repeats} calls (µs), layers {where}")
    print(f"{'layer':6} {'pass':4} {'call':>9} {'overhead':>9}")
    for label, step, total, over in rows:
        print(f"{label:6} {step:4} {total:9.1f} {over:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
