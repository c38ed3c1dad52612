"""CIFAR-10 from the files the user already has: the python batches or the binary version.

Two layouts of the official distribution are read (nothing is downloaded):

* **python** (``cifar-10-python.tar.gz`` extracted: ``cifar-10-batches-py/``): six pickled dicts
  ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each with ``b'data'`` (a 10000x3072
  uint8 array: 1024 red, then 1024 green, then 1024 blue pixels per row, row-major 32x32) and
  ``b'labels'`` (10000 ints in 0..9);
* **binary** (``cifar-10-binary.tar.gz`` extracted: ``cifar-10-batches-bin/``): ``data_batch_1.bin``
  .. ``data_batch_5.bin`` and ``test_batch.bin``, each a run of 3073-byte records: one label byte,
  then the 3072 pixel bytes in the same R, G, B plane order.

**Unpickling can run code.** A pickle names functions that Python calls while loading it, so a
file that merely claims to be a CIFAR batch could run anything. The python batches are read
with a restricted unpickler that resolves only what the real files name -- numpy's array
reconstruction (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``) and ``numpy.dtype``,
limited to plain integer dtypes -- and refuses every other global with a
:class:`~dualnorm.data.DatasetError`; the result must then be a dict with the expected keys
and types. That closes the known ways in through ``pickle``, but it is not a sandbox: load
pickles only from a source you trust, or use the binary version, which holds no code at all.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dualnorm.data import Dataset, DatasetError

__all__ = ["CIFAR10_CLASSES", "load_cifar10"]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32
RECORD_BYTES = 1 + PIXELS
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
PY_DIR, BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"

_HINT = (
    "load_cifar10 takes the extracted CIFAR-10 python version (the directory cifar-10-batches-py holding "
    f"{', '.join(TRAIN_BATCHES)} and {TEST_BATCH}), the binary version (cifar-10-batches-bin holding the same "
    "names with .bin), or a directory containing either; get them from https://www.cs.toronto.edu/~kriz/cifar.html"
)


def load_cifar10(path: str | os.PathLike[str], *, normalize: bool = True) -> Dataset:
    """Load CIFAR-10 (50 000 training and 10 000 test images of 3x32x32, 10 classes) from local files.

    ``path`` is ``cifar-10-batches-py``, ``cifar-10-batches-bin``, or a directory holding one of
    them (the python version is preferred when both are there). Images come back as float32
    ``(N, 3, 32, 32)`` in ``[0, 1]`` (pixel / 255, as ``transforms.ToTensor``; with
    ``normalize=False`` float32 0..255), labels as int64. Follow with
    :class:`~dualnorm.data.Normalize` for the usual per-channel standardization. A missing,
    truncated or foreign file raises :class:`~dualnorm.data.DatasetError` naming the file.
    See the module docstring for what unpickling the python version may and may not do.

    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> record = np.zeros(3073, np.uint8); record[0] = 7       # label 7, black image
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    ...         _ = (Path(d) / (name + ".bin")).write_bytes(np.tile(record, 2).tobytes())
    ...     ds = load_cifar10(d)
    >>> ds.x_train.shape, ds.y_test.tolist(), ds.name, ds.image_shape
    ((10, 3, 32, 32), [7, 7], 'cifar10', (3, 32, 32))
    """
    root = Path(os.fspath(path)).expanduser()
    if not root.exists():
        raise DatasetError(f"CIFAR-10 path {str(root)!r} does not exist. {_HINT}.")
    if root.is_file():
        suffix = "".join(root.suffixes[-2:])
        what = (
            "an archive: extract it first (tar xzf FILE) and pass the directory"
            if suffix
            in (
                ".tar.gz",
                ".tgz",
            )
            or root.suffix == ".tgz"
            else "a file"
        )
        raise DatasetError(f"CIFAR-10 path {str(root)!r} is {what}. {_HINT}.")
    directory, kind = _find_layout(root)
    read = _read_python_batch if kind == "python" else _read_binary_batch
    suffix = "" if kind == "python" else ".bin"
    parts = [read(directory / (name + suffix)) for name in (*TRAIN_BATCHES, TEST_BATCH)]
    x_train = np.concatenate([x for x, _ in parts[:-1]])
    y_train = np.concatenate([y for _, y in parts[:-1]])
    x_test, y_test = parts[-1]
    return Dataset(
        x_train=_images(x_train, normalize),
        y_train=y_train,
        x_test=_images(x_test, normalize),
        y_test=y_test,
        name="cifar10",
        num_classes=len(CIFAR10_CLASSES),
        input_dim=PIXELS,
        image_shape=IMAGE_SHAPE,
    )


def _images(rows: np.ndarray, normalize: bool) -> np.ndarray:
    x = rows.reshape(len(rows), *IMAGE_SHAPE).astype(np.float32)
    if normalize:
        x /= np.float32(255.0)
    return x


def _find_layout(root: Path) -> tuple[Path, str]:
    """(directory, "python" | "binary") for the first layout found at or under ``root``."""
    for directory in (root, root / PY_DIR, root / BIN_DIR):
        if not directory.is_dir():
            continue
        names = {p.name for p in directory.iterdir()}
        if any(n in names for n in (*TRAIN_BATCHES, TEST_BATCH)):
            kind, suffix = "python", ""
        elif any(n + ".bin" in names for n in (*TRAIN_BATCHES, TEST_BATCH)):
            kind, suffix = "binary", ".bin"
        else:
            continue
        missing = [n + suffix for n in (*TRAIN_BATCHES, TEST_BATCH) if n + suffix not in names]
        if missing:
            raise DatasetError(
                f"CIFAR-10 directory {str(directory)!r} ({kind} version) is missing {', '.join(missing)}. "
                "Extract the whole archive again."
            )
        return directory, kind
    raise DatasetError(f"{str(root)!r} holds no CIFAR-10 batches. {_HINT}.")


# --- the binary version ---------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{str(path)!r} could not be read ({exc.strerror or exc}).") from None


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % RECORD_BYTES:
        hint = (
            " (3074-byte records: this looks like CIFAR-100's binary version, which has two label bytes)"
            if len(raw) and len(raw) % (RECORD_BYTES + 1) == 0
            else ""
        )
        state = "empty" if not raw else "truncated or not a CIFAR-10 binary batch"
        raise DatasetError(
            f"{str(path)!r} is {state}: a CIFAR-10 binary batch is a run of {RECORD_BYTES}-byte records "
            f"(1 label byte, {PIXELS} pixel bytes), but the file has {len(raw)} bytes{hint}. Re-download it."
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= len(CIFAR10_CLASSES))
    if bad.size:
        raise DatasetError(
            f"{str(path)!r} is not a CIFAR-10 binary batch: record {int(bad[0])} has label byte "
            f"{int(labels[bad[0]])}, expected 0..9. Check that the file is CIFAR-10's (not CIFAR-100's)."
        )
    return records[:, 1:], labels.astype(np.int64)


# --- the python version ---------------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None)  # numpy 2 moved numpy.core to numpy._core
    multiarray = core.multiarray if core is not None else np.core.multiarray
    return multiarray._reconstruct


_RECONSTRUCT = _numpy_reconstruct()


def _safe_reconstruct(subtype: Any, shape: Any, typecode: Any) -> Any:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} (only numpy.ndarray is allowed)")
    return _RECONSTRUCT(np.ndarray, shape, typecode)


def _safe_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    name = spec.decode("ascii", "replace") if isinstance(spec, bytes) else spec
    if not isinstance(name, str) or name not in _INT_DTYPES:
        raise pickle.UnpicklingError(f"array dtype {spec!r} (only plain integer dtypes are allowed)")
    return np.dtype(name)


_INT_DTYPES = frozenset(f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8))
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR-10 python batch names; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 batch names only numpy's array reconstruction"
            ) from None


def _key(d: dict[Any, Any], name: str) -> Any:
    # encoding="bytes" keeps Python 2's str keys as bytes (b'data'); a file re-saved by Python 3 has str keys
    for key in (name.encode(), name):
        if key in d:
            return d[key]
    return None


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(
            f"{str(path)!r} is not a CIFAR-10 python batch: {exc}. Nothing from it was run; "
            "use the files from the official archive."
        ) from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as exc:
        state = "truncated" if isinstance(exc, EOFError) else "not a readable pickle"
        raise DatasetError(
            f"{str(path)!r} is {state} ({type(exc).__name__}: {exc}); a CIFAR-10 python batch is a pickled "
            "dict. Re-download and extract it again."
        ) from None
    if not isinstance(batch, dict):
        raise DatasetError(
            f"{str(path)!r} is not a CIFAR-10 python batch: it holds a {type(batch).__name__}, "
            "expected a dict with b'data' and b'labels'."
        )
    data, labels = _key(batch, "data"), _key(batch, "labels")
    if data is None or labels is None:
        found = sorted(repr(k) for k in batch)[:8]
        raise DatasetError(
            f"{str(path)!r} is not a CIFAR-10 python batch: it lacks b'data' or b'labels' "
            f"(keys found: {', '.join(found) or 'none'}). CIFAR-100's batches use b'fine_labels'."
        )
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS
    ):
        what = (
            f"a {data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DatasetError(
            f"{str(path)!r}: b'data' should be a uint8 array of shape (N, {PIXELS}), found {what}."
        )
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DatasetError(
            f"{str(path)!r}: b'labels' should be a list of ints, found {type(labels).__name__}."
        )
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(data):
        raise DatasetError(
            f"{str(path)!r} holds {len(data)} images but {len(y)} labels. Re-download and extract it again."
        )
    if y.size and (y.min() < 0 or y.max() >= len(CIFAR10_CLASSES)):
        raise DatasetError(f"{str(path)!r}: labels should be 0..9, found {int(y.min())}..{int(y.max())}.")
    return data, y
