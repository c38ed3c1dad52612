"""``dualnorm bench``: time the normalization layers on every installed backend.

A short run for people comparing backends on their own machine (e.g. MLX vs NumPy on
a Mac): batch norm, layer norm and group norm, training forward and forward+backward,
float32, the same inputs for every backend, median of several interleaved repeats.
The table shows each backend's time, its ratio to NumPy's (``mlx/numpy`` = MLX's time /
NumPy's: < 1 is faster, the one convention of every benchmark table), its ratio to the
memory floor (one copy of the input) and the largest absolute difference between the
backends' outputs and input gradients.

A second table (``--cnn`` alone, ``--no-cnn`` without) times Conv2d, MaxPool2d(2) and one SimpleCNN
training step against PyTorch CPU, each library in its own process at the same thread count
(:mod:`dualnorm.bench_cnn`); ``numpy/torch`` = dualnorm's time / PyTorch's.

The timing helpers here are shared with the full suite in the repository's
``benchmarks/`` folder (which adds PyTorch, ``mlx.nn``, a textbook NumPy version and
the end-to-end experiments).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dualnorm
from dualnorm import nn
from dualnorm._console import RATIO_RULE, fmt_ratio, output_console, titled_table

# --- timing ---------------------------------------------------------------------------------


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int = 7, warmup: int = 2, min_time: float = 0.0
) -> dict[str, list[float]]:
    """Seconds per call of every function, measured round-robin.

    Each repeat calls every function once, in turn, so a slow spell of the machine
    (another process, frequency changes) hits all of them alike. ``min_time``
    keeps repeating until the slowest function has that many seconds in total.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    done = 0
    while done < repeats or (min_time and max(sum(v) for v in times.values()) < min_time and done < 100):
        for name, fn in fns.items():
            gc.disable()
            try:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            finally:
                gc.enable()
        done += 1
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dualnorm": getattr(dualnorm, "__version__", "?"),
        "backends": dualnorm.available_backends(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["processor"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    try:
        import mlx.core as mx

        info["mlx"] = mx.__version__
        info["mlx_device"] = str(mx.default_device())
    except Exception:
        pass
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DUALNORM_NUM_THREADS"):
        if var in os.environ:
            info[var] = os.environ[var]
    return info


# --- the layer cases ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One layer measurement: ``kind`` in {"batchnorm", "layernorm", "groupnorm"}."""

    kind: str
    shape: tuple[int, ...]
    groups: int = 0

    @property
    def id(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        label = {"batchnorm": "BatchNorm", "layernorm": "LayerNorm", "groupnorm": "GroupNorm"}[self.kind]
        if self.kind == "batchnorm":
            label += "1d" if len(self.shape) <= 3 else "2d"
        if self.kind == "groupnorm":
            label += f"(G={self.groups})"
        return f"{label} {dims}"

    @property
    def channels(self) -> int:
        return self.shape[-1] if self.kind == "layernorm" else self.shape[1]

    def build(self) -> nn.Module:
        """The dualnorm layer on the active backend."""
        if self.kind == "batchnorm":
            return nn.BatchNorm1d(self.channels) if len(self.shape) <= 3 else nn.BatchNorm2d(self.channels)
        if self.kind == "layernorm":
            return nn.LayerNorm(self.channels)
        return nn.GroupNorm(self.groups, self.channels)


FULL_CASES = (
    Case("batchnorm", (4096, 1024)),
    Case("batchnorm", (256, 64, 32, 32)),
    Case("layernorm", (4096, 1024)),
    Case("groupnorm", (64, 64, 32, 32), groups=32),
)
QUICK_CASES = (
    Case("batchnorm", (1024, 512)),
    Case("batchnorm", (32, 64, 32, 32)),
    Case("layernorm", (1024, 512)),
    Case("groupnorm", (16, 64, 32, 32), groups=32),
)


def inputs(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The input (mean 0.5, std 2) and the upstream gradient, float32."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(case.shape, dtype=np.float32) * 2.0 + 0.5).astype(np.float32)
    g = rng.standard_normal(case.shape, dtype=np.float32)
    return x, g


def _zero_grads(layer: nn.Module) -> None:
    for p in layer.parameters():
        p.grad = None


def dualnorm_impl(case: Case, backend: str, x: np.ndarray, g: np.ndarray) -> dict[str, Callable[[], Any]]:
    """fwd / fwdbwd callables (and ``outputs``, for the cross-backend check) on one backend."""
    with dualnorm.use_backend(backend) as B:
        layer = case.build()
        xb, gb = B.asarray(x), B.asarray(g)
        B.eval(xb, gb)

    # on_device: an MLX layer runs on the device it was timed for (a no-op elsewhere)
    def fwd() -> Any:
        with B.on_device():
            y = layer(xb)
            B.eval(y)
        return y

    def fwdbwd() -> Any:
        with B.on_device():
            _zero_grads(layer)
            y = layer(xb)
            dx = layer.backward(gb)
            B.eval(y, dx, *(p.grad for p in layer.parameters()))
        return y, dx

    def outputs() -> tuple[np.ndarray, np.ndarray]:
        y, dx = fwdbwd()
        return np.asarray(B.to_numpy(y)), np.asarray(B.to_numpy(dx))

    def floor() -> None:
        with B.on_device():
            B.eval(copy_fn())

    buf = B.zeros_like(xb)

    def copy_fn() -> Any:
        return B.copy_into(buf, xb)

    return {"fwd": fwd, "fwdbwd": fwdbwd, "outputs": outputs, "floor": floor}


@dataclass
class LayerResult:
    case: str
    mode: str  # "fwd" or "fwdbwd"
    times: dict[str, float] = field(default_factory=dict)  # implementation -> median seconds


def run_backends(
    cases: tuple[Case, ...], backends: list[str], repeats: int, warmup: int = 2
) -> tuple[list[LayerResult], dict[str, float]]:
    """Time every case on every backend; returns results and the max output differences."""
    results: list[LayerResult] = []
    diffs: dict[str, float] = {}
    for case in cases:
        x, g = inputs(case)
        impls = {b: dualnorm_impl(case, b, x, g) for b in backends}
        for mode in ("fwd", "fwdbwd"):
            fns = {f"dualnorm-{b}": impls[b][mode] for b in backends}
            fns.update({f"floor-{b}": impls[b]["floor"] for b in backends})
            t = time_interleaved(fns, repeats=repeats, warmup=warmup)
            results.append(LayerResult(case.id, mode, {k: median(v) for k, v in t.items()}))
        if len(backends) > 1:
            outs = {b: impls[b]["outputs"]() for b in backends}
            ref = outs[backends[0]]
            diffs[case.id] = max(
                float(np.max(np.abs(outs[b][i] - ref[i]))) for b in backends[1:] for i in range(2)
            )
    return results, diffs


# --- the sweep: where each backend wins ---------------------------------------------------------

SWEEP_SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
QUICK_SWEEP_SIZES = (1_000, 10_000, 100_000, 1_000_000)
SWEEP_KINDS = ("batchnorm1d", "batchnorm2d", "layernorm", "groupnorm")


def sweep_case(kind: str, elements: int) -> Case:
    """A ``kind`` layer case with about ``elements`` input elements (at least 2 samples)."""
    if kind in ("batchnorm1d", "layernorm"):  # (N, 128)
        n = max(2, round(elements / 128))
        return Case("batchnorm" if kind == "batchnorm1d" else "layernorm", (n, 128))
    n = max(2, round(elements / 256))  # (N, 16, 4, 4)
    if kind == "batchnorm2d":
        return Case("batchnorm", (n, 16, 4, 4))
    if kind == "groupnorm":
        return Case("groupnorm", (n, 16, 4, 4), groups=4)
    raise ValueError(f"unknown sweep layer {kind!r}; choose from {', '.join(SWEEP_KINDS)}")


@dataclass
class SweepPoint:
    kind: str
    case: str
    elements: int
    median_s: dict[str, float] = field(default_factory=dict)  # label -> median seconds (fwd+bwd)
    first_call_s: dict[str, float] = field(default_factory=dict)  # label -> the first call, apart

    def ratio(self, label: str, reference: str) -> float:
        return self.median_s[label] / self.median_s[reference]


def run_sweep(
    labels: list[str],
    sizes: tuple[int, ...] = SWEEP_SIZES,
    kinds: tuple[str, ...] = SWEEP_KINDS,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> list[SweepPoint]:
    """Time forward+backward of every layer kind at every size on every backend label.

    Per (layer, size): each backend's first call is timed alone (compile and first-shape
    costs), one more warm-up call follows, then ``repeats`` calls round-robin across the
    backends; the median is kept. Every MLX result is evaluated inside the timing.
    """
    points = []
    for kind in kinds:
        for size in sizes:
            case = sweep_case(kind, size)
            if progress is not None:
                progress(f"{case.id}")
            x, g = inputs(case)
            point = SweepPoint(kind, case.id, int(np.prod(case.shape)))
            fns = {}
            for label in labels:
                impl = dualnorm_impl(case, label, x, g)
                t0 = time.perf_counter()
                impl["fwdbwd"]()
                point.first_call_s[label] = time.perf_counter() - t0
                fns[label] = impl["fwdbwd"]
            times = time_interleaved(fns, repeats=repeats, warmup=1)
            point.median_s = {label: median(v) for label, v in times.items()}
            points.append(point)
            del fns
            gc.collect()
    return points


# --- the sweep's PyTorch CPU row: its own process, dualnorm's thread count ------------------------

TORCH_LABEL = "torch-cpu"


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _torch_layer(case: Case) -> Any:
    import torch

    if case.kind == "batchnorm":
        return (
            torch.nn.BatchNorm1d(case.channels)
            if len(case.shape) <= 3
            else torch.nn.BatchNorm2d(case.channels)
        )
    if case.kind == "layernorm":
        return torch.nn.LayerNorm(case.channels)
    return torch.nn.GroupNorm(case.groups, case.channels)


def _torch_worker() -> None:
    """In the child: time PyTorch's forward+backward of the cases read from stdin (JSON) as
    :func:`run_sweep` times dualnorm's; print {case id: [first call s, median s]}."""
    import sys

    import torch

    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(spec["threads"])
    result = {}
    for kind, shape, groups in spec["cases"]:
        case = Case(kind, tuple(shape), groups)
        x, g = inputs(case)
        layer = _torch_layer(case).train()
        tx = torch.from_numpy(x).requires_grad_(True)
        tg = torch.from_numpy(g)

        def fwdbwd(layer: Any = layer, tx: Any = tx, tg: Any = tg) -> None:
            tx.grad = None
            layer.zero_grad(set_to_none=True)
            layer(tx).backward(tg)

        t0 = time.perf_counter()
        fwdbwd()
        first = time.perf_counter() - t0
        times = time_interleaved({"t": fwdbwd}, repeats=spec["repeats"], warmup=1)["t"]
        result[case.id] = [first, median(times)]
    print(json.dumps({"threads": torch.get_num_threads(), "cases": result}))


def torch_sweep(
    cases: list[Case], repeats: int, threads: int | None = None
) -> tuple[dict[str, tuple[float, float]], int]:
    """PyTorch CPU's (first call, median) seconds per case id, timed in a child process (its own
    thread pools, set to ``threads``: by default dualnorm's NumPy kernel thread count), and the
    thread count PyTorch ran with."""
    from dualnorm.backends import kernels_numpy
    from dualnorm.bench_cnn import run_timing_child

    threads = threads or kernels_numpy.get_num_threads()
    spec = {
        "cases": [[c.kind, list(c.shape), c.groups] for c in cases],
        "repeats": repeats,
        "threads": threads,
    }
    reply = run_timing_child(
        "from dualnorm.bench import _torch_worker; _torch_worker()", spec, threads, "PyTorch"
    )
    return {k: (v[0], v[1]) for k, v in reply["cases"].items()}, reply["threads"]


def add_torch_row(points: list[SweepPoint], repeats: int, threads: int | None = None) -> int:
    """Add PyTorch CPU (:data:`TORCH_LABEL`) to every sweep point, timed in its own process;
    returns PyTorch's thread count."""
    cases = [sweep_case(p.kind, p.elements) for p in points]  # a point's exact size gives its case back
    timed, used = torch_sweep(cases, repeats, threads)
    for p in points:
        p.first_call_s[TORCH_LABEL], p.median_s[TORCH_LABEL] = timed[p.case]
    return used


def crossovers(points: list[SweepPoint], labels: list[str]) -> dict[str, dict[str, int | None]]:
    """Per layer and backend (not the reference, the first label): the smallest size from which
    it is faster than the reference at every larger size measured; None if it never is."""
    out: dict[str, dict[str, int | None]] = {}
    ref = labels[0]
    for kind in dict.fromkeys(p.kind for p in points):
        row = sorted((p for p in points if p.kind == kind), key=lambda p: p.elements)
        out[kind] = {}
        for label in labels[1:]:
            start = None
            for p in reversed(row):
                if p.ratio(label, ref) < 1.0:
                    start = p.elements
                else:
                    break
            out[kind][label] = start
    return out


_MARKS = "●▲■◆x+"


def text_plot(series: dict[str, list[tuple[float, float]]], width: int = 56, height: int = 12) -> str:
    """A log-log scatter of (x, y) points per series, in text (the first letters are the legend)."""
    pts = [(math.log10(x), math.log10(y)) for s in series.values() for x, y in s if x > 0 and y > 0]
    if not pts:
        return "(nothing to plot)"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    grid = [[" "] * width for _ in range(height)]
    for mark, values in zip(_MARKS, series.values(), strict=False):
        for x, y in values:
            if x <= 0 or y <= 0:
                continue
            col = round((math.log10(x) - x0) / (x1 - x0) * (width - 1))
            row = height - 1 - round((math.log10(y) - y0) / (y1 - y0) * (height - 1))
            grid[row][col] = mark if grid[row][col] in (" ", mark) else "*"
    left = [f"{10**y1 * 1e3:9.3g} ms", *[" " * 12] * (height - 2), f"{10**y0 * 1e3:9.3g} ms"]
    lines = [f"{lab} |{''.join(r)}" for lab, r in zip(left, grid, strict=False)]
    lines.append(" " * 13 + "+" + "-" * width)
    lo, hi = f"{10**x0:.0e}", f"{10**x1:.0e} elements"
    lines.append(" " * 14 + lo + " " * max(1, width - len(lo) - len(hi)) + hi)
    legend = "   ".join(f"{m} {name}" for m, name in zip(_MARKS, series, strict=False))
    lines.append(" " * 14 + legend + "   (* = overlap)")
    return "\n".join(lines)


def _sweep_report(console: Any, points: list[SweepPoint], labels: list[str]) -> dict[str, Any]:

    ref = labels[0]
    cross = crossovers(points, labels)
    for kind in dict.fromkeys(p.kind for p in points):
        row = [p for p in points if p.kind == kind]
        table = titled_table(f"{kind}: forward+backward, float32, median ms (first call apart); {RATIO_RULE}")
        table.add_column("input")
        table.add_column("elements", justify="right")
        for label in labels:
            table.add_column(f"{label} ms", justify="right")
            table.add_column(f"{label} 1st", justify="right")
        for label in labels[1:]:
            table.add_column(f"{label}/{ref}", justify="right")
        for p in row:
            cells = [p.case.split(" ", 1)[1], f"{p.elements:,}"]
            for label in labels:
                cells += [f"{p.median_s[label] * 1e3:.3g}", f"{p.first_call_s[label] * 1e3:.3g}"]
            cells += [fmt_ratio(p.median_s[label], p.median_s[ref]) for label in labels[1:]]
            table.add_row(*cells)
        console.print(table)
        console.print(text_plot({label: [(p.elements, p.median_s[label]) for p in row] for label in labels}))
        for label in labels[1:]:
            start = cross[kind][label]
            faster = [p for p in row if p.ratio(label, ref) < 1.0]
            if not faster:
                verdict = f"slower than {ref} at every size measured"
            elif start == row[0].elements:
                verdict = f"faster than {ref} at every size measured"
            elif start is not None:
                verdict = f"faster than {ref} from {start:,} elements up (the crossover)"
            else:
                sizes = ", ".join(
                    f"{p.elements:,} ({fmt_ratio(p.median_s[label], p.median_s[ref])})" for p in faster
                )
                verdict = f"faster than {ref} only at {sizes}; slower at the largest size"
            console.print(f"  {label}: {verdict}")
        console.print()
    return {
        "reference": ref,
        "labels": labels,
        "points": [p.__dict__ for p in points],
        "crossovers": cross,
    }


# --- the command ----------------------------------------------------------------------------


def _table(results: list[LayerResult], diffs: dict[str, float], backends: list[str]) -> Any:

    table = titled_table(f"dualnorm bench: float32, median ms; {RATIO_RULE}; copy: the memory floor")
    table.add_column("layer")
    table.add_column("pass")
    for b in backends:
        table.add_column(f"{b} ms", justify="right")
        if b != "numpy" and "numpy" in backends:
            table.add_column(f"{b}/numpy", justify="right")
        table.add_column(f"{b}/copy", justify="right")
    if len(backends) > 1:
        table.add_column("max |diff|", justify="right")
    for r in results:
        row = [r.case, "forward" if r.mode == "fwd" else "fwd+bwd"]
        for b in backends:
            t = r.times[f"dualnorm-{b}"]
            row.append(f"{t * 1e3:.2f}")
            if b != "numpy" and "numpy" in backends:
                row.append(fmt_ratio(t, r.times["dualnorm-numpy"]))
            row.append(fmt_ratio(t, r.times[f"floor-{b}"]))
        if len(backends) > 1:
            row.append(f"{diffs.get(r.case, float('nan')):.1e}")
        table.add_row(*row)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dualnorm bench",
        description="Time batch/layer/group norm (forward, forward+backward) on the installed backends.",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        metavar="B",
        help="numpy, mlx, mlx-cpu, mlx-gpu (default: all available here)",
    )
    parser.add_argument("--device", help="MLX device for 'mlx': gpu or cpu")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed repeats per measurement (median; the CNN rows: min of 2 rounds)",
    )
    parser.add_argument("--full", action="store_true", help="the README's large shapes (slower)")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="each layer from ~1e3 to ~1e7 elements on every backend and device; crossover sizes",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="with --sweep: up to 1e6 elements, 3 repeats; else the CNN rows at batch 16, one round of 3 repeats",
    )
    cnn = parser.add_mutually_exclusive_group()
    cnn.add_argument(
        "--cnn", action="store_true", help="only the CNN rows (Conv2d, MaxPool2d, a SimpleCNN training step)"
    )
    cnn.add_argument("--no-cnn", action="store_true", help="skip the CNN rows")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    console = output_console()
    backends, problem = _labels(args)
    if not problem and args.json:
        problem = check_result_path(args.json)  # before minutes of measuring, not after
    if problem:
        print(f"dualnorm bench: error: {problem}", file=sys.stderr)
        return 2
    if args.sweep:
        return _main_sweep(args, backends, console)
    payload: dict[str, Any] = {}
    if not args.cnn:
        cases = FULL_CASES if args.full else QUICK_CASES
        with console.status("measuring..."):
            results, diffs = run_backends(cases, backends, max(1, args.repeats))
        console.print(_table(results, diffs, backends))
        payload.update(results=[r.__dict__ for r in results], max_abs_diff=diffs)
    if not args.no_cnn:
        payload["cnn"] = _main_cnn(args, backends, console)
    info = machine()
    console.print(f"[dim]{info['processor']}, {info['cpu_count']} CPUs, {info['platform']}[/]")
    if args.json:
        _write_json(args.json, {"machine": info, **payload})
    return 0


# --- the CNN rows: Conv2d, MaxPool2d(2), a SimpleCNN training step, against PyTorch CPU -----------


def _main_cnn(args: argparse.Namespace, backends: list[str], console: Any) -> dict[str, Any]:
    from dualnorm import bench_cnn
    from dualnorm.backends import kernels_numpy

    batch = bench_cnn.QUICK_BATCH if args.quick else bench_cnn.BATCH
    repeats, rounds = (3, 1) if args.quick else (max(1, args.repeats), 2)
    threads = kernels_numpy.get_num_threads()  # every library's, each in its own process
    with console.status("measuring the CNN rows...") as status:
        results, used = bench_cnn.run_cnn(
            backends,
            bench_cnn.cnn_cases(batch),
            repeats=repeats,
            rounds=rounds,
            threads=threads,
            progress=status.update,
        )
    console.print(cnn_table(results, backends))
    quick = " (--quick; the issue's rows are at 64)" if args.quick else ""
    console.print(
        f"[dim]CNN rows: batch {batch}{quick}; each library in its own process at {threads} thread(s); "
        f"min of {rounds} round(s) x {repeats} repeats[/]"
    )
    return {
        "batch": batch,
        "repeats": repeats,
        "rounds": rounds,
        "threads": used,
        "results": [r.__dict__ for r in results],
    }


def cnn_table(results: list[LayerResult], backends: list[str]) -> Any:
    """The CNN rows: each backend's and PyTorch's times, and each backend / PyTorch."""
    from dualnorm.bench_cnn import TORCH, pass_name

    table = titled_table(f"dualnorm bench: CNN layers, a training step; float32, min ms; {RATIO_RULE}")
    table.add_column("layer")
    table.add_column("pass")
    has_torch = any(TORCH in r.times for r in results)
    labels = [f"dualnorm-{b}" for b in backends] + ([TORCH] if has_torch else [])
    for label in labels:
        table.add_column(f"{label.removeprefix('dualnorm-')} ms", justify="right")
    if has_torch:
        for b in backends:
            table.add_column(f"{b}/torch", justify="right")
    for r in results:
        row = [r.case, pass_name(r.mode)]
        row += [f"{r.times[k] * 1e3:.2f}" if k in r.times else "-" for k in labels]
        if has_torch:
            row += [fmt_ratio(r.times.get(f"dualnorm-{b}"), r.times.get(TORCH)) for b in backends]
        table.add_row(*row)
    return table


def check_result_path(path: str, what: str = "JSON file") -> str | None:
    """One line naming ``path`` and why a results file cannot be written there, or None."""
    from dualnorm._paths import check_output_path
    from dualnorm.errors import OutputPathError

    try:
        check_output_path(path, what, create_parent=True)
    except OutputPathError as exc:
        return str(exc)
    return None


def _write_json(path: str, payload: dict[str, Any]) -> None:
    from dualnorm.checkpoint import atomic_write

    atomic_write(path, (json.dumps(payload, indent=2) + "\n").encode(), what="JSON file")


def _labels(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The backends to time (names, or labels with a device), or an error naming the choices."""
    from dualnorm.backends import available_labels, get_backend

    here = available_labels() if args.sweep else dualnorm.available_backends()
    chosen = args.backends or here
    if args.device is not None:
        chosen = [f"{b}-{args.device}" if b == "mlx" else b for b in chosen]
    for label in chosen:
        try:
            get_backend(label)
        except dualnorm.BackendError as exc:
            return [], f"{exc} (available here: {', '.join(available_labels())})"
    return list(dict.fromkeys(chosen)), None


def _main_sweep(args: argparse.Namespace, labels: list[str], console: Any) -> int:
    sizes = QUICK_SWEEP_SIZES if args.quick else SWEEP_SIZES
    repeats = 3 if args.quick else max(1, args.repeats)
    t0 = time.perf_counter()
    with console.status("measuring...") as status:
        points = run_sweep(
            labels, sizes, repeats=repeats, progress=lambda what: status.update(f"measuring {what}")
        )
        if torch_installed():
            status.update("measuring PyTorch CPU (its own process)")
            torch_threads = add_torch_row(points, repeats)
            labels = [*labels, TORCH_LABEL]
            console.print(f"[dim]{TORCH_LABEL}: PyTorch in its own process, {torch_threads} thread(s)[/]")
    payload = _sweep_report(console, points, labels)
    info = machine()
    console.print(
        f"[dim]{time.perf_counter() - t0:.0f} s; {info['processor']}, {info['cpu_count']} CPUs, "
        f"{info['platform']}; {RATIO_RULE}[/]"
    )
    if args.json:
        payload.update(machine=info, sizes=list(sizes), repeats=repeats)
        _write_json(args.json, payload)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
