"""The ``dualnorm`` command: list, run, compare, tui and bench.

::

    dualnorm list
    dualnorm run dying-relu --backend numpy --json runs/dying.jsonl
    dualnorm run dying-relu --backend mlx --device cpu
    dualnorm compare dying-relu --backends numpy,mlx-cpu --steps 500 --no-tui
    dualnorm run init-sweep --mnist ~/.keras/datasets/mnist.npz --variants s00-batchnorm,s00-plain
    dualnorm run my_experiments.py:Wider --out runs/wider
    dualnorm tui --experiment sigmoid-depth
    dualnorm tui runs/wider dualnorm-runs/dying-relu-20260101-120000
    dualnorm bench

Exit codes: 0 success, 1 a run failed unexpectedly (``compare``: or the backends disagree
beyond ``--tol``), 2 bad input (unknown experiment, backend, device, variant or option; a
missing or malformed MNIST path), 130 interrupted.
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
    sub = parser.add_subparsers(dest="command", metavar="{list,run,compare,tui,bench}")
    sub.required = True
    sub.add_parser("list", help="list the experiments and the backends available here")

    run = sub.add_parser("run", help="run an experiment headless, with a progress bar and a summary")
    run.add_argument(
        "experiment",
        metavar="NAME",
        help=f"one of: {', '.join(names)}; or your own: path/to/file.py:ClassName, or an installed entry point",
    )
    run.add_argument("--backend", choices=BACKEND_NAMES, help="array backend (default: the active one)")
    run.add_argument("--steps", type=positive_int, help="optimizer steps per variant")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--lr", type=positive_float, help="learning rate")
    run.add_argument("--record-every", type=positive_int, help="record per-layer statistics every K steps")
    run.add_argument("--variants", type=_csv, help="comma-separated subset of the experiment's variants")
    run.add_argument(
        "--mnist", metavar="PATH", help="MNIST files (mnist.npz or the IDX files) instead of digits"
    )
    run.add_argument(
        "--cifar10", metavar="PATH", help="simple-cnn: the extracted CIFAR-10 (cifar-10-batches-py or -bin)"
    )
    run.add_argument("--json", metavar="FILE", help="also write every record as JSON Lines to FILE")
    run.add_argument(
        "--out",
        metavar="DIR",
        help="run directory (default ./dualnorm-runs/NAME-TIME); open it with dualnorm tui DIR",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_option(run)
    _add_compare_parser(sub, names)

    # Listed for --help only; main() hands their arguments to tui.app.main / dualnorm.bench.main.
    sub.add_parser(
        "tui",
        help="the live terminal app: dualnorm tui [RUN_DIR_OR_JSONL ...] [--experiment NAME|file.py:Class] [--backend B]",
    )
    sub.add_parser("bench", help="benchmarks against PyTorch, MLX and NumPy")
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def check_run_paths(paths: Sequence[str]) -> str | None:
    """Every path opens as a run (a run directory, a UI export, a records file): None, or one line
    naming the first that does not, with a hint where one fits (``dualnorm tui`` and the viewer)."""
    from dualnorm.errors import DualnormError
    from dualnorm.tracking import RunReader

    for path in paths:
        try:
            RunReader(path)
        except DualnormError as exc:
            return f"{exc}{_run_path_hint(str(path))}"
    return None


def _run_path_hint(path: str) -> str:
    _, sep, cls = path.rpartition(":")
    spec = path if sep and cls.isidentifier() else f"{path}:ClassName"  # my_experiments.py:Wider
    if spec.rpartition(":")[0].endswith(".py"):
        return f"; did you mean -x? (dualnorm tui -x {spec} runs an experiment from a file)"
    if not Path(path).exists() and path in _experiments():
        return f"; did you mean -x {path}? (a demo's name)"
    return ""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _error(message: str) -> int:
    print(f"dualnorm: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# --- list ----------------------------------------------------------------------------------


def _cmd_list() -> int:
    from rich.table import Table

    from dualnorm._console import output_console

    console = output_console()
    table = Table(title="experiments", show_lines=False)
    for col in ("name", "variants", "steps", "summary"):
        table.add_column(col)
    for exp in _experiments().values():
        variants = ", ".join(exp.variants) if len(exp.variants) <= 4 else f"{len(exp.variants)} variants"
        table.add_row(exp.name, variants, str(exp.default_steps), exp.summary)
    from dualnorm.experiments.loading import ENTRY_POINT_GROUP, entry_points

    for name, ep in sorted(entry_points().items()):  # installed packages' experiments, loaded on use
        table.add_row(name, "-", "-", f"entry point {ep.value} ({ENTRY_POINT_GROUP})")
    console.print(table)
    console.print(_backends_table())
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

    exp, problem = _resolve_experiment(args.experiment)
    if problem:
        return _error(problem)
    problem = apply_device(args.backend, args.device)
    if problem:
        return _error(problem)
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
    if args.cifar10 is not None:
        if "cifar10" not in getattr(exp, "option_names", ()):
            return _error(f"{exp.name} does not use CIFAR-10; --cifar10 applies to simple-cnn")
        options["cifar10"] = args.cifar10
    config = RunConfig(
        backend=args.backend,
        steps=args.steps,
        seed=args.seed,
        lr=args.lr,
        record_every=args.record_every,
        variants=args.variants,
        options=options,
    )
    problem = _check_outputs(args)
    if problem:
        return _error(problem)
    from dualnorm._threads import blas_threads_for
    from dualnorm.backends.kernels_numba import add_compile_listener

    try:
        records = exp.run(config)
    except (InputError, DatasetError, BackendError) as exc:
        return _error(str(exc))
    try:
        run_dir = _open_run_dir(args, exp, config)
    except (InputError, ValueError) as exc:
        return _error(str(exc))
    writer = _JsonWriter(args.json) if args.json else None
    complete = False
    status, failure = "failed", None
    summary: dict[str, dict[str, Any]] = {}
    # a first run's compile pause gets one line; the listener goes with the run
    stop_notices = add_compile_listener(lambda message: print(message, file=sys.stderr))
    try:
        with blas_threads_for(exp):
            _drive(exp, config, records, _Tee(writer, run_dir), summary, quiet=args.quiet)
        complete = True
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        print("dualnorm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InputError, DatasetError, BackendError) as exc:
        failure = str(exc)
        return _error(str(exc))
    finally:
        stop_notices()
        run_dir.finish(status, failure)
        if writer is not None:
            where = writer.finish(complete)
            if not complete:
                print(f"dualnorm: the records so far are in {where}", file=sys.stderr)
        if not complete:
            print(f"dualnorm: the run directory is {run_dir.dir}", file=sys.stderr)
    _print_summary(exp, summary)
    if writer is not None:
        print(f"records written to {writer.path}")
    print(f"run written to {run_dir.dir}  (view it: dualnorm tui {run_dir.dir})")
    return EXIT_OK


def _resolve_experiment(spec: str) -> tuple[Any, str | None]:
    """(experiment, None), or (None, one-line error) for an unknown name or a broken user file."""
    from dualnorm.experiments.loading import ExperimentLoadError, load_experiment

    try:
        return load_experiment(spec), None
    except ExperimentLoadError as exc:
        if exc.details:
            print(exc.details.rstrip(), file=sys.stderr)
        return None, str(exc)


def _check_outputs(args: argparse.Namespace) -> str | None:
    """Every output path, checked before any work starts: one line naming the path and why."""
    from dualnorm.tracking import OutputPathError, check_output_dir, check_output_file

    try:
        if args.json:
            check_output_file(args.json)
        if args.out:
            check_output_dir(args.out)
    except OutputPathError as exc:
        return str(exc)
    return None


def _open_run_dir(args: argparse.Namespace, exp: Any, config: Any) -> Any:
    from dualnorm.runlog import _config_to_dict
    from dualnorm.tracking import RunWriter, default_run_dir

    directory = args.out or default_run_dir(exp.name)
    return RunWriter(
        directory,
        name=exp.name,
        experiment=exp.name,
        variants=list(exp.selected_variants(config)),
        backend=config.backend,
        config=_config_to_dict(config),
    )


class _Tee:
    """Writes every record to the run directory and, with --json, to the JSON Lines file."""

    def __init__(self, *writers: Any) -> None:
        self.writers = [w for w in writers if w is not None]

    def write(self, record: Any) -> None:
        for w in self.writers:
            w.write(record)


def _drive(exp: Any, config: Any, records: Any, writer: Any, summary: dict, *, quiet: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    variants = exp.selected_variants(config)  # the experiment's defaults: it may run a subset, or size steps
    steps = exp.steps(config)  # by its data
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
            if record.extra.get("print"):  # an experiment's own line, e.g. simple-cnn's per-epoch summary
                progress.console.print(record.extra["print"], markup=False, highlight=False)
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
    from rich.table import Table

    from dualnorm._console import output_console

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
    output_console().print(table)


# --- devices and compare -------------------------------------------------------------------

#: compare's default --tol: the largest relative loss difference still called agreement. Float32
#: rounding alone moves dying-relu's final 1e-4 loss by 0.4 % between NumPy and MLX (measured).
COMPARE_TOL = 1e-2


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="MLX device: gpu or cpu (default: the GPU where MLX has one, else the CPU; or DUALNORM_DEVICE)",
    )


def apply_device(backend: str | None, device: str | None) -> str | None:
    """``--device``: make (backend, device) this process's default; an error message, or None."""
    from dualnorm.backends import use_device_everywhere
    from dualnorm.errors import BackendError

    try:
        use_device_everywhere(backend, device)
    except BackendError as exc:
        return str(exc)
    return None


def _backends_table() -> Any:
    from rich.table import Table

    from dualnorm.backends import backend_names, get_backend
    from dualnorm.errors import BackendError

    table = Table(title="backends")
    table.add_column("name")
    table.add_column("available")
    table.add_column("devices here (default first)")
    for name in backend_names():
        try:
            backend = get_backend(name)
            status = "yes"
            cls = type(backend)
            default = cls.default_device()
            devices = [default, *(d for d in cls.available_devices() if d != default)]
            absent = [d for d in cls.devices if d not in devices]
            where = ", ".join(devices) + (f" (no {', '.join(absent)} here)" if absent else "")
        except BackendError as exc:
            status, where = f"no: {exc}", "-"
        table.add_row(name, status, where)
    return table


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _add_compare_parser(sub: Any, names: list[str]) -> None:
    p = sub.add_parser(
        "compare",
        help="the same run on several backends side by side; exit 1 when they disagree beyond --tol",
    )
    p.add_argument("experiment", metavar="NAME", help=f"one of: {', '.join(names)}, or path/to/file.py:Class")
    p.add_argument(
        "--backends",
        type=_csv,
        help="comma-separated, the first is the reference: numpy, mlx-cpu, mlx-gpu, and torch, mlx.nn "
        "(the experiment written in PyTorch / mlx.nn, when installed) (default: every backend here)",
    )
    p.add_argument(
        "--tol",
        type=_nonneg_float,
        default=COMPARE_TOL,
        help=f"largest relative loss difference called agreement (default {COMPARE_TOL:g})",
    )
    p.add_argument("--steps", type=positive_int, help="optimizer steps per variant")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--lr", type=positive_float, help="learning rate")
    p.add_argument("--record-every", type=positive_int, help="record per-layer statistics every K steps")
    p.add_argument("--variants", type=_csv, help="comma-separated subset of the experiment's variants")
    p.add_argument(
        "--no-tui",
        action="store_true",
        help="print the comparison as tables (default: live in the terminal UI)",
    )
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON to FILE")
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help="MLX device for every MLX backend compared: gpu or cpu (NumPy runs on the CPU); "
        "the same as --backends numpy,mlx-DEVICE",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="each backend's run directory goes in DIR/<backend> (default ./dualnorm-runs/compare-NAME-TIME)",
    )
    p.add_argument(
        "--concurrent",
        action="store_true",
        help="run the backends at the same time: sooner done, but they share the cores, so the "
        "timings are not comparable (default: one after another)",
    )


def _on_device(backends: dict[str, Any], device: str) -> dict[str, Any]:
    """compare's ``--device``: every backend that has ``device`` runs on it; one that does not
    (NumPy: the CPU only) stays as it is. Raises BackendError for a device no backend has."""
    from dualnorm.backends import get_backend
    from dualnorm.errors import BackendError

    wanted = str(device).strip().lower()
    # the reference frameworks (torch, mlx.nn) have no devices here: they stay as they are
    known = sorted({d for b in backends.values() for d in getattr(type(b), "devices", ())})
    if wanted not in known:
        raise BackendError(f"unknown device {device!r}; choose from: {', '.join(known)}")
    out = {}
    for label, backend in backends.items():
        if wanted in getattr(type(backend), "devices", ()):
            backend = get_backend(backend.name, wanted)
            label = backend.label
        out.setdefault(label, backend)
    return out


def _compare_run_args(args: argparse.Namespace) -> list[str]:
    """The ``dualnorm run`` arguments every backend's child gets: the same experiment, seed and steps."""
    out = ["--seed", str(args.seed)]
    for flag, value in (("--steps", args.steps), ("--lr", args.lr), ("--record-every", args.record_every)):
        if value is not None:
            out += [flag, str(value)]
    if args.variants:
        out += ["--variants", ",".join(args.variants)]
    return out


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    from dualnorm._console import output_console
    from dualnorm.backends import available_labels, get_backend
    from dualnorm.compare import CompareJob
    from dualnorm.errors import BackendError, InputError
    from dualnorm.references import FRAMEWORKS, check_reference, reference_framework
    from dualnorm.tracking import OutputPathError, check_output_dir, check_output_file, default_run_dir

    console = output_console()
    here = available_labels()
    labels = list(dict.fromkeys(args.backends or here))
    backends = {}
    for label in labels:
        try:
            backends[label] = reference_framework(label) if label in FRAMEWORKS else get_backend(label)
        except (BackendError, InputError) as exc:
            return _error(f"{exc} (backends available here: {', '.join(here)}; references: torch, mlx.nn)")
    if args.device is not None:
        try:
            backends = _on_device(backends, args.device)
        except BackendError as exc:
            return _error(f"{exc} (backends available here: {', '.join(here)})")
        labels = list(backends)
    if len(labels) < 2:
        return _error(f"compare needs at least two backends; available here: {', '.join(here)}")
    exp, problem = _resolve_experiment(args.experiment)
    if problem:
        return _error(problem)
    try:
        if any(label in FRAMEWORKS for label in labels):
            check_reference(args.experiment, args.variants)
    except InputError as exc:
        return _error(str(exc))
    try:
        if args.json:
            check_output_file(args.json)
        out = check_output_dir(args.out or default_run_dir(f"compare-{exp.name}"))
    except OutputPathError as exc:
        return _error(str(exc))
    job = CompareJob(
        args.experiment, backends, out, run_args=_compare_run_args(args), concurrent=args.concurrent
    )
    mode = "concurrent" if args.concurrent else "sequential"
    if not args.no_tui:
        code = _compare_in_tui(job, args)
        if code is not None:
            return code
    else:
        console.print(f"[bold]dualnorm compare {exp.name}[/]: {', '.join(labels)} ({mode})")
        job.start()
        try:
            job.wait(lambda c: console.print(f"  {c.label}: {c.wall_s:.1f} s (exit {c.code})"))
        except KeyboardInterrupt:
            job.stop()
            print("dualnorm: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    refused = job.usage_error()
    if refused is not None:
        sys.stderr.write(refused.stderr)
        return EXIT_USAGE
    comparison = job.comparison(args.tol)
    _print_comparison(console, comparison)
    if args.json:
        payload = {"experiment": exp.name, "seed": args.seed, "steps": args.steps, "mode": mode}
        payload.update(comparison.to_dict())
        payload["run_dirs"] = {label: str(path) for label, path in job.run_dirs.items()}
        from dualnorm.checkpoint import atomic_write

        atomic_write(Path(args.json), json.dumps(payload, indent=2, allow_nan=False).encode())
        console.print(f"comparison written to {args.json}")
    console.print(f"runs in {out}  (reopen them: dualnorm tui {' '.join(map(str, job.run_dirs.values()))})")
    return EXIT_OK if comparison.agree else EXIT_FAILED


def _compare_in_tui(job: Any, args: argparse.Namespace) -> int | None:
    """The comparison live in the terminal UI; None once the UI closes (the caller prints the table)."""
    try:
        from tui.app import run_compare
    except ImportError as exc:
        print(
            f"dualnorm: the terminal UI is not installed ({exc}); "
            'pip install "dualnorm[tui]", or pass --no-tui for the tables',
            file=sys.stderr,
        )
        return EXIT_USAGE
    job.start()
    try:
        code = run_compare(job, tol=args.tol)  # 130 after Ctrl-C, None after q/esc
    finally:
        job.stop()
    return code or None


def _print_comparison(console: Any, comparison: Any) -> None:
    from dualnorm.compare import comparison_tables

    for table in comparison_tables(comparison):
        console.print(table)


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
    if args.command == "compare":
        return _cmd_compare(args)
    return EXIT_USAGE  # pragma: no cover (tui and bench are handled above)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
