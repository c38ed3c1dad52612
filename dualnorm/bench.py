"""``dualnorm bench``: time the normalization layers on every installed backend.

A short run for people comparing backends on their own machine (e.g. MLX vs NumPy on
a Mac): batch norm, layer norm and group norm, training forward and forward+backward,
float32, the same inputs for every backend, median of several interleaved repeats.
The table shows each backend's time, the speed-up over NumPy, the memory floor (one
copy of the input) and the largest absolute difference between the backends' outputs
and input gradients.

The timing helpers here are shared with the full suite in the repository's
``benchmarks/`` folder (which adds PyTorch, ``mlx.nn``, a textbook NumPy version and
the end-to-end experiments).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dualnorm
from dualnorm import nn

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

    def fwd() -> Any:
        y = layer(xb)
        B.eval(y)
        return y

    def fwdbwd() -> Any:
        _zero_grads(layer)
        y = layer(xb)
        dx = layer.backward(gb)
        B.eval(y, dx, *(p.grad for p in layer.parameters()))
        return y, dx

    def outputs() -> tuple[np.ndarray, np.ndarray]:
        y, dx = fwdbwd()
        return np.asarray(B.to_numpy(y)), np.asarray(B.to_numpy(dx))

    def floor() -> None:
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


# --- the command ----------------------------------------------------------------------------


def _table(results: list[LayerResult], diffs: dict[str, float], backends: list[str]) -> Any:
    from rich.table import Table

    table = Table(title="dualnorm bench (median ms; speed-up = NumPy time / backend time)")
    table.add_column("layer")
    table.add_column("pass")
    for b in backends:
        table.add_column(f"{b} ms", justify="right")
        if b != "numpy" and "numpy" in backends:
            table.add_column(f"{b} speed-up", justify="right")
        table.add_column(f"{b} / copy", justify="right")
    if len(backends) > 1:
        table.add_column("max |diff|", justify="right")
    for r in results:
        row = [r.case, "forward" if r.mode == "fwd" else "fwd+bwd"]
        for b in backends:
            t = r.times[f"dualnorm-{b}"]
            row.append(f"{t * 1e3:.2f}")
            if b != "numpy" and "numpy" in backends:
                row.append(f"{r.times['dualnorm-numpy'] / t:.2f}x")
            row.append(f"{t / r.times[f'floor-{b}']:.1f}x")
        if len(backends) > 1:
            row.append(f"{diffs.get(r.case, float('nan')):.1e}")
        table.add_row(*row)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dualnorm bench",
        description="Time batch/layer/group norm (forward, forward+backward) on the installed backends.",
    )
    parser.add_argument("--backends", nargs="+", choices=list(dualnorm.backends.BACKEND_NAMES))
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--full", action="store_true", help="the README's large shapes (slower)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console()
    available = dualnorm.available_backends()
    backends = args.backends or available
    missing = [b for b in backends if b not in available]
    if missing:
        console.print(f"[red]not available here: {', '.join(missing)}[/] (installed: {', '.join(available)})")
        return 2
    cases = FULL_CASES if args.full else QUICK_CASES
    with console.status("measuring..."):
        results, diffs = run_backends(cases, backends, max(1, args.repeats))
    console.print(_table(results, diffs, backends))
    info = machine()
    console.print(f"[dim]{info['processor']}, {info['cpu_count']} CPUs, {info['platform']}[/]")
    if args.json:
        payload = {
            "machine": info,
            "results": [r.__dict__ for r in results],
            "max_abs_diff": diffs,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
