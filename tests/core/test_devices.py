"""The MLX device choice: set_backend/use_backend(device=), DUALNORM_DEVICE, --device, records.

GPU cases skip cleanly where MLX has no GPU (the mlx[cpu] build); the "no GPU here" cases
skip where it has one.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import dualnorm
from dualnorm import backends
from dualnorm.cli import main
from dualnorm.experiments import EXPERIMENTS, RunConfig
from dualnorm.records import StepRecord

HAS_MLX = importlib.util.find_spec("mlx") is not None
mlx_only = pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")


def _mlx_has_gpu() -> bool:
    if not HAS_MLX:
        return False
    import mlx.core as mx

    return bool(mx.is_available(mx.gpu))


HAS_GPU = _mlx_has_gpu()
gpu_only = pytest.mark.skipif(not HAS_GPU, reason="MLX has no GPU on this machine")
no_gpu_only = pytest.mark.skipif(not HAS_MLX or HAS_GPU, reason="needs MLX without a GPU")


@pytest.fixture(autouse=True)
def _clean_device_env(monkeypatch):
    monkeypatch.delenv("DUALNORM_DEVICE", raising=False)
    monkeypatch.delenv("DUALNORM_BACKEND", raising=False)


def test_numpy_runs_on_the_cpu_only():
    assert dualnorm.get_backend("numpy").device == "cpu"
    with pytest.raises(dualnorm.BackendError) as info:
        dualnorm.get_backend("numpy", device="gpu")
    assert "'gpu'" in str(info.value) and "choose one of: cpu" in str(info.value)


@mlx_only
def test_mlx_default_device_is_the_gpu_where_there_is_one():
    assert dualnorm.get_backend("mlx").device == ("gpu" if HAS_GPU else "cpu")


@mlx_only
def test_set_backend_with_a_device_and_labels():
    b = dualnorm.set_backend("mlx", device="cpu")
    assert (b.name, b.device, b.label, b.key) == ("mlx", "cpu", "mlx-cpu", "mlx:cpu")
    assert dualnorm.get_backend() is b
    assert dualnorm.get_backend("mlx-cpu") is b  # the label names backend and device at once
    assert dualnorm.get_backend("mlx") is b  # the active device is kept when only the name is given
    with pytest.raises(dualnorm.BackendError, match="names device 'cpu'"):
        dualnorm.get_backend("mlx-cpu", device="gpu")


@mlx_only
def test_use_backend_device_is_scoped_and_inherited():
    import mlx.core as mx

    with dualnorm.use_backend("mlx", device="cpu") as b:
        assert b.device == "cpu" and mx.default_device() == mx.cpu
        with dualnorm.use_backend("mlx") as inner:  # experiments re-enter by name
            assert inner is b
        layer = dualnorm.nn.BatchNorm1d(3)
        assert layer.backend is b
    assert getattr(backends._thread_local, "name", None) is None  # restored on leaving


@mlx_only
@pytest.mark.parametrize("device", ["tpu", "GPU0"])
def test_unknown_device_names_the_choices_here(device):
    for call in (dualnorm.set_backend, dualnorm.get_backend):
        with pytest.raises(dualnorm.BackendError) as info:
            call("mlx", device=device)
        message = str(info.value)
        assert repr(device) in message and "choose one of: cpu" in message
        assert isinstance(info.value, ValueError)


@no_gpu_only
def test_absent_gpu_is_a_clear_error():
    with pytest.raises(dualnorm.BackendError) as info:
        dualnorm.set_backend("mlx", device="gpu")
    message = str(info.value)
    assert "no gpu device on this machine" in message and "available here: cpu" in message
    assert "mlx[cuda13]" in message and "Metal" in message
    assert "mlx-gpu" not in backends.available_labels()


@mlx_only
def test_env_var_chooses_the_device(monkeypatch):
    monkeypatch.setenv("DUALNORM_DEVICE", "cpu")
    assert dualnorm.get_backend("mlx").device == "cpu"
    assert dualnorm.get_backend("numpy").device == "cpu"
    monkeypatch.setenv("DUALNORM_DEVICE", "gpu")
    assert dualnorm.get_backend("numpy").device == "cpu"  # NumPy has one device: the variable is for MLX
    monkeypatch.setenv("DUALNORM_DEVICE", "tpu")
    with pytest.raises(dualnorm.BackendError, match="DUALNORM_DEVICE"):
        dualnorm.get_backend("mlx")
    assert dualnorm.get_backend("mlx", device="cpu").device == "cpu"  # an explicit choice wins


@mlx_only
def test_records_name_the_device():
    exp = EXPERIMENTS["dying-relu"]
    with dualnorm.use_backend("mlx", device="cpu"):
        records = list(exp.run(RunConfig(backend="mlx", steps=3, variants=("batchnorm",))))
    assert {(r.backend, r.device) for r in records} == {("mlx", "cpu")}
    records = list(exp.run(RunConfig(backend="numpy", steps=2, variants=("plain",))))
    assert {(r.backend, r.device) for r in records} == {("numpy", "cpu")}


def test_records_without_a_device_still_load():
    old = {"experiment": "e", "variant": "v", "step": 1, "epoch": 1, "loss": 1.0, "backend": "mlx"}
    record = StepRecord.from_dict(old)
    assert record.device == ""
    assert (
        StepRecord.from_dict(
            json.loads(StepRecord("e", "v", 1, 1, 1.0, "mlx", device="gpu").to_json())
        ).device
        == "gpu"
    )


@mlx_only
def test_cli_run_device(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.jsonl"
    argv = ["run", "dying-relu", "--backend", "mlx", "--device", "cpu", "--steps", "2", "--quiet"]
    assert main([*argv, "--variants", "plain", "--json", str(path)]) == 0
    devices = {json.loads(line)["device"] for line in path.read_text().splitlines()}
    assert devices == {"cpu"}
    assert main(["run", "dying-relu", "--backend", "numpy", "--device", "gpu", "--steps", "2"]) == 2
    assert "choose one of: cpu" in capsys.readouterr().err


def test_cli_list_names_the_devices(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "devices here" in out
    if HAS_MLX and not HAS_GPU:
        assert "no gpu here" in out


# --- on an MLX GPU (skipped elsewhere) ----------------------------------------------------------


@gpu_only
def test_float64_on_the_gpu_is_a_clear_error():
    with dualnorm.use_backend("mlx", device="gpu"):
        with pytest.raises(dualnorm.BackendError, match='device="cpu"'):
            dualnorm.nn.BatchNorm1d(3, dtype="float64")
        layer = dualnorm.nn.BatchNorm1d(3)
        with pytest.raises(dualnorm.BackendError, match="float64"):
            layer(np.ones((4, 3), dtype=np.float64))


@gpu_only
def test_gpu_and_cpu_agree_in_float32():
    x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    out = {}
    for device in ("cpu", "gpu"):
        with dualnorm.use_backend("mlx", device=device):
            dualnorm.manual_seed(0)
            layer = dualnorm.nn.BatchNorm1d(8)
            out[device] = dualnorm.to_numpy(layer(x))
    np.testing.assert_allclose(out["gpu"], out["cpu"], rtol=1e-5, atol=1e-5)
