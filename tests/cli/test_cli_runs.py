"""dualnorm run: run directories, output path checks, user experiments; the examples."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dualnorm.cli import main
from dualnorm.tracking import read_meta, read_run

ROOT = Path(__file__).resolve().parents[2]
USER = ROOT / "tests" / "experiments" / "user_exp_source.py"


def test_run_writes_a_run_directory_by_default(tmp_path, capsys):
    assert main(["run", "dying-relu", "--steps", "20", "--record-every", "10", "--quiet"]) == 0
    (run_dir,) = (tmp_path / "dualnorm-runs").iterdir()
    assert run_dir.name.startswith("dying-relu-")
    records, meta = read_run(run_dir)
    assert meta["status"] == "finished" and meta["experiment"] == "dying-relu"
    assert meta["variants"] == ["plain", "batchnorm"] and meta["config"]["steps"] == 20
    assert [(r.variant, r.step) for r in records] == [
        (v, s) for v in ("plain", "batchnorm") for s in (1, 10, 20)
    ]
    assert f"dualnorm tui dualnorm-runs/{run_dir.name}" in capsys.readouterr().out


def test_out_and_json_hold_the_same_records(tmp_path):
    argv = ["run", "norm-zoo", "--steps", "4", "--variants", "batch", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.jsonl")]) == 0
    from_dir, _ = read_run(tmp_path / "o")
    from_json, _ = read_run(tmp_path / "r.jsonl")
    strip = lambda rs: [{k: v for k, v in r.to_dict().items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(from_dir) == strip(from_json) and len(from_dir) == 2


@pytest.mark.parametrize(
    ("flag", "path", "needle"),
    [
        ("--json", "/proc/x.jsonl", "/proc/x.jsonl: cannot create files in the directory /proc"),
        ("--out", "/proc/dualnorm-x", "/proc/dualnorm-x: the directory cannot be created"),
        ("--out", "FILE", "expected a directory, found a file"),
        ("--json", "FILE/x.jsonl", "is a file, not a directory"),
        ("--json", ".", "is a directory; give a file name"),
    ],
)
def test_unwritable_output_paths_exit_2_before_any_work(tmp_path, capsys, flag, path, needle):
    (tmp_path / "FILE").write_text("keep")
    path = str(tmp_path / path) if not path.startswith("/") else path
    assert main(["run", "dying-relu", "--steps", "5", "--quiet", flag, path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("dualnorm: error:")
    assert not (tmp_path / "dualnorm-runs").exists()  # nothing started
    assert (tmp_path / "FILE").read_text() == "keep"


def test_out_directory_that_holds_a_run_is_refused(tmp_path, capsys):
    argv = ["run", "dying-relu", "--steps", "2", "--quiet", "--out", str(tmp_path / "d")]
    assert main(argv) == 0
    before = (tmp_path / "d" / "records.jsonl").read_bytes()
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "d" / "records.jsonl").read_bytes() == before


def test_run_a_user_experiment_from_a_file(tmp_path, capsys):
    target = tmp_path / "mine.py"
    shutil.copy(USER, target)
    assert main(["run", f"{target}:Wider", "--steps", "6", "--quiet", "--out", str(tmp_path / "w")]) == 0
    records, meta = read_run(tmp_path / "w")
    assert meta["experiment"] == "wider" and {r.variant for r in records} == {"w2", "w16"}
    assert "wider: summary" in capsys.readouterr().out


def test_user_experiment_that_fails_to_import(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("raise ValueError('broken on import')\n")
    assert main(["run", f"{bad}:X"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("dualnorm: error:")
    assert "broken on import" in err.strip().splitlines()[-1]


def test_user_experiment_that_raises_while_training_marks_the_run_failed(tmp_path):
    target = tmp_path / "mine.py"
    shutil.copy(USER, target)
    with pytest.raises(RuntimeError, match="on purpose"):
        main(["run", f"{target}:Broken", "--quiet", "--out", str(tmp_path / "b")])
    assert read_meta(tmp_path / "b")["status"] == "failed"


def test_example_script_trains_and_tracks(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_digits.py"), "--steps", "12", "--every", "5",
         "--out", str(tmp_path / "ex")],
        capture_output=True, text=True, cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records, meta = read_run(tmp_path / "ex")
    assert [r.step for r in records] == list(range(1, 13)) and meta["status"] == "finished"
    assert [r.step for r in records if r.layers] == [1, 5, 10]
    assert records[-1].accuracy is not None and records[-1].loss < records[0].loss
