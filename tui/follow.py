"""Open N run directories / JSON Lines files, follow them live, overlay them.

:class:`RunFollower` has the controls of a training runner (``start``, ``pause``, ``resume``,
``step``, ``stop``, ``paused``, ``finished``, ``error``), so the run screen drives it like one;
instead of a thread it has ``poll()``, called on the screen's existing timer: it checks each
file's size and reads only the bytes appended since the last call (``dualnorm.tracking.RunReader``).
No Textual in here: the same piece serves any view that overlays runs (e.g. a backend comparison).

With more than one run, each record's variant is relabelled ``"<run label>/<variant>"`` so the
runs' curves stay apart; ``styles`` maps those labels to a line colour, per run
(:class:`RunSource.style`) or from a palette.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualnorm.tracking import RunDirError, RunReader

PALETTE = (
    "green",
    "red",
    "dodger_blue1",
    "yellow",
    "magenta",
    "cyan",
    "orange1",
    "white",
    "purple",
    "grey70",
)
META_EVERY_S = 0.5  # how often a followed run's meta.json (its status) is read again


@dataclass
class RunSource:
    """One run to show: a run directory or a records file, its label and (optionally) its line colour."""

    path: Path
    label: str = ""
    style: str | None = None  # colour of all this run's curves; None: one palette colour per variant
    reader: RunReader | None = field(default=None, repr=False)
    meta: dict[str, Any] | None = None
    status: str = "running"
    warned_torn: bool = False
    #: the run may not exist yet (a process about to start it): wait for it instead of refusing
    expected: bool = False

    @property
    def live(self) -> bool:
        return self.status in ("running", "waiting")

    def open(self) -> bool:
        """Open the run's reader; False while an expected run has not appeared yet."""
        export = export_meta(self.path)
        if export is not None:  # what the UI's `e` wrote: records.jsonl and run.json
            self.reader = RunReader(self.path / "records.jsonl")
            self.meta, self.status = export, "exported"
            return True
        try:
            self.reader = RunReader(self.path)
        except RunDirError:
            if not self.expected:
                raise
            self.status = "waiting"
            return False
        self.meta = self.reader.meta()
        self.status = (self.meta or {}).get("status", "file")
        return True


EXPORT_META = "run.json"  # tui.export.export_run writes it beside records.jsonl; a run dir has meta.json


def export_meta(path: Path) -> dict[str, Any] | None:
    """The metadata of an export folder written by the UI's ``e`` (None for anything else), in the
    keys a run directory's meta.json uses (experiment, backend, steps, status)."""
    import json

    from dualnorm.tracking import META, RECORDS

    if not (path.is_dir() and (path / EXPORT_META).is_file() and (path / RECORDS).is_file()):
        return None
    if (path / META).exists():
        return None
    try:
        data = json.loads((path / EXPORT_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    return {
        "experiment": data.get("experiment", "export"),
        "backend": config.get("backend") or "?",
        "steps": config.get("steps"),
        "status": "exported",
        "exported_at": data.get("exported_at"),
    }


def open_sources(paths: Sequence[str | os.PathLike[str] | RunSource]) -> list[RunSource]:
    """RunSources for ``paths``; raises ``RunDirError`` naming the first path that is not a run."""
    sources = []
    for item in paths:
        src = item if isinstance(item, RunSource) else RunSource(Path(os.fspath(item)))
        src.open()
        if not src.label:
            src.label = (src.meta or {}).get("name") or src.path.stem or str(src.path)
            if src.meta is not None and src.label != src.path.name:
                src.label = src.path.name  # run dirs are named <name>-<time>: unique and recognisable
        sources.append(src)
    seen: dict[str, int] = {}
    for src in sources:  # two runs of the same name stay apart
        if src.label in seen:
            seen[src.label] += 1
            src.label = f"{src.label}#{seen[src.label]}"
        else:
            seen[src.label] = 1
    return sources


class RunFollower:
    """Reads runs into a buffer on ``poll()``; pausing freezes the view (records wait in the files)."""

    READ_BYTES = 1 << 20  # per run and tick: ~4 000 records, a fraction of a second to parse

    def __init__(
        self,
        sources: Sequence[Any],
        buffer: Any,
        *,
        paused: bool = False,
        on_record: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.sources = open_sources(sources)
        self.buffer = buffer
        self.on_record = on_record  # sees every record as read, under its run's label, before relabelling
        self.multi = len(self.sources) > 1
        self._paused = paused
        self._credits = 0
        self.finished = threading.Event()
        self.error: str | None = None
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.records_pulled = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.styles: dict[str, str] = {}
        self._last_meta = 0.0
        self._held: list[Any] = []  # read while paused, waiting to be let through

    # -- the runner interface ------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self.poll()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True
        self._credits = 0

    def resume(self) -> None:
        self._paused = False

    def step(self, n: int = 1) -> None:
        self._paused = True
        self._credits += n

    def stop(self, timeout: float = 0.0) -> bool:
        self.finished.set()
        return True

    @property
    def alive(self) -> bool:
        return not self.finished.is_set()

    @property
    def live(self) -> bool:
        return any(src.live for src in self.sources)

    # -- reading -------------------------------------------------------------------------------

    def label(self, source: RunSource, variant: str) -> str:
        return f"{source.label}/{variant}" if self.multi else variant

    def _style(self, source: RunSource, label: str) -> None:
        if label not in self.styles:
            self.styles[label] = source.style or PALETTE[len(self.styles) % len(PALETTE)]

    def poll(self) -> int:
        """Read what was appended to every run since the last call; returns the records handed on."""
        now = time.perf_counter()
        refresh_meta = now - self._last_meta >= META_EVERY_S
        if refresh_meta:
            self._last_meta = now
        for src in self.sources:
            if src.reader is None and (src.status != "waiting" or not src.open()):
                continue
            reader = src.reader
            assert reader is not None
            if refresh_meta and src.live and reader.run_dir is not None and src.status != "exported":
                try:
                    src.meta = reader.meta()
                    src.status = (src.meta or {}).get("status", "running")
                except Exception as exc:  # a meta.json being replaced mid-read: try again next time
                    self.warnings.append(f"{reader.run_dir}: {exc}")
            if self._paused and len(self._held) >= self._credits:
                continue  # frozen: the records wait in the file, not in memory
            # a bounded read per tick: a long run loads over a few ticks and the UI stays responsive
            for rec in reader.poll(self.READ_BYTES):
                if self.on_record is not None:
                    self.on_record(src.label, rec)
                label = self.label(src, rec.variant)
                self._style(src, label)
                self._held.append(dataclasses.replace(rec, variant=label) if self.multi else rec)
            if reader.error is not None and str(reader.error) not in self.errors:
                self.errors.append(str(reader.error))
                self.error = "; ".join(self.errors)
            if not src.live and reader.at_end and reader.torn and not src.warned_torn:
                src.warned_torn = True
                message = reader.close_torn()
                if message:
                    self.warnings.append(message)
        return self._release()

    def _release(self) -> int:
        if self._paused:
            n = min(self._credits, len(self._held))
            self._credits -= n
        else:
            n = len(self._held)
        out, self._held = self._held[:n], self._held[n:]
        for rec in out:
            self.buffer.append(rec)
        self.records_pulled += len(out)
        done = not self.live and all(src.reader.at_end for src in self.sources if src.reader is not None)
        if done and not self._held and not self.finished.is_set():
            self.finished_at = time.perf_counter()
            self.finished.set()
        return len(out)

    def describe(self) -> str:
        """One line per run: label, experiment, backend, status."""
        parts = []
        for src in self.sources:
            meta = src.meta or {}
            parts.append(
                f"{src.label} ({meta.get('experiment', 'file')}, {meta.get('backend', '?')}, {src.status})"
            )
        return "; ".join(parts)
