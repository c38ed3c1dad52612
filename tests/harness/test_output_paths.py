"""Output paths are checked before any work: one dualnorm error naming the user's path and why."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm._paths import check_output_path
from dualnorm.checkpoint import CheckpointError
from dualnorm.errors import DualnormError, OutputPathError
from dualnorm.records import StepRecord

ON_LINUX_PROC = sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def _no_temporaries(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not ON_LINUX_PROC, reason="needs Linux /proc")
def test_save_into_proc_names_the_users_path_not_a_temporary(backend):
    with pytest.raises(OutputPathError) as info:
        dualnorm.save(nn.Linear(2, 2), "/proc/m.safetensors")
    error = info.value
    message = str(error)
    assert "/proc/m.safetensors" in message
    assert "cannot create files in the directory /proc" in message
    assert ".tmp" not in message and "\n" not in message
    # Still a CheckpointError (what callers of save already catch) and an OSError.
    assert isinstance(error, CheckpointError) and isinstance(error, OSError)
    assert isinstance(error, DualnormError)


@pytest.mark.skipif(not ON_LINUX_PROC, reason="needs Linux /proc")
def test_save_run_into_proc(tmp_path):
    record = StepRecord("dying-relu", "bn", 1, 1, 0.5, "numpy")
    with pytest.raises(OutputPathError, match=r"run file /proc/run\.jsonl|/proc/run\.jsonl: cannot save"):
        dualnorm.save_run([record], None, "/proc/run.jsonl")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing" / "deeper" / "x.bin", "does not exist; create it first"),
        (lambda d: d, "is a directory"),
        (lambda d: d / "file.txt" / "x.bin", "is a file, not a directory"),
    ],
    ids=["missing-dir", "directory", "file-as-dir"],
)
def test_check_output_path_reasons(tmp_path, make, fragment):
    (tmp_path / "file.txt").write_text("x")
    path = make(tmp_path)
    with pytest.raises(OutputPathError) as info:
        check_output_path(path, "records file")
    assert fragment in str(info.value)
    assert str(path) in str(info.value) and "records file" in str(info.value)
    assert info.value.path == str(path)


def test_check_output_path_creates_parents_on_request_and_leaves_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "records.jsonl"
    assert check_output_path(target, "records file", create_parent=True) == target
    assert target.parent.is_dir() and not target.exists()
    assert _no_temporaries(target.parent) == []


@pytest.mark.skipif(not ON_LINUX_PROC, reason="needs Linux /proc")
def test_check_output_path_parent_that_cannot_be_created():
    with pytest.raises(OutputPathError, match=r"/proc/nope does not exist and cannot be created"):
        check_output_path("/proc/nope/records.jsonl", "records file", create_parent=True)


@pytest.mark.parametrize("bad", ["", "   "])
def test_check_output_path_empty(bad):
    with pytest.raises(OutputPathError, match="the path is empty"):
        check_output_path(bad)


def test_check_output_path_not_a_path():
    with pytest.raises(OutputPathError, match=r"must be a string or os\.PathLike"):
        check_output_path(3.5)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_directory_and_file(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.jsonl").write_text("x")
    os.chmod(ro / "old.jsonl", 0o444)
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(OutputPathError, match="cannot create files in the directory"):
            check_output_path(ro / "new.jsonl")
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_path(ro / "old.jsonl", atomic=False)
    finally:
        os.chmod(ro, 0o755)


def test_failed_save_leaves_no_file(tmp_path, backend):
    target = tmp_path / "missing" / "m.safetensors"
    with pytest.raises(OutputPathError):
        dualnorm.save({"w": np.ones(3)}, target)
    assert not target.parent.exists() and list(tmp_path.iterdir()) == []
