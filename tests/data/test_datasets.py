"""dualnorm.data: the shipped 8x8 digits and MNIST read from local npz / IDX files."""

from __future__ import annotations

import dataclasses
import doctest
import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import dualnorm.data
from dualnorm.data import Dataset, DatasetError, load_dataset, load_digits, load_mnist

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# --- the shipped digits ---------------------------------------------------------------------------

# Class counts of the 1797 images (scikit-learn's copy of the UCI test set).
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# The first row of the source CSV: a "0".
DIGITS_FIRST_IMAGE = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]


def test_digits_shapes_dtypes_and_metadata():
    ds = load_digits()
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape == (1500, 64) and ds.x_test.shape == (297, 64)
    assert ds.y_train.shape == (1500,) and ds.y_test.shape == (297,)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert (ds.name, ds.num_classes, ds.input_dim) == ("digits", 10, 64)


def test_digits_values_are_sixteenths_in_unit_range():
    ds = load_digits()
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))


def test_digits_content_is_the_real_uci_set():
    ds = load_digits()
    y = np.concatenate([ds.y_train, ds.y_test])
    assert len(y) == 1797
    assert np.bincount(y, minlength=10).tolist() == DIGITS_CLASS_COUNTS
    assert set(ds.y_train.tolist()) == set(range(10)) and set(ds.y_test.tolist()) == set(range(10))
    assert ds.y_train[0] == 0
    np.testing.assert_array_equal(ds.x_train[0] * 16, np.array(DIGITS_FIRST_IMAGE, np.float32).ravel())
    # Real strokes, not noise: about half the pixels are blank.
    assert 0.4 < np.mean(ds.x_train == 0) < 0.6


def test_digits_split_is_deterministic_and_in_file_order():
    a, b = load_digits(), load_digits()
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    raw = load_digits(normalize=False)
    np.testing.assert_array_equal(raw.x_train, a.x_train * 16)
    np.testing.assert_array_equal(raw.y_test, a.y_test)
    assert raw.x_train.dtype == np.float32 and raw.x_train.max() == 16.0


def test_digits_loads_are_independent_copies_and_dataset_is_frozen():
    a = load_digits()
    a.x_train[0] = 123.0
    assert load_digits().x_train[0].max() <= 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "other"  # type: ignore[misc]


def test_load_dataset_digits():
    ds = load_dataset("digits")
    assert ds.name == "digits"
    np.testing.assert_array_equal(ds.x_test, load_digits().x_test)


def test_docstring_examples_run():
    result = doctest.testmod(dualnorm.data)
    assert result.attempted > 0 and result.failed == 0


# --- fake MNIST files -----------------------------------------------------------------------------


@pytest.fixture
def fake():
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 5, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 3, dtype=np.uint8),
    }


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    if magic is None:
        magic = 2051 if arr.ndim == 3 else 2049
    return struct.pack(f">{1 + arr.ndim}i", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx_dir(directory: Path, arrays: dict, *, gz: bool, names=IDX_NAMES) -> Path:
    directory.mkdir(exist_ok=True)
    for name, key in zip(names, ("x_train", "y_train", "x_test", "y_test"), strict=True):
        data = idx_bytes(arrays[key])
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return directory


def layout_npz_file(tmp_path, arrays):
    np.savez(tmp_path / "mnist.npz", **arrays)
    return tmp_path / "mnist.npz"


def layout_npz_dir(tmp_path, arrays):
    np.savez_compressed(tmp_path / "mnist.npz", **arrays)
    return tmp_path


def layout_idx_gz(tmp_path, arrays):
    return write_idx_dir(tmp_path / "idx", arrays, gz=True)


def layout_idx_plain(tmp_path, arrays):
    return write_idx_dir(tmp_path / "idx", arrays, gz=False)


def layout_idx_dotted(tmp_path, arrays):
    dotted = [n.replace("-idx", ".idx") for n in IDX_NAMES]
    return write_idx_dir(tmp_path / "idx", arrays, gz=False, names=dotted)


def layout_idx_mixed(tmp_path, arrays):
    d = write_idx_dir(tmp_path / "idx", arrays, gz=True)
    for name in IDX_NAMES[2:]:
        (d / name).write_bytes(gzip.decompress((d / f"{name}.gz").read_bytes()))
        (d / f"{name}.gz").unlink()
    return d


@pytest.mark.parametrize(
    "layout",
    [layout_npz_file, layout_npz_dir, layout_idx_gz, layout_idx_plain, layout_idx_dotted, layout_idx_mixed],
)
def test_mnist_round_trip(tmp_path, fake, layout):
    path = layout(tmp_path, fake)
    for ds in (load_mnist(path), load_mnist(str(path)), load_dataset(str(path))):
        assert (ds.name, ds.num_classes, ds.input_dim) == ("mnist", 10, 784)
        for key in ("x_train", "x_test"):
            x = getattr(ds, key)
            assert x.dtype == np.float32 and x.shape == (len(fake[key]), 784)
            assert x.min() >= 0.0 and x.max() <= 1.0
            np.testing.assert_array_equal(x, fake[key].reshape(-1, 784).astype(np.float32) / np.float32(255))
            np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8), fake[key].reshape(-1, 784))
        for key in ("y_train", "y_test"):
            y = getattr(ds, key)
            assert y.dtype == np.int64
            np.testing.assert_array_equal(y, fake[key])


def test_mnist_npz_accepts_flat_images(tmp_path, fake):
    flat = {k: (v.reshape(len(v), -1) if k.startswith("x") else v) for k, v in fake.items()}
    ds = load_mnist(layout_npz_file(tmp_path, flat))
    assert ds.x_train.shape == (5, 784)
    np.testing.assert_array_equal(ds.x_train, fake["x_train"].reshape(5, -1) / np.float32(255))


# --- errors ---------------------------------------------------------------------------------------


def raises(match_all: list[str], fn, *args) -> DatasetError:
    """Call fn, expect a DatasetError whose message holds every string in match_all."""
    with pytest.raises(DatasetError) as info:
        fn(*args)
    message = str(info.value)
    for needle in match_all:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert isinstance(info.value, ValueError)
    return info.value


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere" / "mnist.npz"
    raises([str(missing), "does not exist", "mnist.npz", "train-images-idx3-ubyte"], load_mnist, missing)
    raises(["does not exist"], load_dataset, str(missing))


def test_directory_without_any_files(tmp_path):
    err = raises([str(tmp_path), "none of the IDX files", "mnist.npz", *IDX_NAMES], load_mnist, tmp_path)
    assert "found" not in str(err)


def test_directory_with_some_idx_files(tmp_path, fake):
    d = write_idx_dir(tmp_path / "idx", fake, gz=True)
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    (d / "train-labels-idx1-ubyte.gz").unlink()
    err = raises(["missing IDX file(s)", ".gz"], load_mnist, d)
    missing = re.search(r"missing (\[.*?\])", str(err)).group(1)
    assert missing == "['train-labels-idx1-ubyte', 't10k-images-idx3-ubyte']"
    found = re.search(r"found (\[.*?\])", str(err)).group(1)
    assert found == "['t10k-labels-idx1-ubyte.gz', 'train-images-idx3-ubyte.gz']"


def test_wrong_magic_number(tmp_path, fake):
    d = write_idx_dir(tmp_path / "idx", fake, gz=False)
    (d / "train-images-idx3-ubyte").write_bytes(idx_bytes(fake["y_train"]))  # a labels file
    raises(["train-images-idx3-ubyte", "magic", "expected 2051", "read 2049"], load_mnist, d)
    (d / "train-images-idx3-ubyte").write_bytes(idx_bytes(fake["x_train"]))
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(fake["y_test"], magic=7))
    raises(["t10k-labels-idx1-ubyte", "expected 2049", "read 7"], load_mnist, d)


def test_gzipped_content_without_gz_suffix_gets_a_hint(tmp_path, fake):
    d = write_idx_dir(tmp_path / "idx", fake, gz=False)
    (d / "train-labels-idx1-ubyte").write_bytes(gzip.compress(idx_bytes(fake["y_train"])))
    raises(["train-labels-idx1-ubyte", "expected 2049", "gzip-compressed", ".gz suffix"], load_mnist, d)


def test_truncated_idx_data(tmp_path, fake):
    d = write_idx_dir(tmp_path / "idx", fake, gz=True)
    data = idx_bytes(fake["x_test"])[: 16 + 1000]
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    raises(["t10k-images-idx3-ubyte.gz", "truncated", f"{3 * 28 * 28} bytes", "found 1000"], load_mnist, d)


def test_truncated_idx_header(tmp_path, fake):
    d = write_idx_dir(tmp_path / "idx", fake, gz=False)
    (d / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    raises(["train-labels-idx1-ubyte", "truncated", "8-byte header", "found 3 bytes"], load_mnist, d)


def test_idx_image_label_count_mismatch(tmp_path, fake):
    fake["y_train"] = fake["y_train"][:4]
    d = write_idx_dir(tmp_path / "idx", fake, gz=True)
    raises(
        [
            "count mismatch",
            "train-images-idx3-ubyte.gz",
            "5 images",
            "train-labels-idx1-ubyte.gz",
            "4 labels",
        ],
        load_mnist,
        d,
    )


def test_npz_image_label_count_mismatch(tmp_path, fake):
    fake["y_test"] = fake["y_test"][:2]
    path = layout_npz_file(tmp_path, fake)
    raises([str(path), "count mismatch", "x_test holds 3 images", "y_test holds 2 labels"], load_mnist, path)


def test_npz_missing_keys(tmp_path, fake):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=fake["x_train"], y_train=fake["y_train"], images=fake["x_test"])
    raises(
        [
            str(path),
            "['x_test', 'y_test']",
            "holds ['images', 'x_train', 'y_train']",
            "['x_train', 'y_train', 'x_test', 'y_test']",
        ],
        load_mnist,
        path,
    )


def test_not_an_npz(tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_text("these are not the pixels you are looking for")
    raises([str(path), "not an .npz"], load_mnist, path)
    raises([str(tmp_path / "mnist.npz"), "not an .npz"], load_mnist, tmp_path)


def test_corrupt_npz_member(tmp_path, fake):
    path = layout_npz_file(tmp_path, fake)
    raw = bytearray(path.read_bytes())
    raw[200:220] = b"\xff" * 20  # inside x_train's stored (uncompressed) data: a CRC failure on read
    path.write_bytes(bytes(raw))
    err = raises([str(path), "not a readable .npz"], load_mnist, path)
    assert err.__cause__ is not None


def test_not_a_gzip(tmp_path, fake):
    d = write_idx_dir(tmp_path / "idx", fake, gz=True)
    (d / "train-images-idx3-ubyte.gz").write_bytes(idx_bytes(fake["x_train"]))
    err = raises(["train-images-idx3-ubyte.gz", "not a valid gzip"], load_mnist, d)
    assert err.__cause__ is not None


def test_truncated_gzip(tmp_path, fake):
    d = write_idx_dir(tmp_path / "idx", fake, gz=True)
    blob = (d / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    err = raises(["t10k-labels-idx1-ubyte.gz", "not a valid gzip", "truncated"], load_mnist, d)
    assert err.__cause__ is not None


def test_npz_with_bad_labels_or_pixels(tmp_path, fake):
    bad_labels = dict(fake, y_train=np.array([0, 1, 2, 3, 10]))
    raises(["y_train", "integers 0..9"], load_mnist, layout_npz_file(tmp_path, bad_labels))
    bad_pixels = dict(fake, x_test=fake["x_test"].astype(np.float64) / 255)
    raises(["x_test", "integer pixels 0..255", "float64"], load_mnist, layout_npz_file(tmp_path, bad_pixels))
