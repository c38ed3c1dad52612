"""The backend layer: choosing, scoping, failing clearly, and converting arrays."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest

import dualnorm
from dualnorm import backends, nn

HAS_MLX = importlib.util.find_spec("mlx") is not None
mlx_only = pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")


def test_set_and_get_backend():
    assert dualnorm.set_backend("numpy").name == "numpy"
    assert dualnorm.get_backend().name == "numpy"
    assert nn.Linear(2, 2).backend.name == "numpy"
    assert dualnorm.get_backend("NumPy ").name == "numpy"  # names are case- and space-insensitive


@mlx_only
def test_set_backend_mlx_and_layers_follow():
    dualnorm.set_backend("mlx")
    assert dualnorm.get_backend().name == "mlx"
    layer = nn.BatchNorm1d(2)
    y = layer(np.ones((3, 2)))
    assert type(y).__module__.startswith("mlx")


def test_available_backends_lists_numpy_first():
    names = dualnorm.available_backends()
    assert names[0] == "numpy"
    assert ("mlx" in names) == HAS_MLX


def test_use_backend_is_scoped_and_restores():
    dualnorm.set_backend("numpy")
    other = "mlx" if HAS_MLX else "numpy"
    with dualnorm.use_backend(other) as b:
        assert b.name == other and dualnorm.get_backend().name == other
        with dualnorm.use_backend("numpy"):
            assert dualnorm.get_backend().name == "numpy"
        assert dualnorm.get_backend().name == other
    assert dualnorm.get_backend().name == "numpy"


def test_use_backend_restores_after_an_exception():
    dualnorm.set_backend("numpy")
    with pytest.raises(RuntimeError), dualnorm.use_backend("numpy"):
        raise RuntimeError("boom")
    assert backends._thread_local.name is None


@mlx_only
def test_use_backend_is_thread_local():
    dualnorm.set_backend("numpy")
    inside, entered, release = [], threading.Event(), threading.Event()

    def worker():
        with dualnorm.use_backend("mlx"):
            inside.append(dualnorm.get_backend().name)
            entered.set()
            release.wait(60)

    t = threading.Thread(target=worker)
    t.start()
    assert entered.wait(60)
    try:
        assert inside == ["mlx"]
        assert dualnorm.get_backend().name == "numpy"  # this thread is unaffected
    finally:
        release.set()
        t.join(60)


def test_env_var_chooses_the_backend(monkeypatch):
    monkeypatch.setattr(backends, "_process_default", None)
    monkeypatch.setenv("DUALNORM_BACKEND", "numpy")
    assert dualnorm.get_backend().name == "numpy"
    monkeypatch.setenv("DUALNORM_BACKEND", "tensorflow")
    with pytest.raises(dualnorm.BackendError, match="DUALNORM_BACKEND"):
        dualnorm.get_backend()
    dualnorm.set_backend("numpy")  # an explicit choice wins over the environment
    assert dualnorm.get_backend().name == "numpy"


@mlx_only
def test_env_var_mlx(monkeypatch):
    monkeypatch.setattr(backends, "_process_default", None)
    monkeypatch.setenv("DUALNORM_BACKEND", "mlx")
    assert dualnorm.get_backend().name == "mlx"


def test_automatic_choice_off_apple_silicon_is_numpy(monkeypatch):
    monkeypatch.setattr(backends, "_process_default", None)
    monkeypatch.delenv("DUALNORM_BACKEND", raising=False)
    monkeypatch.setattr(backends.sys, "platform", "linux")
    assert dualnorm.get_backend().name == "numpy"


@pytest.mark.parametrize("call", ["set_backend", "use_backend", "get_backend"])
def test_unknown_backend_names_the_choices(call):
    fn = getattr(dualnorm, call)
    with pytest.raises(dualnorm.BackendError) as info:
        result = fn("jax")
        if call == "use_backend":
            result.__enter__()
    message = str(info.value)
    assert "'jax'" in message and "numpy" in message and "mlx" in message
    assert isinstance(info.value, ValueError)


@pytest.fixture
def fresh_backend_cache(monkeypatch):
    """Empty backend caches for the test; the real ones come back afterwards."""
    monkeypatch.setattr(backends, "_instances", {})
    monkeypatch.setattr(backends, "_failures", {})
    yield


def test_backend_that_fails_to_import_gives_the_install_command(monkeypatch, fresh_backend_cache):
    def broken(name, device):
        raise ImportError(f"No module named '{name}.core'")

    monkeypatch.setattr(backends, "_create", broken)
    for _ in range(2):  # the failure is remembered, with the same message
        with pytest.raises(dualnorm.BackendError) as info:
            dualnorm.set_backend("mlx")
        message = str(info.value)
        assert "'mlx' is not available" in message and "ImportError" in message
        assert 'pip install "dualnorm[mlx]"' in message
    assert "mlx" not in dualnorm.available_backends()


def test_failing_backend_does_not_change_the_active_one(monkeypatch, fresh_backend_cache):
    dualnorm.set_backend("numpy")
    monkeypatch.setattr(backends, "_create", lambda name, device: (_ for _ in ()).throw(OSError("bad wheel")))
    with pytest.raises(dualnorm.BackendError, match="bad wheel"):
        dualnorm.set_backend("mlx")
    assert backends._process_default == "numpy:cpu"


def test_backend_caches_are_restored_after_monkeypatching():
    assert "numpy:cpu" in backends._instances
    assert not any(name in backends._failures for name in dualnorm.available_backends())


# --- to_numpy ----------------------------------------------------------------------------------
def test_to_numpy_numpy_and_array_likes():
    a = np.arange(3.0)
    assert dualnorm.to_numpy(a) is a
    np.testing.assert_array_equal(dualnorm.to_numpy([1, 2]), [1, 2])
    assert isinstance(dualnorm.to_numpy(3.5), np.ndarray)


@mlx_only
def test_to_numpy_mlx_arrays():
    import mlx.core as mx

    np.testing.assert_array_equal(dualnorm.to_numpy(mx.array([1.0, 2.0]) * 2), [2.0, 4.0])
    as64 = dualnorm.to_numpy(mx.array(np.arange(3.0), dtype=mx.float64))
    assert as64.dtype == np.float64
    assert dualnorm.to_numpy(mx.array([1, 2], dtype=mx.int32)).dtype == np.int32
    half = dualnorm.to_numpy(mx.array([1.5, -2.0], dtype=mx.bfloat16))
    np.testing.assert_array_equal(half.astype(np.float32), [1.5, -2.0])


@mlx_only
def test_to_numpy_does_not_alias_immutable_mlx_arrays():
    """Writing into the NumPy result must not change the MLX array (MLX arrays are immutable)."""
    import mlx.core as mx

    with dualnorm.use_backend("mlx"):
        bn = nn.BatchNorm1d(2)
    host = dualnorm.to_numpy(bn.weight.data)
    host[:] = 7.0
    np.testing.assert_array_equal(np.array(bn.weight.data), [1.0, 1.0])
    original = mx.array([3.0])
    out = dualnorm.to_numpy(original)
    out += 1
    assert original.item() == 3.0


@mlx_only
def test_backend_asarray_keeps_native_arrays_and_casts():
    import mlx.core as mx

    B = dualnorm.get_backend("mlx")
    a = mx.array([1.0, 2.0])
    assert B.asarray(a) is a
    assert B.asarray(a, mx.float64).dtype == mx.float64
    assert B.asarray(np.array([1.0]), None).dtype == mx.float64  # float64 stays float64
    # integer arrays stay integer (class labels), as on the NumPy backend; lists of ints become float32
    assert B.asarray(np.array([1], dtype=np.int8)).dtype == mx.int64
    assert B.asarray([1, 2]).dtype == mx.float32
    with pytest.raises(TypeError, match="bool"):
        B.asarray(mx.array([True]))


def test_backend_repr_and_dtype_names():
    B = dualnorm.get_backend("numpy")
    assert "numpy" in repr(B)
    assert B.dtype(None) == np.float32 and B.dtype("float64") == np.float64
    with pytest.raises(ValueError, match="'float16'"):
        B.dtype("float16")
