"""The backend comparison, live: ``dualnorm compare EXPERIMENT``.

Each backend trains in its own ``dualnorm run`` process (:class:`dualnorm.compare.CompareJob`)
and writes a run directory; this screen follows those directories like any other runs
(overlaid, one colour per backend) and keeps a :class:`dualnorm.compare.LiveComparison`
up to date from the same records, shown in a panel above the layer table.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.console import Group
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from dualnorm.compare import CompareJob, LiveComparison, comparison_tables
from tui.follow import PALETTE, RunFollower, RunSource
from tui.screens import ViewScreen

BACKEND_STYLES = {"numpy": "green", "mlx-cpu": "dodger_blue1", "mlx-gpu": "magenta"}


class CompareScreen(ViewScreen, inherit_bindings=False):
    """The runs of one :class:`CompareJob`, overlaid, with the comparison panel.

    The viewer's keys; ``esc`` and ``q`` both end the comparison (there is nothing to go back
    to), after which ``dualnorm compare`` prints its tables and exits with its code."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "done", "Done") if getattr(b, "key", "") == "escape" else b
        for b in ViewScreen.BINDINGS
    ]

    def __init__(self, job: CompareJob, tol: float, *, paused: bool = False) -> None:
        self.job = job
        self.comparison = LiveComparison(list(job.children), tol)
        self._dirty = True
        self._last_compare = 0.0
        self._ended: set[str] = set()
        self.panel: Group | None = None  # what the comparison panel shows now
        spare = iter(c for c in PALETTE if c not in BACKEND_STYLES.values())
        sources = [
            RunSource(path, label=label, style=BACKEND_STYLES.get(label) or next(spare), expected=True)
            for label, path in job.run_dirs.items()
        ]
        super().__init__(sources, paused=paused)
        self.experiment.title = f"compare {job.experiment}: {' vs '.join(job.children)}"

    async def action_done(self) -> None:
        await self.app.action_quit()  # its own action: the footer shows one key per action

    def make_runner(self, paused: bool) -> Any:
        return RunFollower(self._sources, self.buffer, paused=paused, on_record=self._on_record)

    def _on_record(self, label: str, record: Any) -> None:
        self.comparison.add(label, record)
        self._dirty = True

    def on_mount(self) -> None:
        super().on_mount()
        panel = VerticalScroll(Static(id="compare"), id="compare-panel")
        self.query_one("#panels").mount(panel, before="#layers")
        panel.border_title = f"backends compared live (reference {self.comparison.reference})"
        self.available.add("compare-panel")
        self.call_after_refresh(self.apply_layout)

    def poll(self, force: bool = False) -> None:
        self._note_ended_children()
        super().poll(force)
        now = time.perf_counter()
        if self._dirty and (force or now - self._last_compare >= self.TABLE_INTERVAL):
            self.job.annotate(self.comparison)
            tables = comparison_tables(self.comparison.result(), live=self._states(), per_variant=False)
            self.panel = Group(*tables)
            self.query_one("#compare", Static).update(self.panel)
            self._dirty = False
            self._last_compare = now

    def _states(self) -> dict[str, str]:
        states = {}
        for src in self.runner.sources:
            child = self.job.children[src.label]
            if child.code is None:
                states[src.label] = "waiting" if src.status == "waiting" else "running"
        return states

    def _note_ended_children(self) -> None:
        """A backend whose process ended without writing its run: stop waiting for it, say why."""
        for src in self.runner.sources:
            child = self.job.children[src.label]
            if child.code is None or src.label in self._ended:
                continue
            self._ended.add(src.label)
            self._dirty = True
            if src.reader is None and not src.open():  # it never started its run directory
                src.status = "failed"
                last = (child.stderr.strip().splitlines() or ["(no message)"])[-1]
                self.runner.errors.append(f"{src.label}: exit {child.code}: {last}")
                self.runner.error = "; ".join(self.runner.errors)
