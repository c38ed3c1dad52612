"""What `dualnorm tui PATH` and `read_run` accept: everything dualnorm writes, and one line for the rest.

Every refusal happens before the UI opens: the subprocess tests run with no terminal and a
timeout, so a UI that opened anyway would fail them instead of hanging.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import dualnorm
from dualnorm.checkpoint import CheckpointError
from dualnorm.cli import check_run_paths
from dualnorm.records import StepRecord
from dualnorm.tracking import RunData, RunDirError, RunFileError, RunReader, read_run

ROOT = Path(__file__).resolve().parents[2]


def dualnorm_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "dualnorm", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _tracked(path: Path, steps: int = 3) -> Path:
    with dualnorm.track(name="t", dir=path) as run:
        for step in range(1, steps + 1):
            run.log(step, loss=1.0 / step)
    return path


def test_an_export_folder_reopens_with_its_records_and_metadata(tmp_path):
    from tui.export import export_run  # plain Python: no Textual needed to write an export

    records = [StepRecord("dying-relu", "plain", s, s, 1.0 / s, "numpy", device="cpu") for s in (1, 2, 3)]
    meta = {"experiment": "dying-relu", "config": {"backend": "numpy", "steps": 3}, "records": 3}
    export_run(tmp_path / "exp", records, "<svg/>", meta)
    assert not (tmp_path / "exp" / "meta.json").exists()

    got = read_run(tmp_path / "exp")
    assert [r.to_dict() for r in got.records] == [r.to_dict() for r in records]
    assert got.meta["status"] == "exported" and got.meta["experiment"] == "dying-relu"
    assert got.meta["backend"] == "numpy" and got.meta["name"] == "exp"
    assert check_run_paths([str(tmp_path / "exp")]) is None


def test_read_run_returns_a_named_tuple(tmp_path):
    data = read_run(_tracked(tmp_path / "r"))
    assert isinstance(data, RunData) and isinstance(data, tuple)
    records, meta = data  # unpacks as before
    assert records is data.records and meta is data.meta and meta["status"] == "finished"
    assert [r.step for r in data[0]] == [1, 2, 3]


@pytest.mark.parametrize("damage", ["{oops", "[1, 2]", ""])
def test_a_corrupt_meta_json_is_a_run_file_error(tmp_path, damage):
    run = _tracked(tmp_path / "r")
    (run / "meta.json").write_text(damage)
    with pytest.raises(RunFileError) as info:
        read_run(run)
    error = info.value
    assert isinstance(error, CheckpointError)  # what callers caught before still catches it
    assert str(run / "meta.json") in str(error) and error.line is None
    assert "shown" not in str(error)  # no UI wording in a library error
    problem = check_run_paths([str(run)])
    assert problem is not None and "meta.json" in problem and len(problem.splitlines()) == 1


def test_a_corrupt_line_error_has_no_ui_wording(tmp_path):
    run = _tracked(tmp_path / "r")
    path = run / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{broken", lines[2]]) + "\n")
    with pytest.raises(RunFileError) as info:
        read_run(run)
    assert str(info.value).startswith(f"{path}: line 2: not a step record")
    assert "shown" not in str(info.value) and len(info.value.records) == 1


def test_a_run_folder_without_meta_json_is_refused_naming_the_records_file(tmp_path):
    run = _tracked(tmp_path / "r")
    (run / "meta.json").unlink()
    with pytest.raises(RunDirError, match=r"holds records\.jsonl but no meta\.json"):
        RunReader(run)
    # the records file alone still opens
    assert [r.step for r in read_run(run / "records.jsonl").records] == [1, 2, 3]


def test_a_run_folder_without_records_is_refused(tmp_path):
    run = _tracked(tmp_path / "r")
    (run / "records.jsonl").unlink()
    with pytest.raises(RunDirError, match=r"without its records\.jsonl"):
        RunReader(run)


@pytest.mark.parametrize(
    ("content", "name"),
    [
        ("import dualnorm\nprint('hi')\n", "my_experiments.py"),
        ("a,b\n1,2\n", "table.csv"),
        ("[1]\n", "x.jsonl"),
    ],
)
def test_a_file_that_is_not_records_is_refused_when_opened(tmp_path, content, name):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(RunFileError, match="line 1: not a step record") as info:
        RunReader(path)
    assert str(path) in str(info.value)


def test_files_a_live_run_is_still_writing_open(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    half = StepRecord("e", "v", 1, 1, 0.5, "numpy").to_json()[:20]
    (tmp_path / "half.jsonl").write_text(half)
    for name in ("empty.jsonl", "half.jsonl"):
        assert RunReader(tmp_path / name).poll() == []


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("my_experiments.py", "did you mean -x? (dualnorm tui -x my_experiments.py:ClassName"),
        ("missing.py:Wider", "did you mean -x? (dualnorm tui -x missing.py:Wider"),
        ("dying-relu", "did you mean -x dying-relu?"),
        ("nowhere", "no such file or directory"),
        (".", "not a run"),
    ],
)
def test_tui_refuses_what_is_not_a_run_in_one_line_with_a_hint(tmp_path, path, needle):
    (tmp_path / "my_experiments.py").write_text("from dualnorm.experiments import Experiment\n")
    result = dualnorm_cli("tui", path, cwd=tmp_path)
    message = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, message
    assert needle in message and len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--steps", "-5", "--lr", "-1"], "argument --steps: expected a positive integer, got '-5'"),
        (["--lr", "-1"], "argument --lr: expected a positive number, got '-1'"),
        (["--steps", "0"], "expected a positive integer"),
    ],
)
def test_tui_checks_its_arguments_as_run_does_before_the_ui_opens(tmp_path, argv, needle):
    result = dualnorm_cli("tui", "-x", "dying-relu", *argv, cwd=tmp_path)
    assert result.returncode == 2 and needle in result.stderr
    run = dualnorm_cli("run", "dying-relu", *argv, cwd=tmp_path)
    assert run.returncode == 2 and needle in run.stderr  # the same check, the same words


def test_tracked_records_carry_the_epoch_and_the_device(tmp_path):
    with dualnorm.track(name="t", dir=tmp_path / "r") as run:
        run.log(1, loss=1.0)
        run.log(2, loss=1.0, epoch=1)
        run.log(3, loss=1.0)  # the epoch carries on until another is given
        run.log(4, loss=1.0, epoch=2)
    records = read_run(tmp_path / "r").records
    assert [r.epoch for r in records] == [0, 1, 1, 2]
    assert {r.device for r in records} == {dualnorm.get_backend().device} and records[0].device
    with pytest.raises(dualnorm.InputError, match="epoch must be a non-negative integer"):
        dualnorm.track(dir=tmp_path / "s").log(1, loss=1.0, epoch=-1)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
def test_tracked_model_records_name_the_models_device(tmp_path, backend):
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    with dualnorm.use_backend(backend, device="cpu"):
        model = dualnorm.nn.Sequential(dualnorm.nn.Linear(2, 2))
        with dualnorm.track(model, dir=tmp_path / "r") as run:
            run.log(1, loss=1.0, epoch=3)
    (record,) = read_run(tmp_path / "r").records
    assert (record.backend, record.device, record.epoch) == (backend, "cpu", 3)


def test_the_example_run_twice_into_one_directory_ends_in_one_line(tmp_path):
    def example() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "train_digits.py"),
                "--steps",
                "2",
                "--out",
                "runs/live",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert example().returncode == 0
    second = example()
    assert second.returncode == 1 and "Traceback" not in second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith("train_digits: error: runs/live: already holds a run")
    assert [r.epoch for r in read_run(tmp_path / "runs" / "live").records] == [1, 1]
