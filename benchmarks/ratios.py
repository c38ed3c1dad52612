"""dualnorm (NumPy backend, numba kernels) against PyTorch CPU, layer by layer and size by size.

Each library runs in its own process at the same thread count (``--threads``); dualnorm also
at one thread, for the 2-thread speed-up. The input copy (the memory floor) is timed next to
dualnorm's layers. Every time is the minimum of ``--repeats`` calls after warm-up (minima: the
least disturbed call on a shared machine); ``--rounds`` runs every process that many times,
alternating, and keeps the minimum again.

    python -m benchmarks.ratios [--exps 16 18 20 22] [--threads 2] [--repeats 9] [--rounds 2]

Shapes: BN1d, LN and RMS on (2^k / 1024, 1024); BN2d, GN(32, 64) and IN on (2^k / 16384, 64, 16, 16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LAYERS = ("BN1d", "BN2d", "LN", "GN", "RMS", "IN")
ROOT = Path(__file__).resolve().parents[1]


def _shape(layer: str, exp: int) -> tuple[int, ...]:
    n = 1 << exp
    return (n // 1024, 1024) if layer in ("BN1d", "LN", "RMS") else (n // (64 * 256), 64, 16, 16)


def _best(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _dualnorm(exps: list[int], repeats: int, numba_loaded: bool) -> dict[str, float]:
    import numpy as np

    import dualnorm.nn as nn
    from dualnorm.backends import kernels_numba

    if numba_loaded:  # as in a process whose large layers loaded numba: small layers use it too
        kernels_numba._import_numba()

    make = {
        "BN1d": lambda: nn.BatchNorm1d(1024),
        "BN2d": lambda: nn.BatchNorm2d(64),
        "LN": lambda: nn.LayerNorm(1024),
        "GN": lambda: nn.GroupNorm(32, 64),
        "RMS": lambda: nn.RMSNorm(1024),
        "IN": lambda: nn.InstanceNorm2d(64, affine=True),
    }
    import numba

    from dualnorm.backends import kernels_numpy

    pcopy = _parallel_copy()
    rng = np.random.default_rng(0)
    out = {}
    for exp in exps:
        for name in LAYERS:
            x = rng.standard_normal(_shape(name, exp)).astype(np.float32)
            g = rng.standard_normal(x.shape).astype(np.float32)
            layer = make[name]()

            def fwdbwd(layer: Any = layer, x: Any = x, g: Any = g) -> None:
                for p in layer.parameters():
                    p.grad = None
                layer(x)
                layer.backward(g)

            out[f"{name} {exp} fwd"] = _best(lambda layer=layer, x=x: layer(x), repeats)
            out[f"{name} {exp} fwdbwd"] = _best(fwdbwd, repeats)
        buf = np.empty(1 << exp, np.float32)
        src = rng.standard_normal(1 << exp).astype(np.float32)
        out[f"copy {exp}"] = _best(lambda buf=buf, src=src: np.copyto(buf, src), repeats)
        for threads in (1, min(kernels_numpy.get_num_threads(), numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            out[f"copy-{threads}t {exp}"] = _best(lambda buf=buf, src=src: pcopy(buf, src), repeats)
    return out


def _parallel_copy() -> Any:
    """A copy over numba's threads (``prange``): how far memory itself scales with threads,
    the bound of any layer's speed-up from them."""
    import numba

    @numba.njit(parallel=True, nogil=True, cache=True)
    def copy(dst: Any, src: Any) -> None:  # pragma: no cover - compiled
        for i in numba.prange(src.shape[0]):
            dst[i] = src[i]

    return copy


def _torch(exps: list[int], repeats: int, threads: int) -> dict[str, float]:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    make = {
        "BN1d": lambda: torch.nn.BatchNorm1d(1024),
        "BN2d": lambda: torch.nn.BatchNorm2d(64),
        "LN": lambda: torch.nn.LayerNorm(1024),
        "GN": lambda: torch.nn.GroupNorm(32, 64),
        "RMS": lambda: torch.nn.RMSNorm(1024),
        "IN": lambda: torch.nn.InstanceNorm2d(64, affine=True),
    }
    rng = np.random.default_rng(0)
    out = {}
    for exp in exps:
        for name in LAYERS:
            x = torch.from_numpy(rng.standard_normal(_shape(name, exp)).astype(np.float32)).requires_grad_(
                True
            )
            g = torch.from_numpy(rng.standard_normal(tuple(x.shape)).astype(np.float32))
            layer = make[name]().train()

            def fwd(layer: Any = layer, x: Any = x) -> None:
                with torch.no_grad():
                    layer(x)

            def fwdbwd(layer: Any = layer, x: Any = x, g: Any = g) -> None:
                x.grad = None
                layer.zero_grad(set_to_none=True)
                layer(x).backward(g)

            out[f"{name} {exp} fwd"] = _best(fwd, repeats)
            out[f"{name} {exp} fwdbwd"] = _best(fwdbwd, repeats)
    return out


def _child(
    which: str, threads: int, exps: list[int], repeats: int, numba_loaded: bool, layers: list[str]
) -> dict[str, float]:
    env = dict(os.environ, DUALNORM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env.update(MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), DUALNORM_KERNELS="numba")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.ratios", "--worker", which, "--threads", str(threads)]
    cmd += ["--repeats", str(repeats), "--exps", *map(str, exps), "--layers", *layers] + (
        ["--numba-loaded"] if numba_loaded else []
    )
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    global LAYERS
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ratios", description=__doc__.split("\n\n")[0])
    parser.add_argument("--exps", type=int, nargs="+", default=[16, 18, 20, 22])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--layers", nargs="+", choices=LAYERS, default=list(LAYERS), help="a subset (default all)"
    )
    parser.add_argument(
        "--numba-loaded",
        action="store_true",
        help="dualnorm's process loads numba first (as after a large layer): small layers use it too",
    )
    parser.add_argument("--worker", choices=["dualnorm", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    LAYERS = tuple(args.layers)
    if args.worker == "dualnorm":
        print(json.dumps(_dualnorm(args.exps, args.repeats, args.numba_loaded)))
        return 0
    if args.worker == "torch":
        print(json.dumps(_torch(args.exps, args.repeats, args.threads)))
        return 0

    runs: dict[str, dict[str, float]] = {}
    plan = [("dualnorm", args.threads), ("torch", args.threads), ("dualnorm", 1)]
    for _ in range(args.rounds):
        for which, threads in plan:
            key = f"{which}-{threads}"
            got = _child(which, threads, args.exps, args.repeats, args.numba_loaded, args.layers)
            runs[key] = {k: min(v, runs.get(key, {}).get(k, v)) for k, v in got.items()}
    dn, tc, one = runs[f"dualnorm-{args.threads}"], runs[f"torch-{args.threads}"], runs["dualnorm-1"]
    print(
        f"dualnorm/torch time ratios, {args.threads} thread(s) each, min of {args.repeats} calls x {args.rounds} rounds"
    )
    head = f"{'layer':5} {'2^k':>4} {'fwd ms':>8} {'torch':>8} {'fwd r':>6} {'f+b ms':>8} {'torch':>8} {'f+b r':>6}"
    head += f" {'fwd/copy':>8} {'f+b/copy':>8} {'fwd 1t/' + str(args.threads) + 't':>10} {'f+b 1t/' + str(args.threads) + 't':>10}"
    print(head)
    for exp in args.exps:
        copy = dn[f"copy {exp}"]
        for name in LAYERS:
            f, fb = dn[f"{name} {exp} fwd"], dn[f"{name} {exp} fwdbwd"]
            tf, tfb = tc[f"{name} {exp} fwd"], tc[f"{name} {exp} fwdbwd"]
            print(
                f"{name:5} {exp:>4} {f * 1e3:8.3f} {tf * 1e3:8.3f} {f / tf:6.2f} {fb * 1e3:8.3f} {tfb * 1e3:8.3f} "
                f"{fb / tfb:6.2f} {f / copy:8.1f} {fb / copy:8.1f} {one[f'{name} {exp} fwd'] / f:10.2f} "
                f"{one[f'{name} {exp} fwdbwd'] / fb:10.2f}"
            )
    print(f"the input's copy, 1 thread / {args.threads} threads (numba prange; memory's own speed-up):")
    print(
        "  ".join(
            f"2^{exp} {dn[f'copy-1t {exp}'] / dn[f'copy-{args.threads}t {exp}']:.2f}" for exp in args.exps
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
