"""``python -m benchmarks``: dualnorm's layers and experiments against PyTorch, mlx.nn,
a textbook NumPy version and the memory floor; times and ratios from one run.

    python -m benchmarks                 # the full suite (a few minutes on 2 cores)
    python -m benchmarks --quick         # smaller shapes and runs (a minute or two)
    python -m benchmarks --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import os
import sys


def _set_threads(n: int) -> None:
    # Before NumPy/PyTorch start their thread pools.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_NUM_THREADS"):
        os.environ[var] = str(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats, shorter runs")
    parser.add_argument(
        "--repeats", type=int, help="timed repeats per layer measurement (default 9, quick 3)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every library")
    parser.add_argument("--no-layers", action="store_true", help="skip the layer measurements")
    parser.add_argument(
        "--no-cnn", action="store_true", help="skip Conv2d, MaxPool2d and the SimpleCNN training step"
    )
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end experiments")
    parser.add_argument(
        "--backends", nargs="+", metavar="NAME", help="the CNN and end-to-end rows for these backends only"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    args = parser.parse_args(argv)
    _set_threads(args.threads)

    from rich.console import Console

    from benchmarks import e2e, layers, report
    from dualnorm import available_backends, bench_cnn
    from dualnorm._console import output_console
    from dualnorm.bench import FULL_CASES, QUICK_CASES, check_result_path, machine

    for path, what in ((args.json, "JSON file"), (args.markdown, "Markdown file")):
        problem = path and check_result_path(path, what)  # before minutes of measuring, not after
        if problem:
            print(f"python -m benchmarks: error: {problem}", file=sys.stderr)
            return 2

    unknown = sorted(set(args.backends or ()) - set(available_backends()))
    if unknown:
        print(
            f"python -m benchmarks: error: --backends {' '.join(unknown)}: not available here "
            f"(available: {', '.join(available_backends())})",
            file=sys.stderr,
        )
        return 2
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    console = Console(stderr=True)  # progress lines: console.log pads them to the console's width
    log = lambda msg: console.log(msg)  # noqa: E731
    info = machine()
    info["threads"] = args.threads
    repeats = args.repeats or (3 if args.quick else 9)
    layer_results = (
        [] if args.no_layers else layers.run(QUICK_CASES if args.quick else FULL_CASES, repeats, log)
    )
    cnn_results = []
    if not args.no_cnn:
        # each library in its own process at --threads: OpenBLAS's and PyTorch's pools fight in one
        batch = bench_cnn.QUICK_BATCH if args.quick else bench_cnn.BATCH
        rounds = 1 if args.quick else 3
        cnn_repeats = args.repeats or (3 if args.quick else 5)
        info["cnn"] = {"batch": batch, "rounds": rounds, "repeats": cnn_repeats}
        cnn_results, _ = bench_cnn.run_cnn(
            args.backends or available_backends(),
            bench_cnn.cnn_cases(batch),
            repeats=cnn_repeats,
            rounds=rounds,
            threads=args.threads,
            progress=log,
        )
    e2e_rows = [] if args.no_e2e else e2e.run(args.quick, log, args.backends)
    info["loadavg_end"] = machine().get("loadavg")
    out = output_console()
    report.print_tables(out, info, layer_results, e2e_rows, cnn_results)
    if args.json:
        report.write_json(args.json, info, layer_results, e2e_rows, cnn_results)
    if args.markdown:
        report.write_markdown(args.markdown, info, layer_results, e2e_rows, cnn_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
