"""The ``dualnorm`` command: list, run, tui and bench.

::

    dualnorm list
    dualnorm run dying-relu --backend numpy --json runs/dying.jsonl
    dualnorm run init-sweep --mnist ~/.keras/datasets/mnist.npz --variants s00-batchnorm,s00-plain
    dualnorm tui --experiment sigmoid-depth
    dualnorm bench

Exit codes: 0 success, 1 a run failed unexpectedly, 2 bad input (unknown experiment,
backend, variant or option; a missing or malformed MNIST path), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualnorm.backends import BACKEND_NAMES

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TUI_HINT = 'the terminal UI needs its extra dependencies: pip install "dualnorm[tui]"'
BENCH_HINT = "dualnorm bench could not be loaded; reinstall dualnorm: pip install --force-reinstall dualnorm"


def _experiments() -> dict[str, Any]:
    from dualnorm.experiments import EXPERIMENTS

    return EXPERIMENTS


def _parser() -> argparse.ArgumentParser:
    names = list(_experiments())
    parser = argparse.ArgumentParser(
        prog="dualnorm",
        description="Normalization layers on NumPy and MLX: run the documents' experiments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{list,run,tui,bench}")
    sub.required = True
    sub.add_parser("list", help="list the experiments and the backends available here")

    run = sub.add_parser("run", help="run an experiment headless, with a progress bar and a summary")
    run.add_argument("experiment", choices=names, metavar="NAME", help=f"one of: {', '.join(names)}")
    run.add_argument("--backend", choices=BACKEND_NAMES, help="array backend (default: the active one)")
    run.add_argument("--steps", type=_positive_int, help="optimizer steps per variant")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--lr", type=_positive_float, help="learning rate")
    run.add_argument("--record-every", type=_positive_int, help="record per-layer statistics every K steps")
    run.add_argument("--variants", type=_csv, help="comma-separated subset of the experiment's variants")
    run.add_argument(
        "--mnist", metavar="PATH", help="MNIST files (mnist.npz or the IDX files) instead of digits"
    )
    run.add_argument("--json", metavar="FILE", help="write every record as JSON Lines to FILE")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    # Listed for --help only; main() hands their arguments to tui.app.main / dualnorm.bench.main.
    sub.add_parser("tui", help="the live terminal app: dualnorm tui [--experiment NAME] [--backend B]")
    sub.add_parser("bench", help="benchmarks against PyTorch, MLX and NumPy")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _error(message: str) -> int:
    print(f"dualnorm: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# --- list ----------------------------------------------------------------------------------


def _cmd_list() -> int:
    from rich.console import Console
    from rich.table import Table

    from dualnorm.backends import get_backend
    from dualnorm.errors import BackendError

    console = Console()
    table = Table(title="experiments", show_lines=False)
    for col in ("name", "variants", "steps", "summary"):
        table.add_column(col)
    for exp in _experiments().values():
        variants = ", ".join(exp.variants) if len(exp.variants) <= 4 else f"{len(exp.variants)} variants"
        table.add_row(exp.name, variants, str(exp.default_steps), exp.summary)
    console.print(table)
    backends = Table(title="backends")
    backends.add_column("name")
    backends.add_column("available")
    for name in BACKEND_NAMES:
        try:
            get_backend(name)
            status = "yes"
        except BackendError as exc:
            status = f"no: {exc}"
        backends.add_row(name, status)
    console.print(backends)
    return EXIT_OK


# --- run -----------------------------------------------------------------------------------


class _JsonWriter:
    """JSON Lines written as they come to FILE.partial, renamed to FILE when the run ends."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.partial, "w", encoding="utf-8")  # noqa: SIM115 (closed in finish)

    def write(self, record: Any) -> None:
        self.fh.write(record.to_json() + "\n")
        self.fh.flush()

    def finish(self, complete: bool) -> Path:
        self.fh.close()
        if complete:
            os.replace(self.partial, self.path)
            return self.path
        return self.partial


def _cmd_run(args: argparse.Namespace) -> int:
    from dualnorm.backends import get_backend
    from dualnorm.data import DatasetError
    from dualnorm.errors import BackendError, InputError
    from dualnorm.experiments import RunConfig

    exp = _experiments()[args.experiment]
    if args.backend is not None:
        try:
            get_backend(args.backend)
        except BackendError as exc:
            return _error(str(exc))
    if args.variants is not None:
        unknown = [v for v in args.variants if v not in exp.variants]
        if unknown or not args.variants:
            return _error(
                f"unknown variant(s) for {exp.name}: {', '.join(unknown) or '(none given)'}; "
                f"choose from: {', '.join(exp.variants)}"
            )
    options: dict[str, Any] = {}
    if args.mnist is not None:
        if not getattr(exp, "uses_dataset", False):
            users = [e.name for e in _experiments().values() if getattr(e, "uses_dataset", False)]
            return _error(f"{exp.name} does not use a dataset; --mnist applies to: {', '.join(users)}")
        from dualnorm.data import load_mnist

        try:
            load_mnist(args.mnist)
        except DatasetError as exc:
            return _error(str(exc))
        options["dataset"] = args.mnist
    config = RunConfig(
        backend=args.backend,
        steps=args.steps,
        seed=args.seed,
        lr=args.lr,
        record_every=args.record_every,
        variants=args.variants,
        options=options,
    )
    from dualnorm.backends.kernels_numba import add_compile_listener

    add_compile_listener(lambda message: print(message, file=sys.stderr))  # a first run's compile pause
    try:
        records = exp.run(config)
    except (InputError, DatasetError, BackendError) as exc:
        return _error(str(exc))
    writer = _JsonWriter(args.json) if args.json else None
    complete = False
    summary: dict[str, dict[str, Any]] = {}
    try:
        _drive(exp, config, records, writer, summary, quiet=args.quiet)
        complete = True
    except KeyboardInterrupt:
        print("dualnorm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InputError, DatasetError, BackendError) as exc:
        return _error(str(exc))
    finally:
        if writer is not None:
            where = writer.finish(complete)
            if not complete:
                print(f"dualnorm: the records so far are in {where}", file=sys.stderr)
    _print_summary(exp, summary)
    if writer is not None:
        print(f"records written to {writer.path}")
    return EXIT_OK


def _drive(exp: Any, config: Any, records: Any, writer: Any, summary: dict, *, quiet: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    variants = config.variants or exp.variants
    steps = config.steps or exp.default_steps
    forward_only = sum(1 for v in variants if v.startswith("forward-"))
    total = steps * (len(variants) - forward_only) + forward_only
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )
    done_before: dict[str, int] = {}
    finished = 0
    with progress:
        task = progress.add_task(exp.name, total=total, loss="-")
        for record in records:
            if writer is not None:
                writer.write(record)
            entry = summary.setdefault(record.variant, {"start": time.perf_counter()})
            entry.update(
                loss=record.loss,
                accuracy=record.accuracy if record.accuracy is not None else entry.get("accuracy"),
                status=record.status,
                message=record.message,
                step=record.step,
                elapsed=record.elapsed_s,
            )
            advanced = max(record.step, 1 if record.status != "running" else 0)
            delta = advanced - done_before.get(record.variant, 0)
            done_before[record.variant] = advanced
            if record.status != "running":
                # a finished (or diverged) variant counts in full
                full = 1 if record.variant.startswith("forward-") else steps
                delta += full - advanced
                finished += 1
            progress.update(
                task,
                advance=delta,
                description=f"{exp.name} [{record.variant}]",
                loss=f"{record.loss:.4g}",
            )


def _print_summary(exp: Any, summary: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{exp.name}: summary")
    for col in ("variant", "final loss", "accuracy", "status", "steps", "steps/s"):
        table.add_column(col, justify="right" if col not in ("variant", "status") else "left")
    for variant, entry in summary.items():
        acc = entry.get("accuracy")
        elapsed = entry.get("elapsed") or 0.0
        rate = entry["step"] / elapsed if elapsed > 0 and entry["step"] else None
        status = entry["status"]
        if status == "diverged":
            status = f"[red]diverged[/red] ({entry['message']})"
        trained = entry["step"] > 0  # step 0: a forward-only view, there is no loss to report
        if not trained:
            status = f"{status} (forward only)"
        table.add_row(
            variant,
            f"{entry['loss']:.6g}" if trained else "-",
            "-" if acc is None else f"{acc:.3f}",
            status,
            str(entry["step"]),
            "-" if rate is None else f"{rate:,.0f}",
        )
    Console().print(table)


# --- tui / bench ---------------------------------------------------------------------------


def _delegate(module_name: str, argv: list[str], hint: str) -> int:
    import importlib

    try:
        module = importlib.import_module(module_name)
        entry = module.main
    except ImportError as exc:
        print(f"dualnorm: {hint} ({exc})", file=sys.stderr)
        return EXIT_USAGE
    except AttributeError:
        print(f"dualnorm: {hint} ({module_name} has no main())", file=sys.stderr)
        return EXIT_USAGE
    result = entry(argv)
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # tui and bench own their arguments (and their --help): hand everything after the name on.
    if argv and argv[0] == "tui":
        return _delegate("tui.app", argv[1:], TUI_HINT)
    if argv and argv[0] == "bench":
        return _delegate("dualnorm.bench", argv[1:], BENCH_HINT)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command == "list":
        return _cmd_list()
    if args.command == "run":
        return _cmd_run(args)
    return EXIT_USAGE  # pragma: no cover (tui and bench are handled above)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
