"""Check a launch: every rank connects, sums its rank number with the others and reports.

    mpiexec -n 2 python -m dualnorm.distributed
    mlx.launch -n 2 -- python -m dualnorm.distributed

Exits 0 on every rank when the group works, non-zero with the reason otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import dualnorm.distributed as dist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dualnorm.distributed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--engine", default="auto", choices=dist.ENGINES)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per collective (default 30)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    group = dist.init_process_group(args.engine, timeout=args.timeout, connect_timeout=args.timeout)
    connected = time.perf_counter() - start
    total = group.allreduce_sum(np.array([float(group.rank)]))
    expected = group.size * (group.size - 1) / 2
    gathered = np.asarray(group.allgather(np.array([float(group.rank)]))).ravel().tolist()
    ok = float(np.asarray(total)[0]) == expected and gathered == [float(r) for r in range(group.size)]
    print(
        f"rank {group.rank} of {group.size} ({group.engine}): connected in {connected:.2f} s, "
        f"allreduce_sum {'ok' if ok else 'WRONG'}, allgather {gathered}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
