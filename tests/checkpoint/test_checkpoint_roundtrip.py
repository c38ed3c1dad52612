"""Checkpoints move between backends: NumPy -> MLX -> NumPy (or MLX -> NumPy -> MLX) unchanged."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from ckpt_cases import CASE_IDS, CASES, assert_same_state, inputs, state, train_a_little

import dualnorm
from dualnorm import checkpoint

HAS_MLX = importlib.util.find_spec("mlx") is not None  # not `from conftest`: tests/cli has a conftest too


def _other(backend: str) -> str:
    if not HAS_MLX:
        return backend
    return "mlx" if backend == "numpy" else "numpy"


def _out(module, x):
    return np.array(dualnorm.to_numpy(module(x)), copy=True)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_round_trip_through_the_other_backend(backend, case, tmp_path):
    """A (this backend) -> file -> B (other backend) -> file -> C (this backend): same state, same outputs."""
    a = case.make()
    train_a_little(a, case.shape)
    dualnorm.save(a, tmp_path / "a.safetensors")
    with dualnorm.use_backend(_other(backend)):
        b = case.make()
    assert dualnorm.load_into(b, tmp_path / "a.safetensors") == ([], [])
    dualnorm.save(b, tmp_path / "b.safetensors")
    c = case.make()
    dualnorm.load_into(c, tmp_path / "b.safetensors")

    assert b.backend.name == _other(backend) and c.backend.name == backend
    assert_same_state(state(a), state(b))  # exactly: moving between backends loses no bit
    assert_same_state(state(a), state(c))
    meta = checkpoint.load_metadata(tmp_path / "b.safetensors")
    assert meta["dualnorm.backend"] == _other(backend)

    # Training mode (running statistics / power iteration advance the same way), then eval mode.
    for x in inputs(case.shape, seed=11, n=2):
        ya, yb, yc = _out(a, x), _out(b, x), _out(c, x)
        np.testing.assert_array_equal(ya, yc)
        np.testing.assert_allclose(ya, yb, rtol=2e-5, atol=2e-5)
    assert_same_state(state(a), state(c))
    assert_same_state(state(a), state(b), exact=False)
    for m in (a, b, c):
        m.eval()
    x = (
        inputs((1, *case.shape[1:]), seed=12)[0]
        if "BatchNorm" not in case.name
        else inputs(case.shape, 12)[0]
    )
    ya, yb, yc = _out(a, x), _out(b, x), _out(c, x)
    np.testing.assert_array_equal(ya, yc)
    np.testing.assert_allclose(ya, yb, rtol=2e-5, atol=2e-5)


def test_load_returns_numpy_arrays_with_pytorch_keys_and_dtypes(backend, tmp_path):
    model = dualnorm.nn.Sequential(dualnorm.nn.Linear(2, 3), dualnorm.nn.BatchNorm1d(3))
    dualnorm.save(model, tmp_path / "m.safetensors")
    loaded = dualnorm.load(tmp_path / "m.safetensors")
    assert list(loaded) == sorted(model.state_dict())  # safetensors stores keys sorted
    assert {k: (v.dtype.name, v.shape) for k, v in loaded.items()} == {
        "0.weight": ("float32", (3, 2)),
        "0.bias": ("float32", (3,)),
        "1.weight": ("float32", (3,)),
        "1.bias": ("float32", (3,)),
        "1.running_mean": ("float32", (3,)),
        "1.running_var": ("float32", (3,)),
        "1.num_batches_tracked": ("int64", ()),
    }
    assert all(isinstance(v, np.ndarray) and v.flags.writeable for v in loaded.values())


def test_float64_modules_keep_float64(backend, tmp_path):
    bn = dualnorm.nn.BatchNorm1d(3, dtype="float64")
    train_a_little(bn, (5, 3))
    dualnorm.save(bn, tmp_path / "bn.safetensors")
    assert dualnorm.load(tmp_path / "bn.safetensors")["running_mean"].dtype == np.float64
    assert checkpoint.load_metadata(tmp_path / "bn.safetensors")["dualnorm.dtype"] == "float64"
    with dualnorm.use_backend(_other(backend)):
        twin = dualnorm.nn.BatchNorm1d(3, dtype="float64")
    dualnorm.load_into(twin, tmp_path / "bn.safetensors")
    assert_same_state(state(bn), state(twin))
    # ... and a float64 file loads into a float32 module (cast), as torch's load_state_dict does.
    small = dualnorm.nn.BatchNorm1d(3)
    dualnorm.load_into(small, tmp_path / "bn.safetensors")
    np.testing.assert_allclose(state(small)["running_var"], state(bn)["running_var"], rtol=1e-6)
    assert state(small)["running_var"].dtype == np.float32


def test_save_a_state_dict_of_mixed_arrays(backend, tmp_path):
    bn = dualnorm.nn.BatchNorm1d(2)
    sd = dict(bn.state_dict())
    sd["running_mean"] = np.array([1.5, -2.0], dtype=np.float32)  # NumPy beside backend arrays
    dualnorm.save(sd, tmp_path / "sd.safetensors")
    assert dualnorm.load(tmp_path / "sd.safetensors")["running_mean"].tolist() == [1.5, -2.0]


def test_metadata_records_version_backend_and_layer_configuration(backend, tmp_path):
    model = dualnorm.nn.Sequential(dualnorm.nn.Linear(2, 3), dualnorm.nn.BatchNorm1d(3, eps=1e-3))
    dualnorm.save(model, tmp_path / "m.safetensors", metadata={"note": "epoch 3", "lr": "0.01"})
    meta = checkpoint.load_metadata(tmp_path / "m.safetensors")
    assert meta["dualnorm.version"] == dualnorm.__version__
    assert meta["dualnorm.format_version"] == checkpoint.FORMAT_VERSION
    assert meta["dualnorm.backend"] == backend
    assert meta["dualnorm.module"] == "Sequential"
    assert meta["dualnorm.repr"] == repr(model) and "eps=0.001" in meta["dualnorm.repr"]
    assert meta["format"] == "pt"
    assert meta["note"] == "epoch 3" and meta["lr"] == "0.01"
    assert len(meta[checkpoint.DIGEST_KEY]) == 64


@pytest.mark.parametrize(
    "bad",
    [{"n": 3}, {3: "x"}, {"dualnorm.version": "9"}, {"format": "np"}],
    ids=["int", "key", "reserved", "format"],
)
def test_bad_metadata_is_refused_before_writing(backend, tmp_path, bad):
    with pytest.raises(dualnorm.InputError, match="metadata"):
        dualnorm.save(dualnorm.nn.Linear(2, 2), tmp_path / "m.safetensors", metadata=bad)
    assert list(tmp_path.iterdir()) == []


def test_unsaveable_things_are_refused(backend, tmp_path):
    with pytest.raises(TypeError, match="module or a state dict"):
        dualnorm.save([1, 2, 3], tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match=r"'name'.*dtype <U1"):
        dualnorm.save({"name": np.array(["a"])}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="non-empty strings"):
        dualnorm.save({"": np.zeros(2)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_layers_without_state_round_trip_as_empty_files(backend, tmp_path):
    dualnorm.save(dualnorm.nn.ReLU(), tmp_path / "relu.safetensors")
    assert dualnorm.load(tmp_path / "relu.safetensors") == {}
    assert dualnorm.load_into(dualnorm.nn.LocalResponseNorm(2), tmp_path / "relu.safetensors") == ([], [])
