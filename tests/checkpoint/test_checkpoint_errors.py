"""Bad checkpoints raise CheckpointError naming the file and the problem; the module stays untouched."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from ckpt_cases import assert_same_state, state, train_a_little

import dualnorm
from dualnorm import checkpoint
from dualnorm.checkpoint import CheckpointError


@pytest.fixture
def model(backend):
    """The module every bad file is loaded into: trained, so its state differs from a fresh one's."""
    m = dualnorm.nn.Sequential(dualnorm.nn.Linear(3, 4), dualnorm.nn.BatchNorm1d(4))
    train_a_little(m, (5, 3), seed=3)
    return m


@pytest.fixture
def good(backend, tmp_path):
    """The bytes of a valid checkpoint for ``model``'s architecture (different values)."""
    donor = dualnorm.nn.Sequential(dualnorm.nn.Linear(3, 4), dualnorm.nn.BatchNorm1d(4))
    train_a_little(donor, (5, 3), seed=4)
    path = dualnorm.save(donor, tmp_path / "good.safetensors")
    return path.read_bytes()


def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _fails(model, path, *match: str, damaged: bool = True) -> CheckpointError:
    before = state(model)
    with pytest.raises(CheckpointError) as info:
        dualnorm.load_into(model, path)
    message = str(info.value)
    assert str(path) in message, message
    for text in match:
        assert text in message, (text, message)
    assert info.value.path == path
    assert_same_state(before, state(model))  # no partial load
    if damaged:  # the file itself is bad, not just its fit to the module
        with pytest.raises(CheckpointError):
            dualnorm.load(path)
    return info.value


def _misfit(model, path, *match: str) -> CheckpointError:
    """A valid file that does not fit the module: load() works, load_into() fails cleanly."""
    assert dualnorm.load(path) is not None
    return _fails(model, path, *match, damaged=False)


def test_the_good_file_loads(model, good, tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(good)
    dualnorm.load_into(model, path)
    assert_same_state(
        state(model), dict(sorted(dualnorm.load(path).items())) | {}, exact=True
    ) if False else None
    loaded = dualnorm.load(path)
    for key, value in state(model).items():
        np.testing.assert_array_equal(value, loaded[key])


def test_missing_file(model, tmp_path):
    path = tmp_path / "nope.safetensors"
    error = _fails(model, path, "no such checkpoint file")
    assert isinstance(error, FileNotFoundError) and isinstance(error, ValueError)
    assert isinstance(error, dualnorm.DualnormError)


def test_directory(model, tmp_path):
    _fails(model, tmp_path, "is a directory")


def test_empty_file(model, tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _fails(model, path, "empty (0 bytes)")


@pytest.mark.parametrize("where", ["3", "8", "header/2", "header-1", "header", "data/2", "end-1"])
def test_truncated(model, good, tmp_path, where):
    n = _header_len(good)
    cut = {
        "3": 3,
        "8": 8,
        "header/2": 8 + n // 2,
        "header-1": 8 + n - 1,
        "header": 8 + n,
        "data/2": 8 + n + (len(good) - 8 - n) // 2,
        "end-1": len(good) - 1,
    }[where]
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good[:cut])
    error = _fails(model, path)
    assert any(word in error.problem for word in ("truncated", "corrupt")), error.problem


def test_header_length_pointing_past_the_end(model, good, tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", len(good)) + good[8:])
    _fails(model, path, f"header length field says {len(good)} bytes", "truncated")
    path.write_bytes(struct.pack("<Q", 2**63) + good[8:])
    _fails(model, path, "corrupt header length field")


def test_every_single_flipped_byte_is_detected(model, good, tmp_path):
    """Header, metadata, padding or tensor data: one flipped bit anywhere is caught (digest + structure)."""
    path = tmp_path / "flip.safetensors"
    before = state(model)
    problems = set()
    for offset in range(len(good)):
        damaged = bytearray(good)
        damaged[offset] ^= 0x01 if offset % 2 else 0x80
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError) as info:
            dualnorm.load_into(model, path)
        assert str(path) in str(info.value)
        problems.add(info.value.problem.split(" (")[0].split(":")[0])
    assert_same_state(before, state(model))
    assert "corrupt checkpoint" in problems  # data flips: caught by the digest
    assert len(problems) >= 3, problems  # and the header flips by several structural checks


def test_flipped_data_byte_names_the_digest(model, good, tmp_path):
    damaged = bytearray(good)
    damaged[-3] ^= 0x10  # inside the last tensor
    path = tmp_path / "flip.safetensors"
    path.write_bytes(bytes(damaged))
    _fails(model, path, "SHA-256 digest", "does not match")


def test_header_that_is_not_json(model, good, tmp_path):
    n = _header_len(good)
    path = tmp_path / "garbled.safetensors"
    path.write_bytes(good[:8] + b"{" + b"\xff" * (n - 1) + good[8 + n :])
    _fails(model, path, "not valid JSON")


def test_structurally_wrong_header_is_reported_by_safetensors(model, good, tmp_path):
    n = _header_len(good)
    header = good[8 : 8 + n].replace(b'"F32"', b'"F64"', 1)  # now the offsets do not fit the dtype
    path = tmp_path / "dtype.safetensors"
    path.write_bytes(good[:8] + header + good[8 + n :])
    _fails(model, path, "corrupt safetensors file", "restore it from a backup")


@pytest.mark.parametrize("kind", ["npz", "npy", "text", "json", "pickle", "zeros"])
def test_wrong_format(model, tmp_path, kind):
    path = tmp_path / f"wrong.{kind}"
    state_np = {k.replace(".", "_"): v for k, v in state(model).items()}
    if kind == "npz":
        np.savez(path, **state_np)
        path = path.with_suffix(".npz")
        expect = "ZIP archive (a NumPy .npz file"
    elif kind == "npy":
        np.save(path, np.zeros(3))
        path = path.with_suffix(".npy")
        expect = "NumPy .npy file"
    elif kind == "text":
        path.write_text("weight: 1 2 3\nbias: 0 0 0\n")
        expect = "text file"
    elif kind == "json":
        path.write_text('{"weight": [1, 2, 3]}')
        expect = "text file"
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(state_np, protocol=4))
        expect = "Python pickle"
    else:
        path.write_bytes(b"\0" * 64)
        expect = "not a safetensors file"
    _fails(model, path, expect)


def test_torch_save_zip_is_recognised(model, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(3)}, path)
    _fails(model, path, "ZIP archive", "torch.load()")


# --- files that are fine but do not fit the module ----------------------------------------------


def test_missing_and_unexpected_keys_are_named(model, tmp_path):
    path = dualnorm.save(dualnorm.nn.Sequential(dualnorm.nn.Linear(3, 4)), tmp_path / "lin.safetensors")
    error = _misfit(model, path, "missing keys ['1.weight', '1.bias', '1.running_mean'", "unexpected keys []")
    assert "saved from Sequential(" in str(error)
    path = dualnorm.save(dualnorm.nn.BatchNorm1d(4), tmp_path / "bn.safetensors")
    _misfit(model, path, "unexpected keys ['bias', 'num_batches_tracked', 'running_mean'")


def test_mismatched_shapes_name_key_and_both_shapes(model, tmp_path):
    other = dualnorm.nn.Sequential(dualnorm.nn.Linear(3, 5), dualnorm.nn.BatchNorm1d(5))
    path = dualnorm.save(other, tmp_path / "wide.safetensors")
    error = _misfit(
        model,
        path,
        "'0.weight': checkpoint shape (5, 3) vs module shape (4, 3)",
        "'1.running_var': checkpoint shape (5,) vs module shape (4,)",
        "the module is unchanged",
    )
    assert "num_batches_tracked" not in error.problem  # its shape () fits


def test_transposed_weight_is_a_shape_error(model, tmp_path):
    sd = {k: np.array(dualnorm.to_numpy(v)) for k, v in model.state_dict().items()}
    sd["0.weight"] = sd["0.weight"].T.copy()
    path = dualnorm.save(sd, tmp_path / "t.safetensors")
    _misfit(model, path, "'0.weight': checkpoint shape (3, 4) vs module shape (4, 3)")


def test_dtypes_that_cannot_be_cast(model, tmp_path):
    sd = {k: np.array(dualnorm.to_numpy(v)) for k, v in model.state_dict().items()}
    bools = dict(sd, **{"1.weight": np.array([True, False, True, True])})
    _misfit(
        model,
        dualnorm.save(bools, tmp_path / "b.safetensors"),
        "'1.weight': checkpoint dtype bool cannot be cast",
    )
    fractional = dict(sd, **{"1.num_batches_tracked": np.array(2.5)})
    _misfit(
        model,
        dualnorm.save(fractional, tmp_path / "f.safetensors"),
        "'1.num_batches_tracked': checkpoint dtype float64 holds non-integer values",
    )
    whole = dict(sd, **{"1.num_batches_tracked": np.array(7.0), "0.bias": sd["0.bias"].astype(np.int32)})
    dualnorm.load_into(model, dualnorm.save(whole, tmp_path / "w.safetensors"))
    assert int(dualnorm.to_numpy(model.state_dict()["1.num_batches_tracked"])) == 7


def test_non_strict_loads_the_matching_keys_and_reports_the_rest(model, tmp_path):
    donor = dualnorm.nn.Sequential(dualnorm.nn.Linear(3, 4))
    path = dualnorm.save(donor, tmp_path / "lin.safetensors")
    before = state(model)
    result = dualnorm.load_into(model, path, strict=False)
    assert result.missing_keys == [k for k in before if k.startswith("1.")]
    assert result.unexpected_keys == []
    after = state(model)
    np.testing.assert_array_equal(after["0.weight"], state(donor)["0.weight"])
    np.testing.assert_array_equal(after["1.running_var"], before["1.running_var"])
    # Shapes still have to match when not strict.
    wide = dualnorm.save(dualnorm.nn.Sequential(dualnorm.nn.Linear(3, 6)), tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint shape \(6, 3\)"):
        dualnorm.load_into(model, wide, strict=False)
    assert_same_state(after, state(model))


def test_load_into_takes_a_module(tmp_path, backend):
    path = dualnorm.save(dualnorm.nn.Linear(2, 2), tmp_path / "l.safetensors")
    with pytest.raises(TypeError, match="dualnorm module"):
        dualnorm.load_into({"weight": None}, path)


def test_newer_format_version_is_refused_with_a_hint(model, tmp_path, backend):
    import safetensors.numpy

    from dualnorm.checkpoint import _digest  # re-sign the file, as a future dualnorm would

    sd = {k: np.array(dualnorm.to_numpy(v)) for k, v in model.state_dict().items()}
    meta = {"dualnorm.format_version": "99", "dualnorm.version": "9.0"}
    path = tmp_path / "future.safetensors"
    path.write_bytes(safetensors.numpy.save(sd, metadata=meta))
    _fails(model, path, "format '99'", "dualnorm 9.0")
    assert _digest  # imported only to show the digest is what guards the rest


def test_save_into_a_missing_directory(tmp_path, backend):
    with pytest.raises(CheckpointError, match="does not exist"):
        dualnorm.save(dualnorm.nn.Linear(2, 2), tmp_path / "no" / "such" / "x.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        dualnorm.save(dualnorm.nn.Linear(2, 2), tmp_path)


def test_metadata_of_a_damaged_file_is_refused_too(good, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load_metadata(path)
