"""Comparing the same run on several backends: where the loss curves part, and by how much.

:class:`LiveComparison` takes step records one at a time, from any number of streams
(one per backend, e.g. ``numpy``, ``mlx-cpu``, ``mlx-gpu``), in any interleaving, so a
viewer can update it as records arrive; :meth:`LiveComparison.result` is a snapshot.
:func:`compare_records` does the same for finished streams. The first stream is the
reference every other one is measured against.

Losses are compared at every optimizer step (records carry the losses of the steps since
the previous record in ``extra["losses"]``), per variant, as the symmetric relative
difference ``|a - b| / max(|a|, |b|)`` (0 when both are 0). A step where one backend's
loss is NaN/Inf and the other's is finite counts as an infinite difference: a
disagreement at that step, never an exception; both non-finite counts as agreement.
Per-layer statistics (activation mean/std/min/max, saturation, dead units, norms, BN
gamma/beta, running statistics) are compared as absolute differences wherever both
streams recorded the same variant, step and layer.

Besides dualnorm's backends, a stream may be a reference run of the same experiment in
PyTorch or mlx.nn (labels ``torch``, ``mlx.nn``; see :mod:`dualnorm.references`), trained
from the same initial weights: the comparison then measures dualnorm against the framework.

>>> from dualnorm.records import StepRecord
>>> a = [StepRecord("e", "v", 1, 1, 2.0, "numpy"), StepRecord("e", "v", 2, 1, 1.0, "numpy")]
>>> b = [StepRecord("e", "v", 1, 1, 2.0, "mlx"), StepRecord("e", "v", 2, 1, 1.1, "mlx")]
>>> c = compare_records({"numpy": a, "mlx-cpu": b}, tol=0.05)
>>> round(c.backends["mlx-cpu"].max_rel_loss_diff, 4), c.backends["mlx-cpu"].first_over_tol
(0.0909, ('v', 2))
>>> c.agree
False
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualnorm.errors import InputError
from dualnorm.records import LAYER_STATS as RECORD_LAYER_STATS
from dualnorm.records import StepRecord, json_safe

#: the per-layer statistics compared (every numeric field of :class:`dualnorm.records.LayerStats`)
LAYER_STATS = RECORD_LAYER_STATS
LAYER_STATS = (
    "act_mean",
    "act_std",
    "act_min",
    "act_max",
    "saturated_frac",
    "dead_frac",
    "grad_norm",
    "param_grad_norm",
    "weight_norm",
    "gamma_mean",
    "beta_mean",
    "running_mean_mean",
    "running_var_mean",
)


def rel_diff(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|)``; 0 when equal (both NaN included), inf when one is not finite."""
    fa, fb = math.isfinite(a), math.isfinite(b)
    if not (fa and fb):
        if not fa and not fb:
            return 0.0 if (math.isnan(a) and math.isnan(b)) or a == b else math.inf
        return math.inf
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


@dataclass
class VariantResult:
    """One variant of one backend's run."""

    last_step: int = 0
    final_loss: float | None = None
    final_accuracy: float | None = None
    status: str = "running"
    train_s: float = 0.0  # the variant's elapsed_s at its last record
    max_rel_loss_diff: float = 0.0  # vs the reference, over the steps both have reached
    max_diff_step: int | None = None
    first_over_tol: int | None = None  # first step whose loss differs by more than tol
    compared_steps: int = 0


@dataclass
class BackendResult:
    """One backend's run, summed over its variants, measured against the reference."""

    label: str
    backend: str = ""
    device: str = ""
    variants: dict[str, VariantResult] = field(default_factory=dict)
    #: statistic -> (largest absolute difference, its relative size, "variant step layer" where)
    layer_diffs: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    wall_s: float | None = None  # the whole process (set by the CLI); None from records alone
    error: str = ""  # why this backend's run did not finish (set by the CLI)

    @property
    def steps(self) -> int:
        return sum(v.last_step for v in self.variants.values())

    @property
    def train_s(self) -> float:
        return sum(v.train_s for v in self.variants.values())

    @property
    def steps_per_s(self) -> float | None:
        return self.steps / self.train_s if self.train_s > 0 and self.steps else None

    @property
    def max_rel_loss_diff(self) -> float:
        return max((v.max_rel_loss_diff for v in self.variants.values()), default=0.0)

    @property
    def first_over_tol(self) -> tuple[str, int] | None:
        """(variant, step) of the first disagreement, in the order the variants ran."""
        for name, v in self.variants.items():
            if v.first_over_tol is not None:
                return name, v.first_over_tol
        return None

    @property
    def final_loss(self) -> float | None:
        """The mean final loss over the variants that trained (NaN if one diverged)."""
        losses = [v.final_loss for v in self.variants.values() if v.final_loss is not None]
        return sum(losses) / len(losses) if losses else None

    @property
    def final_accuracy(self) -> float | None:
        accs = [v.final_accuracy for v in self.variants.values() if v.final_accuracy is not None]
        return sum(accs) / len(accs) if accs else None

    @property
    def diverged(self) -> list[str]:
        return [name for name, v in self.variants.items() if v.status == "diverged"]

    def to_dict(self) -> dict[str, Any]:
        first = self.first_over_tol
        return {
            "label": self.label,
            "backend": self.backend,
            "device": self.device,
            "wall_s": self.wall_s,
            "train_s": self.train_s,
            "steps": self.steps,
            "steps_per_s": self.steps_per_s,
            "final_loss": self.final_loss,
            "final_accuracy": self.final_accuracy,
            "max_rel_loss_diff": self.max_rel_loss_diff,
            "first_over_tol": None if first is None else {"variant": first[0], "step": first[1]},
            "diverged": self.diverged,
            "layer_diffs": {
                k: {"max_abs_diff": v, "rel_diff": rel, "at": at}
                for k, (v, rel, at) in self.layer_diffs.items()
            },
            "variants": {name: v.__dict__.copy() for name, v in self.variants.items()},
            "error": self.error,
        }


@dataclass
class Comparison:
    """A snapshot: per backend, its run and how far it is from the reference (the first)."""

    reference: str
    tol: float
    backends: dict[str, BackendResult]

    @property
    def agree(self) -> bool:
        """No backend differs from the reference by more than ``tol`` at any compared step."""
        return all(b.first_over_tol is None and not b.error for b in self.backends.values())

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "reference": self.reference,
                "tol": self.tol,
                "agree": self.agree,
                "backends": {label: b.to_dict() for label, b in self.backends.items()},
            }
        )


class LiveComparison:
    """Compares record streams incrementally: call :meth:`add` as records arrive."""

    def __init__(self, labels: Sequence[str], tol: float) -> None:
        labels = list(labels)
        if len(labels) < 1 or len(set(labels)) != len(labels):
            raise InputError(f"compare needs distinct backend labels, got {labels}")
        if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
            raise InputError(f"tol must be a finite number >= 0, got {tol!r}")
        self.labels = labels
        self.tol = float(tol)
        self.reference = labels[0]
        self._results = {label: BackendResult(label) for label in labels}
        # label -> variant -> step -> loss, and label -> (variant, step) -> layer -> stats
        self._losses: dict[str, dict[str, dict[int, float]]] = {label: {} for label in labels}
        self._layers: dict[str, dict[tuple[str, int], dict[str, dict[str, float]]]] = {
            label: {} for label in labels
        }

    def add(self, label: str, record: StepRecord) -> None:
        """Take one record of backend ``label``'s stream."""
        if label not in self._results:
            raise InputError(f"unknown stream {label!r}; this comparison has {', '.join(self.labels)}")
        result = self._results[label]
        result.backend, result.device = record.backend, record.device
        v = result.variants.setdefault(record.variant, VariantResult())
        self._results[self.reference].variants.setdefault(record.variant, VariantResult())
        v.status = record.status
        v.train_s = max(v.train_s, float(record.elapsed_s))
        if record.step > 0:
            v.last_step = max(v.last_step, record.step)
            v.final_loss = float(record.loss)
        if record.accuracy is not None:
            v.final_accuracy = float(record.accuracy)
        for step, loss in _step_losses(record):
            self._add_loss(label, record.variant, step, loss)
        if record.layers:
            stats = {
                layer.name: {k: getattr(layer, k) for k in LAYER_STATS if getattr(layer, k) is not None}
                for layer in record.layers
            }
            self._add_layers(label, (record.variant, record.step), stats)

    def _add_loss(self, label: str, variant: str, step: int, loss: float) -> None:
        self._losses[label].setdefault(variant, {})[step] = loss
        others = self.labels[1:] if label == self.reference else [label]
        ref = self._losses[self.reference].get(variant, {}).get(step)
        if ref is None:
            return
        for other in others:
            value = self._losses[other].get(variant, {}).get(step)
            if value is None:
                continue
            self._note_loss(
                self._results[other].variants.setdefault(variant, VariantResult()), step, ref, value
            )

    def _note_loss(self, v: VariantResult, step: int, ref: float, value: float) -> None:
        d = rel_diff(ref, value)
        v.compared_steps += 1
        if v.max_diff_step is None or d > v.max_rel_loss_diff:
            v.max_rel_loss_diff, v.max_diff_step = d, step
        if d > self.tol and (v.first_over_tol is None or step < v.first_over_tol):
            v.first_over_tol = step

    def _add_layers(self, label: str, key: tuple[str, int], stats: dict[str, dict[str, float]]) -> None:
        self._layers[label][key] = stats
        ref = self._layers[self.reference].get(key)
        if ref is None:
            return
        others = self.labels[1:] if label == self.reference else [label]
        for other in others:
            mine = self._layers[other].get(key)
            if mine is None:
                continue
            diffs = self._results[other].layer_diffs
            for layer, values in mine.items():
                for stat, value in values.items():
                    base = ref.get(layer, {}).get(stat)
                    if base is None:
                        continue
                    rel = rel_diff(base, value)
                    d = abs(value - base) if math.isfinite(rel) else math.inf
                    if rel == 0.0:
                        d = 0.0  # equal, or both NaN
                    if stat not in diffs or d > diffs[stat][0]:
                        diffs[stat] = (d, rel, f"{key[0]} step {key[1]} layer {layer}")

    def result(self) -> Comparison:
        return Comparison(self.reference, self.tol, self._results)


def _step_losses(record: StepRecord) -> list[tuple[int, float]]:
    """(step, loss) for every step the record covers (``extra["losses"]``, or the record's own)."""
    if record.step <= 0:
        return []
    losses = record.extra.get("losses") if isinstance(record.extra, dict) else None
    if isinstance(losses, list) and losses:
        first = record.step - len(losses) + 1
        return [(first + i, float(x)) for i, x in enumerate(losses)]
    return [(record.step, float(record.loss))]


def compare_records(streams: Mapping[str, Iterable[StepRecord]], tol: float) -> Comparison:
    """Compare finished streams, ``{label: records}``; the first label is the reference."""
    live = LiveComparison(list(streams), tol)
    for label, records in streams.items():
        for record in records:
            live.add(label, record)
    return live.result()


# --- showing it ------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def comparison_tables(
    comparison: Comparison, *, live: Mapping[str, str] | None = None, per_variant: bool = True
) -> list[Any]:
    """The comparison as rich tables: per backend; per layer statistic; per variant (when several).

    ``live`` maps a backend label to a state word ("waiting", "running") shown beside it.
    """
    from rich.table import Table

    tables: list[Any] = []
    ref = comparison.reference
    results = comparison.backends
    verdict = "[green]agree[/]" if comparison.agree else "[red]disagree[/]"
    table = Table(title=f"backends vs {ref} (tol {comparison.tol:g}): {verdict}")
    several = len(results[ref].variants) > 1  # then a mean final loss would mix unlike variants
    loss_col = "final loss" + (" (per variant below)" if several and per_variant else "")
    acc_col = "final acc" + (" (mean)" if several else "")
    for col in ("backend", "wall s", "train s", "steps/s", loss_col, acc_col, "max rel Δloss", "first > tol"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for label, r in results.items():
        first = r.first_over_tol
        where = "-" if first is None else f"step {first[1]} ({first[0]})"
        diverged = f" ({len(r.diverged)} diverged)" if r.diverged else ""
        state = f" [yellow]{live[label]}[/]" if live and live.get(label) else ""
        table.add_row(
            label + state + (f" [red]{r.error}[/]" if r.error else ""),
            _fmt(r.wall_s, ".1f"),
            _fmt(r.train_s, ".2f"),
            _fmt(r.steps_per_s, ",.0f"),
            ("-" if several else _fmt(r.final_loss)) + diverged,
            _fmt(r.final_accuracy, ".3f"),
            "(reference)" if label == ref else _fmt(r.max_rel_loss_diff, ".2e"),
            "-" if label == ref else where,
        )
    tables.append(table)
    others = [label for label in results if label != ref]
    stats = sorted({s for label in others for s in results[label].layer_diffs})
    if stats:
        layers = Table(title=f"largest per-layer statistic difference vs {ref}: |Δ| (relative), where")
        layers.add_column("statistic")
        for label in others:
            layers.add_column(label, justify="right")
            layers.add_column("where")
        for stat in stats:
            row = [stat]
            for label in others:
                value, rel, at = results[label].layer_diffs.get(stat, (None, None, "-"))
                row += [f"{_fmt(value, '.2e')} ({_fmt(rel, '.1e')})", at]
            layers.add_row(*row)
        tables.append(layers)
    variants = list(results[ref].variants)
    if per_variant and len(variants) > 1:
        per = Table(title="per variant: final loss (accuracy); max rel Δloss, first step > tol")
        per.add_column("variant")
        for label in results:
            per.add_column(label, justify="right")
        for label in others:
            per.add_column(f"{label} Δ", justify="right")
        for name in variants:
            row = [name]
            for label in results:
                v = results[label].variants.get(name)
                acc = "" if v is None or v.final_accuracy is None else f" ({v.final_accuracy:.2f})"
                row.append("-" if v is None else _fmt(v.final_loss) + acc)
            for label in others:
                v = results[label].variants.get(name)
                over = "" if v is None or v.first_over_tol is None else f" >tol@{v.first_over_tol}"
                row.append("-" if v is None else f"{v.max_rel_loss_diff:.1e}{over}")
            per.add_row(*row)
        tables.append(per)
    return tables


# --- running the comparison: one child process per backend ---------------------------------------


@dataclass
class ChildRun:
    """One backend's ``dualnorm run`` process and what came of it."""

    label: str
    run_dir: Path
    command: list[str]
    code: int | None = None  # exit code once it ended
    wall_s: float | None = None  # launch to exit
    stderr: str = ""


def _child_command(experiment: str, backend: Any, run_dir: Path, run_args: Sequence[str]) -> list[str]:
    """The process that makes one stream: ``dualnorm run`` on a backend, or a framework's reference run."""
    from dualnorm.references import ReferenceFramework

    if isinstance(backend, ReferenceFramework):  # torch / mlx.nn: dualnorm.references
        head = ["dualnorm.references", experiment, "--framework", backend.name]
    else:
        head = ["dualnorm", "run", experiment, "--backend", backend.name, "--device", backend.device]
    return [sys.executable, "-m", *head, "--out", str(run_dir), "--quiet", *run_args]


class CompareJob:
    """Runs one experiment on several backends, each in its own ``dualnorm run`` process.

    A ``backends`` value may also be a :class:`~dualnorm.references.ReferenceFramework`
    (labels ``torch``, ``mlx.nn``): that stream is the experiment trained in PyTorch or
    mlx.nn from the same initial weights (:mod:`dualnorm.references`).

        Each child writes a run directory ``out_dir/<label>`` (records.jsonl + meta.json), so
        a viewer can follow it live and the runs can be reopened later. By default the
        children run one after another: on a small machine, concurrent runs share the cores
        and their timings stop being comparable. ``start()`` launches them from a thread and
        returns at once; ``wait()`` blocks; ``stop()`` ends whatever still runs.
    """

    def __init__(
        self,
        experiment: str,
        backends: Mapping[str, Any],
        out_dir: str | os.PathLike[str],
        *,
        run_args: Sequence[str] = (),
        concurrent: bool = False,
    ) -> None:
        self.experiment = experiment
        self.out_dir = Path(out_dir)
        self.concurrent = concurrent
        self.children = {
            label: ChildRun(
                label,
                self.out_dir / label,
                _child_command(experiment, backend, self.out_dir / label, run_args),
            )
            for label, backend in backends.items()
        }
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.done = threading.Event()

    @property
    def run_dirs(self) -> dict[str, Path]:
        return {label: child.run_dir for label, child in self.children.items()}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="dualnorm-compare", daemon=True)
        self._thread.start()

    def wait(self, on_exit: Callable[[ChildRun], None] | None = None) -> None:
        """Block until every child has ended; ``on_exit`` is called (here) as each one does."""
        reported: set[str] = set()
        while not self.done.wait(0.05):
            self._report(on_exit, reported)
        self._report(on_exit, reported)

    def _report(self, on_exit: Callable[[ChildRun], None] | None, reported: set[str]) -> None:
        for label, child in self.children.items():
            if child.code is not None and label not in reported:
                reported.add(label)
                if on_exit is not None:
                    on_exit(child)

    def stop(self) -> None:
        self._stopping.set()
        for proc in list(self._procs.values()):
            if proc.poll() is None:
                proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def usage_error(self) -> ChildRun | None:
        """A child that refused its arguments (exit 2): the same refusal would hit every backend."""
        return next((c for c in self.children.values() if c.code == 2), None)

    def _main(self) -> None:
        try:
            pending = list(self.children.values())
            while pending and not self._stopping.is_set():
                batch = pending if self.concurrent else pending[:1]
                pending = pending[len(batch) :]
                self._run(batch)
                if any(c.code == 2 for c in batch):
                    break
        finally:
            self.done.set()

    def _run(self, batch: list[ChildRun]) -> None:
        started: dict[str, tuple[float, Any]] = {}
        for child in batch:
            # stderr to a file, not a pipe: a child that writes a lot cannot block on it
            err = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
            started[child.label] = (time.perf_counter(), err)
            self._procs[child.label] = subprocess.Popen(child.command, stdout=subprocess.DEVNULL, stderr=err)
        while started:
            for label in list(started):
                proc = self._procs[label]
                if proc.poll() is None:
                    continue
                t0, err = started.pop(label)
                child = self.children[label]
                child.wall_s = time.perf_counter() - t0
                err.seek(0)
                child.stderr = err.read().decode("utf-8", "replace")
                err.close()
                child.code = proc.returncode
            time.sleep(0.02)

    def comparison(self, tol: float) -> Comparison:
        """The comparison of what the children have written so far (read from their run directories)."""
        from dualnorm.tracking import read_run

        live = LiveComparison(list(self.children), tol)
        for label, child in self.children.items():
            if (child.run_dir / "records.jsonl").exists():
                records, _ = read_run(child.run_dir)
                for record in records:
                    live.add(label, record)
        self.annotate(live)
        return live.result()

    def annotate(self, live: LiveComparison) -> None:
        """Copy each ended child's wall time and failure into ``live``'s results."""
        for label, child in self.children.items():
            result = live.result().backends[label]
            result.wall_s = child.wall_s
            if child.code not in (None, 0):
                last = (child.stderr.strip().splitlines() or ["(no message)"])[-1]
                result.error = f"exit {child.code}: {last}"


__all__ = [
    "LAYER_STATS",
    "BackendResult",
    "ChildRun",
    "CompareJob",
    "Comparison",
    "LiveComparison",
    "VariantResult",
    "compare_records",
    "comparison_tables",
    "rel_diff",
]
