"""Start-up of the terminal UI: from launch until the demo's first training records are on screen.

    python benchmarks/startup.py [--experiment dying-relu] [--backend numpy]

Opens the app headless (as ``dualnorm tui --experiment dying-relu`` opens on a terminal),
waits until the first records have reached the screen, then quits. Time the
whole process from outside, with an empty and with a filled numba cache, e.g.::

    NUMBA_CACHE_DIR=/tmp/cold farm-bench -- sh -c 'rm -rf /tmp/cold; exec python benchmarks/startup.py'
    farm-bench -- python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tui.app import DualnormApp
from tui.screens import RunScreen


async def first_records(experiment: str, backend: str, every: bool, limit_s: float = 300.0) -> float:
    app = DualnormApp(experiment=experiment, backend=backend)
    t0 = time.perf_counter()
    async with app.run_test(size=(160, 50)) as pilot:
        while time.perf_counter() - t0 < limit_s:
            await pilot.pause(0.02)
            screen = app.screen
            if isinstance(screen, RunScreen):
                screen.poll(force=True)
                states = list(screen.state.variants.values())
                if every and states and all(v.last_step >= 1 for v in states):
                    break
                if not every and screen.state.total_steps >= 1:
                    break
        elapsed = time.perf_counter() - t0
        await pilot.press("q")
    app.stop_all()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="dying-relu")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument(
        "--every-variant",
        action="store_true",
        help="wait for every variant's first records (dying-relu trains plain, then batchnorm: "
        "this includes the whole plain run and batch norm's first compile)",
    )
    args = parser.parse_args(argv)
    elapsed = asyncio.run(first_records(args.experiment, args.backend, args.every_variant))
    what = "every variant's first records" if args.every_variant else "first records"
    print(f"{what} on screen {elapsed:.2f} s after the app started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
