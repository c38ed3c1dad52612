"""Export writers: CSV, JSON Lines, atomic replace."""

from __future__ import annotations

import csv
import json
import os

import pytest

pytest.importorskip("textual")

from fakes import FakeExperiment

from dualnorm.experiments.base import RunConfig
from dualnorm.records import StepRecord
from tui.export import atomic_write_text, export_run, layers_csv, records_csv, records_jsonl


@pytest.fixture
def records():
    return list(FakeExperiment("diverge", "diverge", steps=8).run(RunConfig(seed=1)))


def test_records_csv_rows(records):
    rows = list(csv.DictReader(records_csv(records).splitlines()))
    assert len(rows) == len(records)
    assert rows[0]["variant"] == "plain" and rows[0]["step"] == "1"
    diverged = [r for r in rows if r["status"] == "diverged"]
    assert diverged and diverged[0]["loss"] == "nan"
    assert rows[0]["accuracy"] == ""


def test_layers_csv_rows(records):
    rows = list(csv.DictReader(layers_csv(records).splitlines()))
    assert len(rows) == sum(len(r.layers) for r in records)
    assert rows[0]["layer_kind"] == "Linear"
    float(rows[0]["act_mean"])


def test_jsonl_round_trips(records):
    lines = records_jsonl(records).splitlines()
    assert len(lines) == len(records)
    for line, rec in zip(lines, records, strict=True):
        data = json.loads(line)
        assert {"variant", "step", "loss", "layers"} <= set(data)
        back = StepRecord.from_dict(data)
        assert back.step == rec.step and back.variant == rec.variant
    assert records_jsonl([]) == ""


def test_export_run_writes_all_files_atomically(tmp_path, records):
    out = export_run(tmp_path / "run", records, "<svg></svg>", {"experiment": "diverge"})
    assert set(out) == {"csv", "layers_csv", "jsonl", "svg", "meta"}
    for path in out.values():
        assert path.exists()
    assert not [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["experiment"] == "diverge"


def test_atomic_write_replaces(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "f.txt", "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["f.txt"]
