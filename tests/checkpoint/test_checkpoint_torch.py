"""dualnorm <-> PyTorch through safetensors files, both directions, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
from ckpt_cases import TORCH_CASES, assert_same_state, inputs, state, train_a_little

import dualnorm
from dualnorm import checkpoint

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.torch
TOL = {"rtol": 2e-5, "atol": 2e-5}
IDS = [c.name for c in TORCH_CASES]


def _torch_out(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _ours(module, x):
    return np.array(dualnorm.to_numpy(module(x)), copy=True)


def _compare_outputs(ours, theirs, case):
    """Train-mode outputs (running stats and power iterations advance alike), the state, then eval."""
    ours.train()
    theirs.train()
    for x in inputs(case.shape, seed=21, n=2):
        np.testing.assert_allclose(_ours(ours, x), _torch_out(theirs, x), **TOL)
    assert_same_state(state(ours), state(theirs), exact=False)
    ours.eval()
    theirs.eval()
    for x in inputs(case.shape, seed=22, n=2):
        np.testing.assert_allclose(_ours(ours, x), _torch_out(theirs, x), **TOL)


@pytest.mark.parametrize("case", TORCH_CASES, ids=IDS)
def test_dualnorm_file_loads_into_torch(backend, case, tmp_path):
    ours = case.make()
    train_a_little(ours, case.shape)
    path = dualnorm.save(ours, tmp_path / "ours.safetensors")
    theirs = case.make_torch(torch)
    loaded = safetensors_torch.load_file(path)
    assert theirs.load_state_dict(loaded, strict=True) is not None  # strict: every key matches
    assert loaded.get("num_batches_tracked", torch.zeros((), dtype=torch.int64)).dtype == torch.int64
    assert_same_state(state(ours), state(theirs))  # exactly the same numbers
    _compare_outputs(ours, theirs, case)


@pytest.mark.parametrize("case", TORCH_CASES, ids=IDS)
def test_torch_file_loads_into_dualnorm(backend, case, tmp_path):
    torch.manual_seed(0)
    theirs = case.make_torch(torch)
    theirs.train()
    with torch.no_grad():  # non-trivial parameters and running statistics
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for x in inputs(case.shape, seed=5, n=3):
            theirs(torch.from_numpy(x))
    path = tmp_path / "theirs.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    ours = case.make()
    assert dualnorm.load_into(ours, path) == ([], [])
    assert_same_state(state(ours), state(theirs))
    _compare_outputs(ours, theirs, case)


def test_torch_bfloat16_and_float16_files_load_as_float32(backend, tmp_path):
    path = tmp_path / "half.safetensors"
    weight = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    safetensors_torch.save_file(
        {"weight": weight, "bias": torch.tensor([0.5, 0.25, -1.0], dtype=torch.float16)}, str(path)
    )
    loaded = dualnorm.load(path)
    assert loaded["weight"].dtype == np.float32 and loaded["weight"].tolist() == [1.5, -2.25, 3.0]
    ln = dualnorm.nn.LayerNorm(3)
    dualnorm.load_into(ln, path)
    assert state(ln)["weight"].tolist() == [1.5, -2.25, 3.0]
    assert state(ln)["bias"].tolist() == [0.5, 0.25, -1.0]


def test_torch_tensors_can_be_saved_directly(backend, tmp_path):
    bn = torch.nn.BatchNorm1d(3)
    dualnorm.save(bn.state_dict(), tmp_path / "t.safetensors")
    assert dualnorm.load(tmp_path / "t.safetensors")["num_batches_tracked"].dtype == np.int64
    assert checkpoint.load_metadata(tmp_path / "t.safetensors")["dualnorm.backend"] == "torch"
