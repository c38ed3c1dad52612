"""Checkpoints in the safetensors format, readable by PyTorch, written atomically.

A checkpoint is a module's ``state_dict()`` (PyTorch's key names: ``weight``,
``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``, ``0.weight`` ...)
stored as a ``.safetensors`` file:

>>> import os, tempfile, numpy as np, dualnorm
>>> bn = dualnorm.nn.BatchNorm1d(3)
>>> path = os.path.join(tempfile.mkdtemp(), "bn.safetensors")
>>> _ = dualnorm.save(bn, path)
>>> sorted(dualnorm.load(path))
['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
>>> dualnorm.load_into(dualnorm.nn.BatchNorm1d(3), path)
LoadResult(missing_keys=[], unexpected_keys=[])

The same file loads into ``torch.nn.BatchNorm1d(3)`` with
``module.load_state_dict(safetensors.torch.load_file(path))``, and a file written with
``safetensors.torch.save_file(torch_module.state_dict(), path)`` loads into dualnorm.

Writes are atomic: the bytes go to a hidden temporary file in the same directory
(``.<name>.<random>.tmp``), are flushed and fsynced, and only then renamed onto the
target. A save that is interrupted (an exception, Ctrl-C, a killed process, a power
cut) leaves the previous checkpoint, never a truncated one, under the target name.

Files written by dualnorm carry a SHA-256 digest of every tensor (name, dtype, shape,
bytes) and of the metadata, so flipped bits anywhere in the file are detected on load.
Files written by other tools have no digest; their structure is still checked.
Every problem raises :class:`CheckpointError`, naming the file and what is wrong, and
:func:`load_into` checks everything before it writes anything: a failed load leaves
the module exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dualnorm._paths import check_output_path
from dualnorm.errors import DualnormError, InputError, OutputPathError

FORMAT_VERSION = "1"
META_PREFIX = "dualnorm."
DIGEST_KEY = "dualnorm.sha256"
_CHUNK = 8 << 20  # bytes per write() call
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header

# safetensors dtype codes <-> little-endian NumPy dtypes.
_CODE_TO_NP = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NP_TO_CODE = {dtype: code for code, dtype in _CODE_TO_NP.items()}


class CheckpointError(DualnormError, ValueError):
    """A checkpoint (or saved run) file is missing, damaged, of another format, or does not fit.

    ``path`` is the file, ``problem`` what is wrong with it; ``str(error)`` names both
    and, where there is one, what to do about it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, hint: str = "") -> None:
        self.path = Path(os.fspath(path))
        self.problem = problem
        message = f"{self.path}: {problem}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a FileNotFoundError)."""

    def __init__(self, path: str | os.PathLike[str], problem: str, hint: str = "") -> None:
        CheckpointError.__init__(self, path, problem, hint)
        self.filename = os.fspath(path)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointPathError(CheckpointError, OutputPathError):
    """A checkpoint or saved run cannot be written at the path given (also an OSError)."""

    def __init__(self, error: OutputPathError) -> None:
        self.path = Path(error.path)
        self.what = error.what
        self.reason = error.reason
        self.problem = f"cannot save: {error.reason}"
        OSError.__init__(self, f"{error.path}: {self.problem}")

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LoadResult(NamedTuple):
    """Keys skipped by a non-strict :func:`load_into` (both empty after a strict load)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


# --- writing ---------------------------------------------------------------------------------


def save(
    module_or_state_dict: Any,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a module's ``state_dict()`` (or a state dict) to ``path`` as safetensors, atomically.

    Args:
        module_or_state_dict: a dualnorm module, or a mapping from key to array (NumPy,
            MLX, PyTorch tensors or anything ``np.asarray`` takes).
        path: the target file (conventionally ``*.safetensors``); its directory must exist.
        metadata: extra ``str -> str`` entries for the file's header. Keys starting with
            ``"dualnorm."`` are reserved.

    The header also records the dualnorm version, the format version, the backend the
    state came from and, for a module, its class and ``repr`` (the layer configuration),
    plus a SHA-256 digest that :func:`load` verifies. Returns the path written.
    """
    from dualnorm.nn.module import Module

    path = Path(os.fspath(path))
    meta = _user_metadata(metadata)
    if isinstance(module_or_state_dict, Module):
        module = module_or_state_dict
        state = module.state_dict()
        meta[f"{META_PREFIX}backend"] = module.backend.name
        meta[f"{META_PREFIX}module"] = type(module).__name__
        meta[f"{META_PREFIX}repr"] = repr(module)
        meta[f"{META_PREFIX}dtype"] = str(module.backend.numpy_dtype(module.dtype))
    elif isinstance(module_or_state_dict, Mapping):
        state = module_or_state_dict
        meta[f"{META_PREFIX}backend"] = _backend_of(state.values())
    else:
        raise InputError(
            f"dualnorm.save takes a dualnorm module or a state dict (a mapping of key to array), "
            f"got {type(module_or_state_dict).__name__}",
            type_error=True,
        )
    arrays = {key: _host_array(key, value) for key, value in state.items()}
    from dualnorm import __version__

    meta["format"] = "pt"  # tensors are laid out as PyTorch's (channels-first, same keys)
    meta[f"{META_PREFIX}version"] = __version__
    meta[f"{META_PREFIX}format_version"] = FORMAT_VERSION
    meta[DIGEST_KEY] = _digest(
        ((key, _NP_TO_CODE[a.dtype], a.shape, a) for key, a in arrays.items()),
        meta,
    )
    import safetensors.numpy

    data = safetensors.numpy.save(arrays, metadata=meta)
    return atomic_write(path, data)


def atomic_write(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *, what: str = "checkpoint"
) -> Path:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``.

    The path is checked first (:func:`dualnorm._paths.check_output_path`): a missing
    directory, a directory as the target or a directory where files cannot be created
    raises :class:`CheckpointPathError` naming ``path``. The bytes go to a temporary file
    in the same directory, are flushed and fsynced, and the file is then renamed onto
    ``path`` (``os.replace``, atomic on POSIX and Windows); the directory is fsynced after
    the rename where the OS allows it. On any exception (including KeyboardInterrupt)
    the temporary file is removed.
    """
    try:
        path = check_output_path(path, what)
    except OutputPathError as exc:
        raise CheckpointPathError(exc) from None
    directory = path.parent
    mode = _file_mode(path)
    tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below; kept on disk until renamed)
        dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with tmp:
            _write_all(tmp, data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise
    _fsync_directory(directory)
    return path


def _write_all(file: Any, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), _CHUNK):
        file.write(view[start : start + _CHUNK])


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    """Keep an existing file's permissions; a new file gets 0o666 minus the umask (as open() would)."""
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o7777
    umask = 0o022
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    return 0o666 & ~umask


def _user_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InputError(
            f"metadata must be a dict of str to str, got {type(metadata).__name__}", type_error=True
        )
    meta: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InputError(
                f"metadata must map str to str (safetensors stores text only); entry {key!r}: "
                f"{type(value).__name__}. Convert values with str() or json.dumps()",
                type_error=True,
            )
        if key.startswith(META_PREFIX) or key == "format":
            raise InputError(f"metadata key {key!r} is reserved (dualnorm writes it); choose another name")
        meta[key] = value
    return meta


def _backend_of(values: Iterable[Any]) -> str:
    names = set()
    for value in values:
        module = type(value).__module__
        names.add("mlx" if module.startswith("mlx") else "torch" if module.startswith("torch") else "numpy")
    return ",".join(sorted(names)) if names else "none"


def _host_array(key: Any, value: Any) -> np.ndarray:
    """A contiguous little-endian NumPy array of a dtype safetensors stores, or an InputError."""
    from dualnorm.backends import to_numpy

    if not isinstance(key, str) or not key:
        raise InputError(f"state dict keys must be non-empty strings, got {key!r}", type_error=True)
    try:
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
            tensor = value.detach().cpu()
            if str(tensor.dtype) == "torch.bfloat16":
                tensor = tensor.float()
            array = tensor.numpy()
        else:
            array = np.asarray(to_numpy(value))
    except Exception as exc:
        raise InputError(
            f"state dict entry {key!r} could not be read as an array: {exc}", type_error=True
        ) from None
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _NP_TO_CODE:
        raise InputError(
            f"state dict entry {key!r} has dtype {array.dtype}, which safetensors cannot store; "
            f"use one of {sorted(str(d) for d in _NP_TO_CODE)}",
            type_error=True,
        )
    return np.require(array, dtype=dtype, requirements="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def _digest(tensors: Iterable[tuple[str, str, tuple[int, ...], Any]], metadata: Mapping[str, str]) -> str:
    """SHA-256 over every tensor's name, dtype code, shape and bytes, and over the metadata."""
    h = hashlib.sha256()
    for key, code, shape, payload in sorted(tensors, key=lambda t: t[0]):
        h.update(json.dumps([key, code, list(shape)]).encode())
        h.update(b"\0")
        if isinstance(payload, np.ndarray):
            payload = payload.reshape(-1).view(np.uint8)
        h.update(payload)
        h.update(b"\0")
    rest = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    h.update(json.dumps(rest, sort_keys=True).encode())
    return h.hexdigest()


# --- reading ---------------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a safetensors checkpoint, by key (sorted), as writable NumPy arrays.

    Works for files written by dualnorm and by ``safetensors.torch.save_file`` (bfloat16
    tensors come back as float32, since NumPy has no bfloat16). Raises
    :class:`CheckpointError` for a missing, empty, truncated or corrupt file, or a
    file of another format.
    """
    arrays, _ = _read(path)
    return arrays


def load_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text metadata of a checkpoint (dualnorm version, backend, module repr, ...)."""
    _, meta = _read(path)
    return meta


def load_into(module: Any, path: str | os.PathLike[str], *, strict: bool = True) -> LoadResult:
    """Load the checkpoint at ``path`` into ``module`` (any backend), all or nothing.

    Every key, shape and dtype is checked before anything is written. With
    ``strict=True`` (default) the file's keys must equal the module's
    ``state_dict()`` keys; with ``strict=False`` missing keys keep their current
    values and unexpected keys are ignored (and both are returned). Shapes must
    match exactly. Floating values are cast to the module's dtype; integer buffers
    (``num_batches_tracked``) accept integers, or floats holding whole numbers.
    """
    from dualnorm.nn.module import Module

    if not isinstance(module, Module):
        raise InputError(f"load_into takes a dualnorm module, got {type(module).__name__}", type_error=True)
    arrays, meta = _read(path)
    own = module.state_dict()
    missing = [k for k in own if k not in arrays]
    unexpected = [k for k in arrays if k not in own]
    saved_from = meta.get(f"{META_PREFIX}repr")
    origin = f" The file was saved from {_one_line(saved_from)}." if saved_from else ""
    if strict and (missing or unexpected):
        raise CheckpointError(
            path,
            f"the checkpoint does not fit {type(module).__name__}: missing keys {missing}, "
            f"unexpected keys {unexpected} (the module expects exactly {list(own)})",
            "Load into the module the file was saved from, or pass strict=False to load the "
            f"keys that match.{origin}",
        )
    problems = []
    backend = module.backend
    for key, target in own.items():
        if key not in arrays:
            continue
        value = arrays[key]
        if tuple(value.shape) != tuple(target.shape):
            problems.append(
                f"{key!r}: checkpoint shape {tuple(value.shape)} vs module shape {tuple(target.shape)}"
            )
            continue
        want = backend.dtype_kind(target.dtype)
        target_dtype = backend.numpy_dtype(target.dtype)
        if value.dtype.kind not in "iuf":
            problems.append(f"{key!r}: checkpoint dtype {value.dtype} cannot be cast to {target_dtype}")
        elif (
            want in "iu"
            and value.dtype.kind == "f"
            and not (np.all(np.isfinite(value)) and np.all(value == np.round(value)))
        ):
            problems.append(
                f"{key!r}: checkpoint dtype {value.dtype} holds non-integer values, which cannot be "
                f"cast to the module's {target_dtype}"
            )
    if problems:
        raise CheckpointError(
            path,
            f"the checkpoint does not fit {type(module).__name__}: " + "; ".join(problems),
            f"Nothing was loaded; the module is unchanged.{origin}",
        )
    selected = {k: v for k, v in arrays.items() if k in own}
    try:
        module.load_state_dict(selected, strict=False)
    except InputError as exc:  # a check above should have caught it first
        raise CheckpointError(path, f"could not load into {type(module).__name__}: {exc}") from None
    return LoadResult(missing_keys=missing, unexpected_keys=unexpected)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``, or a CheckpointError saying why not (``what``: "checkpoint", "run file")."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointNotFoundError(path, f"no such {what}") from None
    except IsADirectoryError:
        raise CheckpointError(path, f"is a directory, not a {what}") from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the {what}: {exc.strerror or exc}") from None


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    path = Path(os.fspath(path))
    data = read_file(path, "checkpoint file")
    _header, meta = _parse_header(path, data)
    import safetensors

    try:
        raw = safetensors.deserialize(data)
    except Exception as exc:  # SafetensorError: truncated data, overlapping offsets, bad dtype ...
        raise CheckpointError(
            path,
            f"corrupt safetensors file ({exc})",
            "The file is damaged (truncated or overwritten); restore it from a backup or save it again",
        ) from None
    digest = meta.get(DIGEST_KEY)
    if digest is None and any(key.startswith(META_PREFIX) for key in meta):
        raise CheckpointError(
            path,
            f"corrupt checkpoint: written by dualnorm but its {DIGEST_KEY!r} metadata entry is missing",
            "The header was damaged after the file was written; restore it from a backup or save it again",
        )
    if digest is not None:
        actual = _digest(((name, t["dtype"], tuple(t["shape"]), t["data"]) for name, t in raw), meta)
        if actual != digest:
            raise CheckpointError(
                path,
                "corrupt checkpoint: the SHA-256 digest of its tensors and metadata does not match the "
                f"one written with it (stored {digest[:16]}..., computed {actual[:16]}...)",
                "Some bytes changed after the file was written (disk or copy error); restore it from a "
                "backup or save it again",
            )
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in sorted(raw, key=lambda item: item[0]):
        code, shape, payload = tensor["dtype"], tuple(tensor["shape"]), tensor["data"]
        if code == "BF16":
            bits = np.frombuffer(payload, dtype="<u2").astype(np.uint32) << 16
            arrays[name] = bits.view(np.float32).reshape(shape)
        elif code in _CODE_TO_NP:
            arrays[name] = np.frombuffer(payload, dtype=_CODE_TO_NP[code]).reshape(shape).copy()
        else:
            raise CheckpointError(
                path,
                f"tensor {name!r} has dtype {code}, which NumPy cannot represent",
                "Convert it to float32 before saving (e.g. tensor.float())",
            )
    return arrays, meta


_MAGIC = (
    (b"PK\x03\x04", "a ZIP archive (a NumPy .npz file, or a torch.save .pt/.pth file)"),
    (b"\x93NUMPY", "a NumPy .npy file"),
    (b"\x89HDF", "an HDF5 file (e.g. Keras .h5)"),
    (b"\x1f\x8b", "a gzip file"),
)


def _parse_header(path: Path, data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """Check the safetensors framing and return (header, metadata), or a precise CheckpointError."""
    hint = "Write checkpoints with dualnorm.save() or safetensors.torch.save_file()"
    if not data:
        raise CheckpointError(path, "the file is empty (0 bytes), not a safetensors checkpoint", hint)
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if not (data[8:9] == b"{" and size >= 2):  # not safetensors framing: say what the file is instead
        for magic, what in _MAGIC:
            if data.startswith(magic):
                extra = (
                    " For a torch.save file: torch.load() it, then dualnorm.save(state_dict, path)"
                    if magic == b"PK\x03\x04"
                    else ""
                )
                raise CheckpointError(
                    path, f"this is {what}, not a safetensors checkpoint", hint + "." + extra
                )
        if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and data.endswith(b"."):
            raise CheckpointError(
                path, "this is a Python pickle (an old torch.save file?), not a safetensors checkpoint", hint
            )
        if len(data) <= 8:
            raise CheckpointError(
                path,
                f"truncated: {len(data)} bytes, too short for a safetensors file (8-byte header length, "
                "then the header)",
                hint,
            )
        if _looks_like_text(data):
            raise CheckpointError(path, "this is a text file, not a safetensors checkpoint", hint)
        raise CheckpointError(
            path,
            "not a safetensors file: the header does not start with a JSON object (wrong format, or the "
            "first bytes are damaged)",
            hint,
        )
    if size > _MAX_HEADER:
        raise CheckpointError(
            path,
            f"corrupt header length field: {size} bytes (safetensors allows at most {_MAX_HEADER})",
            "The file is damaged or not a safetensors file",
        )
    if 8 + size > len(data):
        raise CheckpointError(
            path,
            f"truncated or corrupt: the header length field says {size} bytes of header but only "
            f"{len(data) - 8} bytes follow it",
            "The file was cut short (an interrupted copy or download?); restore or save it again",
        )
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, f"corrupt safetensors header: not valid JSON ({exc})", hint) from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "corrupt safetensors header: the JSON is not an object", hint)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(
            path, "corrupt safetensors header: __metadata__ is not a map of text to text", hint
        )
    fmt = meta.get(f"{META_PREFIX}format_version")
    if fmt is not None and fmt != FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"written with checkpoint format {fmt!r}; this dualnorm reads format {FORMAT_VERSION!r}",
            f"It was written by dualnorm {meta.get(f'{META_PREFIX}version', '?')}; use that version",
        )
    return header, meta


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\n\r\t" for ch in text)


__all__ = [
    "DIGEST_KEY",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointPathError",
    "LoadResult",
    "atomic_write",
    "load",
    "load_into",
    "load_metadata",
    "save",
]
