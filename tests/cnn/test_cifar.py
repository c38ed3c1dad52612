"""CIFAR-10 loading from fake files in both official layouts; every broken file gets a one-line error."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from dualnorm.data import DatasetError, load_cifar10
from tests.cnn.cifar_files import (
    BATCHES,
    fake_batches,
    py2_pickle,
    python_batch_bytes,
    write_binary,
    write_python,
)


@pytest.fixture
def batches():
    return fake_batches(seed=3)


def _expected(batches, names):
    data = np.concatenate([batches[n][0] for n in names])
    labels = np.concatenate([np.asarray(batches[n][1]) for n in names])
    return data, labels


def test_python_layout_planes_scale_and_labels(tmp_path, batches):
    ds = load_cifar10(write_python(tmp_path / "cifar-10-batches-py", batches))
    data, labels = _expected(batches, BATCHES[:5])
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_train.dtype == np.float32
    assert ds.x_test.shape == (3, 3, 32, 32)
    assert (ds.name, ds.num_classes, ds.input_dim, ds.image_shape) == ("cifar10", 10, 3072, (3, 32, 32))
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == labels.tolist()
    # Each row is 1024 red, 1024 green, 1024 blue bytes, each plane row-major 32x32.
    for c in range(3):
        plane = data[:, c * 1024 : (c + 1) * 1024].reshape(-1, 32, 32)
        np.testing.assert_array_equal(ds.x_train[:, c], plane.astype(np.float32) / np.float32(255))
    test_data, test_labels = _expected(batches, ["test_batch"])
    np.testing.assert_array_equal(ds.x_test.reshape(3, -1) * 255, test_data.astype(np.float32))
    assert ds.y_test.tolist() == test_labels.tolist()


def test_binary_layout_reads_the_same_data(tmp_path, batches):
    py = load_cifar10(write_python(tmp_path / "py" / "cifar-10-batches-py", batches))
    binary = load_cifar10(write_binary(tmp_path / "bin" / "cifar-10-batches-bin", batches))
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(py, field), getattr(binary, field))


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_parent_directory_and_raw_pixels(tmp_path, batches, layout):
    if layout == "python":
        write_python(tmp_path / "cifar-10-batches-py", batches)
    else:
        write_binary(tmp_path / "cifar-10-batches-bin", batches)
    ds = load_cifar10(tmp_path, normalize=False)  # the directory the archive was extracted into
    data, _ = _expected(batches, BATCHES[:5])
    np.testing.assert_array_equal(ds.x_train.reshape(15, -1), data.astype(np.float32))


def test_python3_resaved_batches_load_too(tmp_path, batches):
    """A batch re-pickled by Python 3 (str keys, protocol 4) is the same data."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name, (data, labels) in batches.items():
        (d / name).write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=4))
    ds = load_cifar10(d)
    assert ds.y_test.tolist() == batches["test_batch"][1]


def test_fake_files_are_what_the_official_recipe_reads(tmp_path, batches):
    """The fixture's bytes load with the loader CIFAR's page gives (pickle.load, encoding='bytes')."""
    data, labels = batches["data_batch_1"]
    batch = pickle.loads(python_batch_bytes("data_batch_1", data, labels), encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    np.testing.assert_array_equal(batch[b"data"], data)


def _one_line(exc_info, *names):
    message = str(exc_info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return message


def test_missing_paths_and_layouts(tmp_path, batches):
    with pytest.raises(DatasetError) as err:
        load_cifar10(tmp_path / "nope")
    _one_line(err, "nope", "does not exist", "cifar-10-batches-py")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetError) as err:
        load_cifar10(tmp_path / "cifar-10-python.tar.gz")
    _one_line(err, "cifar-10-python.tar.gz", "extract it first")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as err:
        load_cifar10(empty)
    _one_line(err, "empty", "holds no CIFAR-10 batches")


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_a_missing_batch_is_named(tmp_path, batches, layout):
    write = write_python if layout == "python" else write_binary
    d = write(tmp_path / "d", batches)
    suffix = "" if layout == "python" else ".bin"
    (d / ("data_batch_3" + suffix)).unlink()
    with pytest.raises(DatasetError) as err:
        load_cifar10(d)
    _one_line(err, "data_batch_3" + suffix, "missing")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (lambda raw: raw[:-100], "truncated or not a CIFAR-10 binary batch"),
        (lambda raw: b"", "is empty"),
        (lambda raw: bytes(3074 * 2), "CIFAR-100"),
        (lambda raw: bytes([37]) + raw[1:], "label byte 37"),
    ],
)
def test_broken_binary_batches(tmp_path, batches, content, match):
    d = write_binary(tmp_path / "d", batches)
    target = d / "data_batch_2.bin"
    target.write_bytes(content(target.read_bytes()))
    with pytest.raises(DatasetError) as err:
        load_cifar10(d)
    _one_line(err, "data_batch_2.bin")
    assert re.search(match, str(err.value))


class _RunsCode:
    """A pickle that would call ``open(marker, "w")`` when unpickled without restrictions."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _object_array_pickle():
    raw = pickle.dumps({"data": np.array([None, 1], dtype=object), "labels": [0, 1]}, protocol=2)
    return raw


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda raw, marker: raw[: len(raw) // 2], "truncated"),
        (lambda raw, marker: b"not a pickle at all", "not a"),
        (lambda raw, marker: pickle.dumps([1, 2, 3]), "holds a list, expected a dict"),
        (
            lambda raw, marker: py2_pickle({"data": np.zeros((2, 3072), np.uint8)}),
            "lacks b'data' or b'labels'",
        ),
        (lambda raw, marker: pickle.dumps({"data": _RunsCode(marker), "labels": []}), "refused to load"),
        (lambda raw, marker: _object_array_pickle(), "refused|only plain integer dtypes"),
        (
            lambda raw, marker: py2_pickle({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}),
            "only plain integer dtypes",
        ),
        (
            lambda raw, marker: py2_pickle({"data": np.zeros((2, 3072), np.int64), "labels": [0, 1]}),
            "should be a uint8 array",
        ),
        (
            lambda raw, marker: py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}),
            "shape \\(N, 3072\\)",
        ),
        (
            lambda raw, marker: py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}),
            "2 images but 1 labels",
        ),
        (
            lambda raw, marker: py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}),
            "labels should be 0..9",
        ),
        (
            lambda raw, marker: py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": "ab"}),
            "list of ints",
        ),
    ],
)
def test_broken_and_foreign_python_batches(tmp_path, batches, make, match):
    d = write_python(tmp_path / "d", batches)
    marker = tmp_path / "code-ran"
    target = d / "test_batch"
    target.write_bytes(make(target.read_bytes(), marker))
    with pytest.raises(DatasetError) as err:
        load_cifar10(d)
    _one_line(err, "test_batch")
    assert re.search(match, str(err.value)), str(err.value)
    assert not marker.exists()  # nothing in the file was run
