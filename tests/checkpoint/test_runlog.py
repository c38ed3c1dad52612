"""Saved runs: step records and RunConfig written as JSON Lines and read back unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import dualnorm
from dualnorm.checkpoint import CheckpointError
from dualnorm.experiments.base import RunConfig
from dualnorm.records import LayerStats, StepRecord
from dualnorm.runlog import RUN_FORMAT


def _records() -> list[StepRecord]:
    layer = LayerStats(
        name="1",
        kind="BatchNorm1d",
        act_mean=float("nan"),
        act_std=float("inf"),
        act_min=-float("inf"),
        act_max=2.5,
        hist_counts=[1, 0, 3],
        hist_edges=[-1.0, 0.0, float("nan"), 2.0],
        grad_norm=0.125,
        gamma_mean=1.0,
    )
    return [
        StepRecord("dying-relu", "batchnorm", 1, 1, 3.3e5, "numpy", layers=[layer], elapsed_s=0.01),
        StepRecord("dying-relu", "batchnorm", 2, 1, float("nan"), "numpy", accuracy=0.5, extra={"lr": 0.001}),
        StepRecord(
            "dying-relu",
            "plain",
            3,
            1,
            float("inf"),
            "mlx",
            status="diverged",
            message="loss became inf at step 3",
            extra={"last_finite_loss": 1e30, "note": "x"},
        ),
        StepRecord("dying-relu", "plain", 4, 2, 1.0, "mlx", status="done"),
    ]


def _same(a: list[StepRecord], b: list[StepRecord]) -> None:
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]  # NaN compares equal as "nan"


def test_round_trip_with_nan_inf_and_a_diverged_record(tmp_path):
    records = _records()
    config = RunConfig(
        backend="mlx",
        steps=4,
        seed=3,
        lr=0.01,
        record_every=2,
        variants=("plain", "batchnorm"),
        options={"mnist_path": tmp_path / "mnist.npz", "scales": [1.0, 0.1]},
    )
    path = dualnorm.save_run(records, config, tmp_path / "run.jsonl")
    loaded, cfg = dualnorm.load_run(path)
    _same(records, loaded)
    assert math.isnan(loaded[1].loss) and loaded[2].loss == math.inf
    assert loaded[2].diverged and loaded[2].message == "loss became inf at step 3"
    layer = loaded[0].layers[0]
    assert isinstance(layer, LayerStats)
    assert math.isnan(layer.act_mean) and layer.act_std == math.inf and layer.act_min == -math.inf
    assert math.isnan(layer.hist_edges[2]) and layer.hist_counts == [1, 0, 3]
    assert loaded[2].extra == {"last_finite_loss": 1e30, "note": "x"}
    assert cfg == config.with_changes(
        options={"mnist_path": str(tmp_path / "mnist.npz"), "scales": [1.0, 0.1]}
    )
    assert isinstance(cfg.variants, tuple)


def test_file_layout_is_a_header_then_one_record_per_line(tmp_path):
    path = dualnorm.save_run(_records(), RunConfig(), tmp_path / "run.jsonl")
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == RUN_FORMAT and header["records"] == 4 == len(lines) - 1
    assert header["experiments"] == ["dying-relu"] and header["dualnorm_version"] == dualnorm.__version__
    assert json.loads(lines[2])["loss"] == "nan"  # strict JSON: no bare NaN
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_no_config_and_no_records(tmp_path):
    path = dualnorm.save_run([], None, tmp_path / "empty-run.jsonl")
    assert dualnorm.load_run(path) == ([], None)


def test_the_tui_export_records_jsonl_loads_without_a_config(tmp_path):
    records = _records()
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    loaded, cfg = dualnorm.load_run(path)
    _same(records, loaded)
    assert cfg is None


def test_save_run_is_atomic_and_keeps_the_old_run_on_failure(tmp_path, monkeypatch):
    from dualnorm import checkpoint

    path = dualnorm.save_run(_records()[:1], None, tmp_path / "run.jsonl")
    old = path.read_bytes()

    def fail(file, data):
        file.write(bytes(data)[:10])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_all", fail)
    with pytest.raises(OSError, match="disk full"):
        dualnorm.save_run(_records(), None, path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["run.jsonl"]


def test_bad_inputs_to_save_run(tmp_path):
    with pytest.raises(TypeError, match="item 0 is a dict"):
        dualnorm.save_run([{"loss": 1.0}], None, tmp_path / "r.jsonl")
    with pytest.raises(TypeError, match="RunConfig"):
        dualnorm.save_run([], {"steps": 3}, tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match=r"options\['model'\] is a object"):
        dualnorm.save_run([], RunConfig(options={"model": object()}), tmp_path / "r.jsonl")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def saved(tmp_path) -> Path:
    return dualnorm.save_run(_records(), RunConfig(steps=4), tmp_path / "run.jsonl")


def _refused(path: Path, *match: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        dualnorm.load_run(path)
    assert str(path) in str(info.value)
    for text in match:
        assert text in str(info.value), (text, str(info.value))
    return info.value


def test_truncated_mid_line(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) - 40])
    _refused(saved, "truncated: the last line is cut short")


def test_truncated_at_a_line_boundary(saved):
    lines = saved.read_text().splitlines(keepends=True)
    saved.write_text("".join(lines[:-1]))
    _refused(saved, "truncated: the header announces 4 records but the file holds 3 lines")


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_truncated_inside_the_header(saved, cut):
    saved.write_bytes(saved.read_bytes()[:cut])
    _refused(saved, "truncated")


def test_corrupt_record_line_is_named(saved):
    lines = saved.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"loss"', '"lo$$"')
    saved.write_text("".join(lines))
    _refused(saved, "line 3 is not a valid step record", "unknown keys ['lo$$']")
    lines[2] = "{not json\n"
    saved.write_text("".join(lines))
    _refused(saved, "corrupt line 3")


def test_missing_empty_and_wrong_format(tmp_path):
    error = _refused(tmp_path / "nope.jsonl", "no such run file")
    assert isinstance(error, FileNotFoundError)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    _refused(tmp_path / "empty.jsonl", "empty (0 bytes)")
    ckpt = dualnorm.save(dualnorm.nn.BatchNorm1d(2), tmp_path / "bn.safetensors")
    _refused(ckpt, "not UTF-8 text")
    (tmp_path / "other.json").write_text('{"name": "something else"}\n')
    _refused(tmp_path / "other.json", "neither a run header nor a step record")
    (tmp_path / "list.json").write_text("[1, 2]\n")
    _refused(tmp_path / "list.json", "line 1 is not a JSON object")


def test_newer_run_format_is_refused(saved):
    lines = saved.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["format_version"] = 7
    saved.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    _refused(saved, "run format 7")


def test_unknown_config_keys_are_named(saved):
    lines = saved.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["config"]["learning_rate"] = 0.1
    saved.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    _refused(saved, "config has unknown keys ['learning_rate']")
