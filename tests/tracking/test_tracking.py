"""dualnorm.track(): the run directory format, its reader, crashes and concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm.errors import InputError
from dualnorm.losses import MSELoss
from dualnorm.optim import SGD
from dualnorm.records import StepRecord
from dualnorm.tracking import (
    OutputPathError,
    RunDirError,
    RunFileError,
    RunReader,
    check_output_dir,
    check_output_file,
    list_runs,
    read_meta,
    read_run,
)
from dualnorm.training import record_layers


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))


def _train(model, run, steps, rng):
    """A plain training loop of a user's own; returns, per step, the layer stats computed by hand."""
    loss_fn, opt = MSELoss(), SGD(model.parameters(), lr=0.05)
    be = model.backend
    expected = {}
    for step in range(1, steps + 1):
        x = be.asarray(rng.normal(size=(8, 3)).astype(np.float32))
        y = be.asarray(rng.normal(size=(8, 1)).astype(np.float32))
        opt.zero_grad()
        outs, h = [], x
        for child in model:
            h = child(h)
            outs.append(h)
        loss = loss_fn(h, y)
        g = loss_fn.backward()
        grads = [None] * len(outs)
        for i in range(len(outs) - 1, -1, -1):
            grads[i] = g
            g = model[i].backward(g)
        opt.step()  # as in dualnorm.training.train: statistics after the step
        expected[step] = record_layers(be, [str(i) for i in range(len(outs))], list(model), outs, grads)
        run.log(step, loss=loss, extra_metric=float(step) * 2)
    return expected


def test_round_trip_through_step_record_with_layer_stats(backend, tmp_path):
    model = _model()
    rng = np.random.default_rng(0)
    with dualnorm.track(model, name="mine", every=3, dir=tmp_path / "run") as run:
        expected = _train(model, run, 7, rng)
    records, meta = read_run(tmp_path / "run")
    assert [r.step for r in records] == list(range(1, 8))
    assert all(isinstance(r, StepRecord) and r.backend == backend for r in records)
    with_layers = [r.step for r in records if r.layers]
    assert with_layers == [1, 3, 6]  # the first log, then every 3 steps
    for r in records:
        if r.layers:  # the same statistics the experiments record, from the latest forward/backward
            want = [s.__dict__ for s in expected[r.step]]
            got = [s.__dict__ for s in r.layers]
            assert [g["name"] for g in got] == [w["name"] for w in want]
            for g, w in zip(got, want, strict=True):
                for key, value in w.items():
                    if isinstance(value, float):
                        assert g[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
                    else:
                        assert g[key] == value, key
        assert r.extra["scalars"] == {"extra_metric": 2.0 * r.step}
    assert records[0].layers[1].gamma_mean == pytest.approx(1.0, abs=0.05)
    assert meta["status"] == "finished" and meta["name"] == "mine" and meta["backend"] == backend
    assert "BatchNorm1d" in meta["model"] and meta["versions"]["dualnorm"] == dualnorm.__version__
    assert meta["argv"] and meta["started_at"] and meta["device"]
    # every line is one StepRecord's JSON, and the model is left as it was (no capture hooks)
    lines = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    assert [StepRecord.from_dict(json.loads(line)).to_dict() for line in lines] == [
        r.to_dict() for r in records
    ]
    assert all("forward" not in child.__dict__ for child in model)
    assert not (tmp_path / "run" / "lock").exists()


def test_scalar_logger_without_a_model(tmp_path):
    run = dualnorm.track(name="scalars", dir=tmp_path / "s")
    run.log(1, loss=0.5, accuracy=0.25, lr=1e-3)
    run.log(2, accuracy=0.5)
    assert run.status == "running" and read_meta(tmp_path / "s")["status"] == "running"
    run.finish()
    records, meta = read_run(tmp_path / "s")
    assert (
        records[0].loss == 0.5 and records[0].accuracy == 0.25 and records[0].extra["scalars"] == {"lr": 1e-3}
    )
    assert records[1].extra.get("no_loss") is True and records[0].layers == []
    assert meta["status"] == "finished"


def test_default_directory_is_under_dualnorm_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with dualnorm.track(name="a b/c") as run:
        run.log(1, loss=1.0)
    assert run.dir.parent == tmp_path / "dualnorm-runs" or run.dir.parent.resolve() == (
        tmp_path / "dualnorm-runs"
    )
    assert run.dir.name.startswith("a-b-c-")
    listed = list_runs(tmp_path / "dualnorm-runs")
    assert [m["name"] for m in listed] == ["a b/c"] and listed[0]["steps"] == 1


def test_exception_marks_failed_and_keyboard_interrupt_interrupted(tmp_path):
    with pytest.raises(ZeroDivisionError), dualnorm.track(dir=tmp_path / "f") as run:
        run.log(1, loss=1.0)
        1 / 0  # noqa: B018
    meta = read_meta(tmp_path / "f")
    assert meta["status"] == "failed" and "ZeroDivisionError" in meta["error"]
    with pytest.raises(KeyboardInterrupt), dualnorm.track(dir=tmp_path / "k"):
        raise KeyboardInterrupt
    assert read_meta(tmp_path / "k")["status"] == "interrupted"


def test_killed_writer_reads_as_interrupted_and_torn_last_line_is_skipped(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, dualnorm
        run = dualnorm.track(name="crash", dir={str(tmp_path / "c")!r})
        for step in range(1, 6):
            run.log(step, loss=1.0 / step)
        run.writer.fh.write('{{"experiment": "crash", "variant": "ma')  # torn mid-line
        run.writer.fh.flush()
        os._exit(9)  # killed: no finish(), no atexit
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 9
    assert read_meta(tmp_path / "c")["status"] == "interrupted"
    with pytest.warns(UserWarning, match=r"records.jsonl: line 6 is cut short"):
        records, meta = read_run(tmp_path / "c")
    assert [r.step for r in records] == [1, 2, 3, 4, 5] and meta["status"] == "interrupted"


def test_corrupt_middle_line_names_file_and_line_and_keeps_earlier_records(tmp_path):
    with dualnorm.track(dir=tmp_path / "m") as run:
        for step in range(1, 5):
            run.log(step, loss=float(step))
    path = tmp_path / "m" / "records.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"experiment": "m", "step": 3, "loss": [oops'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFileError, match=r"records.jsonl: line 3: not a step record") as info:
        read_run(tmp_path / "m")
    assert info.value.line == 3 and [r.step for r in info.value.records] == [1, 2]
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "line",
    [
        '["a list"]',
        '{"experiment": "x", "variant": "v", "step": 1, "epoch": 0, "loss": 1, "backend": "numpy", '
        '"layers": {"not": "a list"}}',
        '{"unknown_key": 1}',
        "\x00\x01 random bytes",
    ],
)
def test_wrong_json_types_are_errors_not_crashes(tmp_path, line):
    path = tmp_path / "r.jsonl"
    good = StepRecord("x", "v", 1, 0, 1.0, "numpy").to_json()
    path.write_text(good + "\n" + line + "\n" + good + "\n")
    with pytest.raises(RunFileError) as info:
        read_run(path)
    assert info.value.line == 2 and len(info.value.records) == 1


def test_two_writers_are_refused_and_nothing_is_overwritten(tmp_path):
    first = dualnorm.track(name="one", dir=tmp_path / "d")
    first.log(1, loss=1.0)
    with pytest.raises(RunDirError, match="another writer holds this run directory"):
        dualnorm.track(name="two", dir=tmp_path / "d")
    first.log(2, loss=0.5)
    first.finish()
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    with pytest.raises(RunDirError, match="already holds a run"):
        dualnorm.track(name="three", dir=tmp_path / "d")
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before
    assert [r.step for r in read_run(tmp_path / "d")[0]] == [1, 2]


def test_reader_follows_appended_bytes_only(tmp_path):
    run = dualnorm.track(dir=tmp_path / "f")
    reader = RunReader(tmp_path / "f")
    assert reader.poll() == []
    run.log(1, loss=1.0)
    run.log(2, loss=2.0)
    assert [r.step for r in reader.poll()] == [1, 2]
    run.writer.fh.write(StepRecord("x", "main", 3, 0, 3.0, "numpy").to_json()[:20])
    run.writer.fh.flush()
    assert reader.poll() == [] and reader.torn  # half a line waits for its newline
    run.writer.fh.write(StepRecord("x", "main", 3, 0, 3.0, "numpy").to_json()[20:] + "\n")
    run.writer.fh.flush()
    assert [r.step for r in reader.poll()] == [3]
    offset = reader.offset
    assert reader.poll() == [] and reader.offset == offset
    run.finish()


def test_reads_save_run_files_and_cli_json(tmp_path):
    from dualnorm.experiments import RunConfig

    recs = [StepRecord("e", "v", i, 0, 1.0 / i, "numpy") for i in (1, 2)]
    dualnorm.save_run(recs, RunConfig(steps=2), tmp_path / "saved.jsonl")
    got, meta = read_run(tmp_path / "saved.jsonl")
    assert [r.to_dict() for r in got] == [r.to_dict() for r in recs] and meta is None


@pytest.mark.parametrize("make", ["missing", "empty_dir", "dir_with_other"])
def test_a_path_that_is_not_a_run(tmp_path, make):
    path = tmp_path / "x"
    if make != "missing":
        path.mkdir()
    if make == "dir_with_other":
        (path / "notes.txt").write_text("hi")
    with pytest.raises(RunDirError, match="expected a run directory") as info:
        RunReader(path)
    assert str(path) in str(info.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="dualnorm model"):
        dualnorm.track("not a model", dir=tmp_path / "a")
    with pytest.raises(InputError, match="positive integer"):
        dualnorm.track(every=0, dir=tmp_path / "b")
    run = dualnorm.track(dir=tmp_path / "c")
    with pytest.raises(InputError, match="loss must be a number"):
        run.log(1, loss="low")
    with pytest.raises(InputError, match="non-negative integer"):
        run.log(1.5, loss=1.0)
    run.finish()
    with pytest.raises(InputError, match=r"after run\.finish"):
        run.log(2, loss=1.0)


def test_output_path_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match=r"file: expected a directory, found a file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(OutputPathError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "file" / "sub")
    with pytest.raises(OutputPathError, match="is a directory; give a file name"):
        check_output_file(tmp_path)
    with pytest.raises(OutputPathError, match=r"/proc/x\.jsonl"):
        check_output_file("/proc/x.jsonl")
    with pytest.raises(OutputPathError):
        dualnorm.track(dir="/proc/dualnorm-run")
    assert check_output_file(tmp_path / "new" / "deeper" / "r.jsonl").parent.is_dir()
