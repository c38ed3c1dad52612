"""numba's threading layer and OpenMP's spin-wait, with the cores free and with busy processes beside.

Times the parallel LayerNorm and BatchNorm1d forward kernels (2 threads) at 2^16..2^22 elements
under each setting, each in its own process (libgomp reads its settings once, when it loads),
first on a quiet machine, then with ``--busy`` processes spinning on the other cores. Medians of
``--repeats`` calls (µs): the median shows the waits a spinning runtime adds under load.

    python -m benchmarks.threading_layer [--busy 2] [--repeats 60]

Settings: dualnorm's default (OpenMP, GOMP_SPINCOUNT=2000 while it loads), OpenMP at 20 000
turns, OpenMP passive, OpenMP spinning without bound (OMP_WAIT_POLICY=ACTIVE), and workqueue.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "dualnorm default": {},
    "omp 20000 turns": {"GOMP_SPINCOUNT": "20000"},
    "omp passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "omp active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
}
EXPS = (16, 18, 20, 22)


def _worker(repeats: int) -> dict[str, float]:
    import numpy as np

    from dualnorm.backends import kernels_numba as K

    numba = K._import_numba()
    numba.set_num_threads(2)
    ln, bn = K._kernel("ln_forward"), K._kernel("bn_forward2")
    rng = np.random.default_rng(0)
    out = {"layer": numba.threading_layer()}
    for exp in EXPS:
        x = rng.standard_normal(((1 << exp) // 1024, 1024)).astype(np.float32)
        w, b, y = np.ones(1024, np.float32), np.zeros(1024, np.float32), np.empty_like(x)
        mean, inv = np.empty(x.shape[0]), np.empty(x.shape[0])
        st, hd = np.empty((4, 1024)), np.empty((5, 1024), np.float32)
        none = np.empty(0, np.float32)  # no running statistics to update
        for name, kernel, args in (
            ("LN", ln, (x, w, b, 1e-5, True, 2, y, mean, inv)),
            ("BN1d", bn, (x, w, b, 1e-5, 2, y, st, hd, none, none, 0.0, 0.0, 1.0)),
        ):
            kernel(*args)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                kernel(*args)
                times.append(time.perf_counter() - t0)
            out[f"{name} {exp}"] = sorted(times)[len(times) // 2] * 1e6
    return out


def _measure(extra: dict[str, str], repeats: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.pop("NUMBA_THREADING_LAYER", None)
    env.update(extra, DUALNORM_NUM_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.threading_layer", "--worker", "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(title: str, repeats: int) -> None:
    print(title)
    cols = [f"{n} 2^{e}" for e in EXPS for n in ("LN", "BN1d")]
    print(f"{'setting':18} {'layer':9} " + " ".join(f"{c:>10}" for c in cols))
    for label, extra in SETTINGS.items():
        got = _measure(extra, repeats)
        cells = " ".join(f"{got[c.replace(' 2^', ' ')]:10.0f}" for c in cols)
        print(f"{label:18} {got['layer']:9} {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.threading_layer", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--busy", type=int, default=2, help="busy processes for the loaded table (0: none)")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.repeats)))
        return 0
    _table("median µs per call, 2 threads, cores free", args.repeats)
    if args.busy:
        spin = "import time\nwhile True: time.perf_counter()"
        busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(args.busy)]
        try:
            time.sleep(0.5)
            _table(f"\nmedian µs per call, 2 threads, {args.busy} busy processes beside", args.repeats)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
