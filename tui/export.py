"""Writers for the run export: records as CSV and JSON Lines, plus an SVG screenshot.

Every file is written atomically: to a temporary file in the same directory, then
moved into place with ``os.replace`` (a reader never sees half a file).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dualnorm.records import LAYER_STATS

RECORD_COLUMNS = (
    "experiment",
    "variant",
    "step",
    "epoch",
    "loss",
    "accuracy",
    "status",
    "backend",
    "elapsed_s",
    "message",
)
LAYER_COLUMNS = ("name", "kind", *LAYER_STATS)


def default_export_dir(experiment: str, base: str | os.PathLike[str] = "dualnorm-runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(base) / f"{experiment}-{stamp}"


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def records_csv(records: Iterable[Any]) -> str:
    """One row per record: the scalar fields (see ``RECORD_COLUMNS``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RECORD_COLUMNS)
    for rec in records:
        writer.writerow([_cell(getattr(rec, c)) for c in RECORD_COLUMNS])
    return buf.getvalue()


def layers_csv(records: Iterable[Any]) -> str:
    """One row per (record, layer) with the layer's scalar statistics."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ("variant", "step", *(f"layer_{c}" if c in ("name", "kind") else c for c in LAYER_COLUMNS))
    )
    for rec in records:
        for layer in rec.layers:
            writer.writerow([rec.variant, rec.step, *(_cell(getattr(layer, c)) for c in LAYER_COLUMNS)])
    return buf.getvalue()


def records_jsonl(records: Iterable[Any]) -> str:
    """One JSON object per line (``StepRecord.to_dict``; NaN written as "nan")."""
    lines = []
    for rec in records:
        data = rec.to_dict() if hasattr(rec, "to_dict") else dict(rec)
        lines.append(json.dumps(data, allow_nan=False))
    return "\n".join(lines) + ("\n" if lines else "")


def export_run(
    directory: str | os.PathLike[str],
    records: Sequence[Any],
    screenshot_svg: str | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``records.csv``, ``layers.csv``, ``records.jsonl`` (and ``screenshot.svg``, ``run.json``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {
        "csv": atomic_write_text(directory / "records.csv", records_csv(records)),
        "layers_csv": atomic_write_text(directory / "layers.csv", layers_csv(records)),
        "jsonl": atomic_write_text(directory / "records.jsonl", records_jsonl(records)),
    }
    if screenshot_svg is not None:
        written["svg"] = atomic_write_text(directory / "screenshot.svg", screenshot_svg)
    if meta is not None:
        written["meta"] = atomic_write_text(
            directory / "run.json", json.dumps(meta, indent=2, default=str) + "\n"
        )
    return written
