"""Small, offline datasets for the demo networks: NumPy arrays only, never a network call.

Three sources:

* :func:`load_digits` -- the UCI ML hand-written digits (8x8 pixels, 1797 images, 10 classes),
  shipped inside the package as ``digits.npz`` (see ``DIGITS_LICENSE.md``); flat, or as
  1x8x8 images with ``images=True``.
* :func:`load_mnist` -- real MNIST, read from files the user already has: the Keras cache file
  ``mnist.npz`` or the four original IDX files (gzipped or plain).
* :func:`load_cifar10` -- CIFAR-10 from the user's extracted python or binary batches (see
  :mod:`dualnorm.data.cifar`), as 3x32x32 images.

Every loader returns a :class:`Dataset` of float32 features in ``[0, 1]`` (flattened, or images
``(N, C, H, W)`` when ``image_shape`` is set) and int64 labels. :class:`Normalize` standardizes
images per channel as ``torchvision.transforms.Normalize`` does.
Anything wrong with the files raises :class:`DatasetError` (a ``ValueError``) naming the file,
what is wrong with it and what to do about it.

>>> from dualnorm.data import load_dataset
>>> ds = load_dataset("digits")
>>> ds.x_train.shape, ds.x_train.dtype, ds.y_train.dtype
((1500, 64), dtype('float32'), dtype('int64'))
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Dataset",
    "DatasetError",
    "Normalize",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "normalize",
]

DIGITS_TRAIN_SIZE = 1500
"""The shipped digits are split in file order: the first 1500 images train, the last 297 test."""

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

# The four files of the original distribution, in the order (x_train, y_train, x_test, y_test).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MNIST_NUM_CLASSES = 10

_MNIST_HINT = (
    "load_mnist accepts the Keras cache file mnist.npz (Keras keeps it at ~/.keras/datasets/mnist.npz), "
    "a directory containing mnist.npz, or a directory holding the four IDX files "
    f"{', '.join(IDX_FILES)} (each plain or gzipped with a .gz suffix)"
)


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message says which file and why."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of features and integer class labels.

    ``x_*`` are float32 of shape ``(N, input_dim)``, or ``(N, *image_shape)`` for image data
    (``image_shape`` is then ``(C, H, W)`` and ``input_dim`` its product); ``y_*`` are int64 of
    shape ``(N,)`` with values in ``range(num_classes)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    input_dim: int
    image_shape: tuple[int, int, int] | None = None


def load_dataset(name_or_path: str | os.PathLike[str]) -> Dataset:
    """Load ``"digits"`` (the shipped set) or, for anything else, MNIST from that path.

    >>> load_dataset("digits").num_classes
    10
    """
    if isinstance(name_or_path, str) and name_or_path == "digits":
        return load_digits()
    return load_mnist(name_or_path)


def load_digits(*, normalize: bool = True, images: bool = False) -> Dataset:
    """The UCI ML hand-written digits shipped with dualnorm: 1797 images of 8x8 pixels, 10 classes.

    The split is fixed and deterministic: the first 1500 images (in the order of the source file)
    are the training set, the remaining 297 the test set; every class has 146-153 training and
    27-33 test images. Pixels are integers 0..16 in the source; with ``normalize`` (the default)
    they are divided by 16 into ``[0, 1]``, otherwise returned as float32 0..16. With ``images``
    the features come as 1x8x8 images, ``(N, 1, 8, 8)``, for convolutional networks (same pixels,
    same order).

    >>> ds = load_digits()
    >>> ds.x_train.shape, ds.x_test.shape, ds.input_dim, ds.num_classes
    ((1500, 64), (297, 64), 64, 10)
    >>> float(ds.x_train.max()), sorted(set(ds.y_test.tolist())) == list(range(10))
    (1.0, True)
    >>> load_digits(images=True).x_test.shape
    (297, 1, 8, 8)
    """
    try:
        with resources.files(__name__).joinpath("digits.npz").open("rb") as fh, np.load(fh) as npz:
            pixels, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"the shipped digits file dualnorm/data/digits.npz could not be read ({exc}); "
            "the installation looks broken: reinstall dualnorm"
        ) from exc
    x = pixels.reshape(len(pixels), -1).astype(np.float32)
    if normalize:
        x /= 16.0
    y = labels.astype(np.int64)
    n = DIGITS_TRAIN_SIZE
    input_dim = x.shape[1]
    image_shape = None
    if images:
        image_shape = (1, *pixels.shape[1:])  # the file holds (N, 8, 8)
        x = x.reshape(len(x), *image_shape)
    return Dataset(
        x_train=x[:n].copy(),
        y_train=y[:n].copy(),
        x_test=x[n:].copy(),
        y_test=y[n:].copy(),
        name="digits",
        num_classes=10,
        input_dim=input_dim,
        image_shape=image_shape,
    )


def load_mnist(path: str | os.PathLike[str]) -> Dataset:
    """Load MNIST (or a look-alike in the same format, e.g. Fashion-MNIST) from local files.

    ``path`` is one of:

    * the Keras cache file ``mnist.npz`` (keys ``x_train, y_train, x_test, y_test``);
    * a directory containing ``mnist.npz``;
    * a directory holding the four IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``).

    Images come back flattened to ``(N, 784)`` float32 in ``[0, 1]`` (pixel / 255), labels int64.
    Nothing is downloaded. Problems raise :class:`DatasetError`.

    >>> import tempfile, numpy as np
    >>> x, y = np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 2], np.uint8)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     np.savez(d + "/mnist.npz", x_train=x, y_train=y, x_test=x[:1], y_test=y[:1])
    ...     ds = load_mnist(d)
    >>> ds.x_train.shape, ds.y_test.tolist(), ds.name
    ((3, 784), [0], 'mnist')
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"MNIST path {str(p)!r} does not exist. {_MNIST_HINT}.")
    if p.is_dir():
        if (p / "mnist.npz").is_file():
            arrays, source = _read_npz(p / "mnist.npz"), p / "mnist.npz"
        else:
            arrays, source = _read_idx_dir(p), p
    else:
        arrays, source = _read_npz(p), p
    return _mnist_dataset(*arrays, source=source)


# --- MNIST internals -------------------------------------------------------------------------------


def _read_npz(path: Path) -> tuple[np.ndarray, ...]:
    if not zipfile.is_zipfile(path):
        raise DatasetError(
            f"{str(path)!r} is not an .npz archive (not a zip file). {_MNIST_HINT}. "
            "If this is an IDX file, pass the directory that holds all four IDX files."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = sorted(npz.files)
            arrays = {k: npz[k] for k in NPZ_KEYS if k in found}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(
            f"{str(path)!r} is not a readable .npz archive ({exc}). Re-download or re-save the file."
        ) from exc
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DatasetError(
            f"{str(path)!r} lacks the key(s) {missing}: it holds {found}, "
            f"but a Keras-style mnist.npz must hold {list(NPZ_KEYS)}. "
            "Re-save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    return tuple(arrays[k] for k in NPZ_KEYS)


def _find_idx_file(directory: Path, base: str) -> Path | None:
    # Plain first, then gzipped; some mirrors (e.g. Kaggle) write "train-images.idx3-ubyte".
    dotted = base.replace("-idx", ".idx")
    for name in (base, base + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_idx_dir(directory: Path) -> tuple[np.ndarray, ...]:
    found = {base: _find_idx_file(directory, base) for base in IDX_FILES}
    missing = [base for base, f in found.items() if f is None]
    if missing:
        present = sorted(f.name for f in found.values() if f is not None)
        what = "holds no mnist.npz and none of the IDX files" if not present else "is missing IDX file(s)"
        raise DatasetError(
            f"MNIST directory {str(directory)!r} {what}: missing {missing}"
            + (f" (found {present})" if present else "")
            + f". Accepted names for each are NAME or NAME.gz for NAME in {list(IDX_FILES)} "
            "(the dotted spelling train-images.idx3-ubyte etc. works too); "
            "or put the Keras cache file mnist.npz in the directory."
        )
    files = [found[base] for base in IDX_FILES]
    arrays = []
    for images_file, labels_file in (files[:2], files[2:]):
        images = _read_idx(images_file, IDX_IMAGES_MAGIC)
        labels = _read_idx(labels_file, IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise DatasetError(
                f"image/label count mismatch: {images_file.name!r} holds {len(images)} images but "
                f"{labels_file.name!r} holds {len(labels)} labels (in {str(directory)!r}). "
                "The files come from different sets or one is damaged: re-download them."
            )
        arrays += [images, labels]
    return tuple(arrays)


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse one IDX file: big-endian int32 magic, one int32 size per dimension, then uint8 data."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(
                f"{str(path)!r} is not a valid gzip file ({exc}): it is truncated or not gzipped. "
                "Re-download it, or drop the .gz suffix if the file is not compressed."
            ) from exc
    ndim = 3 if expected_magic == IDX_IMAGES_MAGIC else 1
    kind = "images" if ndim == 3 else "labels"
    header_len = 4 * (1 + ndim)
    # The magic number comes first so that a wrong file is named as such, not as a short one.
    if len(raw) >= 4:
        magic = int(np.frombuffer(raw, dtype=">i4", count=1)[0])
        if magic != expected_magic:
            gzipped = raw[:2] == b"\x1f\x8b"
            hint = " (the file looks gzip-compressed: give it a .gz suffix)" if gzipped else ""
            raise DatasetError(
                f"{str(path)!r} has the wrong magic number: expected {expected_magic} for an IDX {kind} "
                f"file, read {magic}{hint}. Check that the file is the MNIST {kind} file it is named after."
            )
    if len(raw) < header_len:
        raise DatasetError(
            f"{str(path)!r} is truncated: an IDX {kind} file needs a {header_len}-byte header, "
            f"found {len(raw)} bytes in total. Re-download it."
        )
    dims = [int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)]
    expected = int(np.prod(dims))
    found = len(raw) - header_len
    if found != expected:
        state = "truncated" if found < expected else "longer than its header says"
        raise DatasetError(
            f"{str(path)!r} is {state}: its header {tuple(dims)} means {expected} bytes of data, "
            f"found {found}. Re-download it."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _mnist_dataset(x_train, y_train, x_test, y_test, *, source: Path) -> Dataset:
    x_train, x_test = (_pixels(x, name, source) for x, name in ((x_train, "x_train"), (x_test, "x_test")))
    y_train, y_test = (_labels(y, name, source) for y, name in ((y_train, "y_train"), (y_test, "y_test")))
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise DatasetError(
                f"image/label count mismatch in {str(source)!r}: x_{split} holds {len(x)} images "
                f"but y_{split} holds {len(y)} labels. Re-download or re-save the file."
            )
    if x_train.shape[1] != x_test.shape[1]:
        raise DatasetError(
            f"train and test images in {str(source)!r} differ in size: {x_train.shape[1]} vs "
            f"{x_test.shape[1]} pixels per image. The files come from different datasets."
        )
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        name="mnist",
        num_classes=MNIST_NUM_CLASSES,
        input_dim=x_train.shape[1],
    )


def _pixels(x: np.ndarray, name: str, source: Path) -> np.ndarray:
    ok_range = x.size == 0 or (x.min() >= 0 and x.max() <= 255)
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.integer) or not ok_range:
        raise DatasetError(
            f"{name} in {str(source)!r} is not an image array: expected integer pixels 0..255 of shape "
            f"(N, 28, 28) or (N, 784), found dtype {x.dtype} and shape {x.shape}."
        )
    return x.reshape(len(x), -1).astype(np.float32) / np.float32(255.0)


def _labels(y: np.ndarray, name: str, source: Path) -> np.ndarray:
    ok_range = y.size == 0 or (y.min() >= 0 and y.max() < MNIST_NUM_CLASSES)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or not ok_range:
        raise DatasetError(
            f"{name} in {str(source)!r} is not a label array: expected integers 0..9 of shape (N,), "
            f"found dtype {y.dtype} and shape {y.shape}."
        )
    return y.astype(np.int64)


# Below the definitions they use (Dataset, DatasetError).
from dualnorm.data.cifar import load_cifar10  # noqa: E402
from dualnorm.data.transforms import CIFAR10_MEAN, CIFAR10_STD, Normalize, normalize  # noqa: E402
