"""Checks of output paths, done before any work starts, so a bad path fails in one line.

Every writer (checkpoints, saved runs, the CLI's ``--json``/``--out``, the UI's exports)
calls :func:`check_output_path` first: a path that cannot be written raises
:class:`~dualnorm.errors.OutputPathError` naming the user's path and why, instead of an
``OSError`` from deep inside the writer that names a temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from dualnorm.errors import OutputPathError


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _as_path(path: Any, what: str, wanted: str) -> Path:
    """``path`` as a Path (``~`` expanded), or OutputPathError for a non-path or an empty one."""
    try:
        raw = os.fspath(path)
    except TypeError:
        raise OutputPathError(repr(path), what, "a path must be a string or os.PathLike") from None
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw.strip():
        raise OutputPathError(repr(raw), what, f"the path is empty; give {wanted}")
    return Path(raw).expanduser()


def check_output_path(
    path: str | os.PathLike[str],
    what: str = "output file",
    *,
    create_parent: bool = False,
    atomic: bool = True,
) -> Path:
    """Return ``path`` as a Path if a file can be written there; else raise OutputPathError.

    Args:
        path: the file the caller will write.
        what: how messages name it ("checkpoint", "records file", ...).
        create_parent: create missing parent directories (as ``mkdir -p``); when False a
            missing directory is an error.
        atomic: the caller writes a temporary file and renames it onto ``path`` (so an
            existing read-only file can be replaced); when False an existing file must itself
            be writable.

    The directory is probed by creating and removing an empty temporary file in it: that
    is the only check that holds on read-only mounts, pseudo file systems such as /proc
    and for root, for whom ``os.access`` says yes to everything.
    """
    target = _as_path(path, what, "a file name")
    shown = str(target)
    if target.is_dir():
        raise OutputPathError(shown, what, "the path is a directory; give a file name inside it")
    parent = target.parent
    if not parent.exists():
        if not create_parent:
            raise OutputPathError(
                shown, what, f"the directory {parent} does not exist; create it first or choose another path"
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(
                shown, what, f"the directory {parent} does not exist and cannot be created ({_why(exc)})"
            ) from None
    elif not parent.is_dir():
        raise OutputPathError(shown, what, f"{parent} is a file, not a directory")
    if target.exists() and not atomic and not os.access(target, os.W_OK):
        raise OutputPathError(shown, what, "the file exists and is not writable")
    try:
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=f".{target.name}.", suffix=".probe")  # noqa: SIM115
    except OSError as exc:
        raise OutputPathError(
            shown, what, f"cannot create files in the directory {parent} ({_why(exc)})"
        ) from None
    probe.close()
    return target


def check_output_dir(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create ``path`` (and its parents) if needed and prove it writable; else raise OutputPathError."""
    directory = _as_path(path, what, "a directory name")
    shown = str(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputPathError(shown, what, "expected a directory, found a file; give a directory path")
    nearest = directory
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise OutputPathError(shown, what, f"{nearest} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(shown, what, f"the directory cannot be created ({_why(exc)})") from None
    try:
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".dualnorm.", suffix=".probe")  # noqa: SIM115
    except OSError as exc:
        raise OutputPathError(shown, what, f"cannot create files in it ({_why(exc)})") from None
    probe.close()
    return directory


__all__ = ["check_output_dir", "check_output_path"]
