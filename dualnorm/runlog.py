"""Saved runs: an experiment's step records and its configuration, in one JSON Lines file.

A finished run can be written with :func:`save_run` and viewed again later with
:func:`load_run`:

>>> import os, tempfile, dualnorm
>>> from dualnorm.records import StepRecord
>>> from dualnorm.experiments.base import RunConfig
>>> records = [StepRecord("dying-relu", "plain", 1, 1, float("nan"), "numpy", status="diverged")]
>>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
>>> _ = dualnorm.save_run(records, RunConfig(steps=1), path)
>>> loaded, config = dualnorm.load_run(path)
>>> loaded[0].status, config.steps
('diverged', 1)

The file's first line is a header::

    {"format": "dualnorm-run", "format_version": 1, "dualnorm_version": "0.1.0",
     "records": 1, "experiments": ["dying-relu"], "config": {...RunConfig fields...}}

and every further line is one ``StepRecord.to_dict()`` (NaN and infinities written
as the strings "nan", "inf", "-inf", as everywhere in dualnorm). The header's record
count makes a file cut short at a line boundary detectable. The file is written
atomically (temporary file, fsync, rename), like checkpoints.

``load_run`` also reads the header-less ``records.jsonl`` that the terminal UI's
export writes; its configuration is then ``None``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualnorm.checkpoint import CheckpointError, atomic_write, read_file
from dualnorm.errors import InputError
from dualnorm.records import StepRecord, from_json_safe, json_safe

if TYPE_CHECKING:
    from dualnorm.experiments.base import RunConfig

RUN_FORMAT = "dualnorm-run"
RUN_FORMAT_VERSION = 1


def save_run(records: Iterable[StepRecord], config: RunConfig | None, path: str | os.PathLike[str]) -> Path:
    """Write ``records`` and ``config`` to ``path`` (JSON Lines with a header line), atomically.

    ``config`` may be None when the run's configuration is not known. Option values in
    ``config.options`` must be JSON values (paths are written as strings). Returns the path.
    """
    from dualnorm import __version__

    records = list(records)
    for i, record in enumerate(records):
        if not isinstance(record, StepRecord):
            raise InputError(
                f"save_run takes StepRecord objects; item {i} is a {type(record).__name__}", type_error=True
            )
    from dualnorm.experiments.base import RunConfig

    if config is not None and not isinstance(config, RunConfig):
        raise InputError(
            f"save_run takes a RunConfig (or None) as config, got {type(config).__name__}", type_error=True
        )
    header = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "dualnorm_version": __version__,
        "records": len(records),
        "experiments": sorted({r.experiment for r in records}),
        "backends": sorted({f"{r.backend}:{r.device}" if r.device else r.backend for r in records}),
        "config": None if config is None else _config_to_dict(config),
    }
    lines = [json.dumps(header, allow_nan=False)]
    for i, record in enumerate(records):
        try:
            lines.append(record.to_json())
        except (TypeError, ValueError) as exc:
            raise InputError(f"save_run: record {i} cannot be written as JSON: {exc}") from None
    return atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"), what="run file")


def load_run(path: str | os.PathLike[str]) -> tuple[list[StepRecord], RunConfig | None]:
    """The records and configuration saved by :func:`save_run` (or a UI ``records.jsonl``).

    Raises :class:`~dualnorm.checkpoint.CheckpointError` naming the file (and the line)
    for a missing, empty, truncated or corrupt file, or a file of another format.
    """
    path = Path(os.fspath(path))
    data = read_file(path, "run file")
    hint = "Save runs with dualnorm.save_run(records, config, path)"
    if not data:
        raise CheckpointError(path, "the file is empty (0 bytes), not a saved run", hint)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(path, f"not a saved run: not UTF-8 text (byte {exc.start})", hint) from None
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()
    first = _parse_line(path, lines, 0, complete)
    if not isinstance(first, dict):
        raise CheckpointError(path, "not a saved run: line 1 is not a JSON object", hint)
    if first.get("format") == RUN_FORMAT:
        version = first.get("format_version")
        if version != RUN_FORMAT_VERSION:
            raise CheckpointError(
                path,
                f"written with run format {version!r}; this dualnorm reads format {RUN_FORMAT_VERSION}",
                f"It was written by dualnorm {first.get('dualnorm_version', '?')}",
            )
        expected = first.get("records")
        config = _config_from_dict(path, first.get("config"))
        body = range(1, len(lines))
        if expected != len(body):
            raise CheckpointError(
                path,
                f"truncated: the header announces {expected} records but the file holds "
                f"{len(body)} lines after it",
                "The file was cut short; save the run again",
            )
    elif "experiment" in first and "step" in first:  # the TUI's header-less records.jsonl
        config = None
        body = range(len(lines))
    else:
        raise CheckpointError(
            path,
            f"not a saved run: line 1 has neither a run header nor a step record (keys {sorted(first)[:8]})",
            hint,
        )
    records = []
    for i in body:
        item = _parse_line(path, lines, i, complete)
        if not isinstance(item, dict):
            raise CheckpointError(path, f"line {i + 1} is not a JSON object")
        try:
            records.append(_record_from_dict(item))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise CheckpointError(path, f"line {i + 1} is not a valid step record: {exc}") from None
    return records, config


# A record is a few KB (histograms included); a line far beyond that is damage, not data.
MAX_LINE_CHARS = 16 << 20


def _parse_line(path: Path, lines: list[str], i: int, complete: bool) -> Any:
    if i < len(lines) and len(lines[i]) > MAX_LINE_CHARS:
        raise CheckpointError(
            path,
            f"line {i + 1} is {len(lines[i])} characters long, more than a step record can be "
            f"({MAX_LINE_CHARS}); the file is damaged or not a saved run",
        )
    try:
        return json.loads(lines[i])
    except RecursionError:
        raise CheckpointError(path, f"corrupt line {i + 1} (JSON nested too deeply)") from None
    except (ValueError, IndexError) as exc:
        last = i == len(lines) - 1 and not complete
        what = "truncated: the last line is cut short" if last else f"corrupt line {i + 1}"
        raise CheckpointError(path, f"{what} ({exc})") from None


def _config_to_dict(config: RunConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    options = {}
    for key, value in config.options.items():
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        try:
            json.dumps(json_safe(value), allow_nan=False)
        except (TypeError, ValueError):
            raise InputError(
                f"save_run: config.options[{key!r}] is a {type(value).__name__}, which is not a JSON value"
            ) from None
        options[key] = value
    data["options"] = options
    return json_safe(data)


def _config_from_dict(path: Path, data: Any) -> RunConfig | None:
    from dualnorm.experiments.base import RunConfig

    if data is None:
        return None
    if not isinstance(data, dict):
        raise CheckpointError(path, "corrupt run header: config is not a JSON object")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(
            path, f"run header: config has unknown keys {unknown}; expected a subset of {sorted(known)}"
        )
    data = dict(data)
    if "lr" in data:
        data["lr"] = from_json_safe(data["lr"])
    for key, kinds in _CONFIG_TYPES.items():
        value = data.get(key)
        if key in data and not any(_config_value_fits(kind, value) for kind in kinds):
            raise CheckpointError(
                path, f"run header: config field {key!r} must be {' or '.join(kinds)}, got {value!r:.60}"
            )
    if data.get("variants") is not None:
        data["variants"] = tuple(data["variants"])
    try:
        return RunConfig(**data)
    except TypeError as exc:
        raise CheckpointError(path, f"run header: config is not a valid RunConfig: {exc}") from None


_CONFIG_TYPES = {
    "backend": ("a string", "null"),
    "steps": ("an integer", "null"),
    "seed": ("an integer",),
    "lr": ("a number", "null"),
    "record_every": ("an integer", "null"),
    "variants": ("a list of strings", "null"),
    "options": ("a JSON object",),
}


def _config_value_fits(kind: str, value: Any) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    return {
        "null": value is None,
        "a string": isinstance(value, str),
        "an integer": is_int,
        "a number": is_int or isinstance(value, float),
        "a list of strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "a JSON object": isinstance(value, dict),
    }[kind]


def _record_from_dict(data: dict[str, Any]) -> StepRecord:
    data = dict(data)
    layers = data.get("layers", [])
    if not isinstance(layers, list):
        raise TypeError(f"layers is a {type(layers).__name__}, expected a list")
    return StepRecord.from_dict(data)


__all__ = ["RUN_FORMAT", "RUN_FORMAT_VERSION", "load_run", "save_run"]
