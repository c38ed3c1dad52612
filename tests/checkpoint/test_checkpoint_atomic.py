"""Saves are atomic: an interrupted save (exception, Ctrl-C, SIGKILL) leaves the previous checkpoint."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import dualnorm
from dualnorm import checkpoint
from dualnorm.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[2]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize(
    "exc", [OSError("disk full"), KeyboardInterrupt()], ids=["OSError", "KeyboardInterrupt"]
)
def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch, exc):
    path = tmp_path / "model.safetensors"
    dualnorm.save({"w": np.ones(1000, dtype=np.float32)}, path)
    old = path.read_bytes()

    def half_then_fail(file, data):
        file.write(memoryview(data)[: len(data) // 2])
        raise exc

    monkeypatch.setattr(checkpoint, "_write_all", half_then_fail)
    with pytest.raises(type(exc)):
        dualnorm.save({"w": np.zeros(1000, dtype=np.float32)}, path)
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []
    assert dualnorm.load(path)["w"].tolist() == [1.0] * 1000


def test_failed_rename_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"

    def no_rename(src, dst):
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(checkpoint.os, "replace", no_rename)
    with pytest.raises(PermissionError):
        dualnorm.save({"w": np.ones(3)}, path)
    assert list(tmp_path.iterdir()) == []


def test_permissions_of_an_existing_file_are_kept(tmp_path):
    path = tmp_path / "model.safetensors"
    dualnorm.save({"w": np.ones(3)}, path)
    os.chmod(path, 0o640)
    dualnorm.save({"w": np.zeros(3)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_new_file_gets_umask_permissions_not_the_temporary_files_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = dualnorm.save({"w": np.ones(3)}, tmp_path / "new.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_temporary_files_are_hidden_and_never_look_like_checkpoints(tmp_path, monkeypatch):
    seen = []
    real = checkpoint._write_all

    def spy(file, data):
        seen.append(Path(file.name).name)
        real(file, data)

    monkeypatch.setattr(checkpoint, "_write_all", spy)
    dualnorm.save({"w": np.ones(3)}, tmp_path / "model.safetensors")
    (name,) = seen
    assert name.startswith(".model.safetensors.") and name.endswith(".tmp")
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]


# --- killing a process in the middle of a save -------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import dualnorm
    from dualnorm import checkpoint

    path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dualnorm.save({"w": np.full(n, 1.0, np.float32), "step": np.array(1)}, path)
    print("saved 1", flush=True)
    if mode == "block":
        # Stop halfway through writing the temporary file, and wait there to be killed.
        def half_then_wait(file, data):
            view = memoryview(data)
            file.write(view[: len(view) // 2])
            file.flush()
            print("half written", flush=True)
            time.sleep(60)
        checkpoint._write_all = half_then_wait
        dualnorm.save({"w": np.full(n, 2.0, np.float32), "step": np.array(2)}, path)
    else:
        step = 2
        while True:  # save again and again until killed
            dualnorm.save({"w": np.full(n, float(step), np.float32), "step": np.array(step)}, path)
            step += 1
    """
)


def _child(path: Path, mode: str, n: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), DUALNORM_BACKEND="numpy")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _assert_valid_checkpoint(path: Path, n: int) -> int:
    state = dualnorm.load(path)  # verifies structure and digest
    step = int(state["step"])
    assert state["w"].shape == (n,)
    assert np.all(state["w"] == float(step))
    return step


def test_sigkill_halfway_through_writing_leaves_the_previous_checkpoint(tmp_path):
    """Deterministic: the child is stopped inside the write of its second save, then SIGKILLed."""
    n = 4 << 20  # 16 MiB of float32
    path = tmp_path / "model.safetensors"
    child = _child(path, "block", n)
    try:
        assert child.stdout.readline().strip() == "saved 1", child.stderr.read()
        assert child.stdout.readline().strip() == "half written", child.stderr.read()
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        full = path.stat().st_size
        assert 0 < tmp.stat().st_size < full  # the new checkpoint really is half on disk
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert _assert_valid_checkpoint(path, n) == 1  # the previous checkpoint, intact
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    # The leftover temporary (SIGKILL leaves no chance to clean up) is hidden, named *.tmp,
    # and refused as a checkpoint if someone loads it anyway.
    (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".model.safetensors.")]
    with pytest.raises(CheckpointError, match=r"truncated|corrupt"):
        dualnorm.load(tmp)


def test_sigkill_at_a_random_moment_of_repeated_saves_leaves_a_valid_checkpoint(tmp_path):
    """Unscripted: a child saves 32 MiB again and again; it is killed while a temporary file is growing."""
    n = 8 << 20
    path = tmp_path / "model.safetensors"
    child = _child(path, "loop", n)
    observed_partial = None
    try:
        assert child.stdout.readline().strip() == "saved 1", child.stderr.read()
        deadline = time.monotonic() + 30.0  # ends at the first save seen in progress
        while time.monotonic() < deadline:  # wait until a save is visibly in progress
            tmps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            sizes = [p.stat().st_size for p in tmps if p.exists()]
            if sizes and 0 < sizes[0] < path.stat().st_size:
                observed_partial = sizes[0]
                break
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    finally:
        child.kill()
        child.wait()
    step = _assert_valid_checkpoint(path, n)
    assert step >= 1
    assert observed_partial is not None, "never caught a save in progress"
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
