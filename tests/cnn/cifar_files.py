"""Small fake CIFAR-10 files in both official layouts, written the way the real ones are."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Py2StylePickler(pickle._Pickler):
    """Protocol 2 with every str and bytes written as a Python 2 string (SHORT_BINSTRING/BINSTRING).

    The official batches were written by Python 2's cPickle: their keys, dtype codes and pixel
    data are all 8-bit strings, which ``encoding="bytes"`` reads back as bytes.
    """

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def py2_pickle(obj) -> bytes:
    import io

    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    # numpy 2 names its reconstruct function numpy._core...; the real files say numpy.core...
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def fake_batches(seed: int = 0, per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in BATCHES:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        out[name] = (data, labels)
    return out


def python_batch_bytes(name: str, data: np.ndarray, labels: list[int]) -> bytes:
    return py2_pickle(
        {
            "batch_label": f"{name} (fake)",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }
    )


def binary_batch_bytes(data: np.ndarray, labels: list[int]) -> bytes:
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], data], axis=1)
    return records.tobytes()


def write_python(directory: Path, batches) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        (directory / name).write_bytes(python_batch_bytes(name, data, labels))
    (directory / "batches.meta").write_bytes(py2_pickle({"label_names": ["airplane"] * 10}))
    return directory


def write_binary(directory: Path, batches) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        (directory / (name + ".bin")).write_bytes(binary_batch_bytes(data, labels))
    return directory
