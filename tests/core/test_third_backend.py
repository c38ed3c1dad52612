"""A backend is one unit: a third one, defined and registered here, runs layers and training.

``NumPy2Backend`` is a thin NumPy-based backend with no fast paths (no ``kernels_numpy2``
module exists), so it runs the shared reference math; it counts the calls the library
makes into it, which proves the work went through it rather than through the NumPy backend.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any

import numpy as np
import pytest

import dualnorm
from dualnorm import backends, nn
from dualnorm.backends import Backend, backend_of, register_backend
from dualnorm.losses import MSELoss
from dualnorm.optim import SGD, Adam
from dualnorm.training import Task, train


class NumPy2Backend(Backend):
    name = "numpy2"
    xp = np
    float32 = np.dtype(np.float32)
    float64 = np.dtype(np.float64)
    int64 = np.dtype(np.int64)

    def __init__(self, device: str | None = None) -> None:
        super().__init__(device)
        self.calls: collections.Counter[str] = collections.Counter()

    def is_array(self, value: Any) -> bool:
        return isinstance(value, np.ndarray)

    def _from_numpy(self, array: np.ndarray, dtype: Any) -> np.ndarray:
        return np.array(array, dtype=dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def dtype_kind(self, dtype: Any) -> str:
        return np.dtype(dtype).kind

    def compute(self) -> contextlib.AbstractContextManager[Any]:
        self.calls["compute"] += 1
        return np.errstate(all="ignore")


@pytest.fixture
def numpy2(monkeypatch):
    """Register the third backend for one test; the registry and caches come back afterwards."""
    for attr in ("_registry", "_instances", "_failures"):
        monkeypatch.setattr(backends, attr, dict(getattr(backends, attr)))
    register_backend("numpy2", NumPy2Backend)
    return backends.get_backend("numpy2")


def _model_and_data(seed: int):
    dualnorm.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4, dtype="float64"), nn.BatchNorm1d(4, dtype="float64"))
    x = np.random.default_rng(seed).normal(size=(8, 3))
    return model, x


def test_registered_backend_is_found_by_name_and_listed(numpy2):
    assert isinstance(numpy2, NumPy2Backend) and numpy2.device == "cpu" and numpy2.label == "numpy2"
    assert "numpy2" in backends.backend_names()
    assert "numpy2" in dualnorm.available_backends()
    assert numpy2.kernels == {}  # no kernels_numpy2 module: the shared reference math
    with pytest.raises(dualnorm.BackendError, match="numpy2"):
        dualnorm.get_backend("numpy3")  # the error lists the registered one among the choices


def test_linear_and_batchnorm_forward_backward_on_the_third_backend(numpy2):
    with dualnorm.use_backend("numpy2"):
        model, x = _model_and_data(3)
        assert all(child.backend is numpy2 for child in model)
        y = model(x)
        g = np.random.default_rng(4).normal(size=y.shape)
        dx = model.backward(g)
    with dualnorm.use_backend("numpy"):
        ref_model, _ = _model_and_data(3)
        ref_y = ref_model(x)
        ref_dx = ref_model.backward(g)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-12)
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    # the running statistics moved as batch norm's must: (1 - 0.1) * 0 + 0.1 * batch mean
    h = model[0](x)
    np.testing.assert_allclose(model[1].running_mean, 0.1 * h.mean(axis=0), rtol=1e-12)


def test_input_gradient_matches_central_differences(numpy2):
    with dualnorm.use_backend("numpy2"):
        model, x = _model_and_data(5)
        g = np.random.default_rng(6).normal(size=(8, 4))
        model(x)
        dx = model.backward(g)
        numeric = np.zeros_like(x)
        h = 1e-6
        for idx in np.ndindex(*x.shape):
            xp_, xm = x.copy(), x.copy()
            xp_[idx] += h
            xm[idx] -= h
            numeric[idx] = (np.sum(model(xp_) * g) - np.sum(model(xm) * g)) / (2 * h)
    np.testing.assert_allclose(dx, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", [SGD, Adam])
def test_training_loop_runs_on_the_third_backend(numpy2, optimizer):
    def losses(name: str) -> list[float]:
        backend = dualnorm.get_backend(name)
        with dualnorm.use_backend(name):
            model, x = _model_and_data(7)
            target = backend.asarray(np.random.default_rng(8).normal(size=(8, 4)))
            task = Task(
                experiment="third-backend",
                variant="bn",
                model=model,
                loss_fn=MSELoss(),
                optimizer=optimizer(model.parameters(), lr=0.05),
                batch=lambda step: (backend.asarray(x), target),
                steps=5,
            )
            records = list(train(task, backend))
            assert backend_of(model[0].weight.data) is backend
        assert [r.backend for r in records] == [name] * 5
        return [r.loss for r in records]

    got = losses("numpy2")
    assert numpy2.calls["compute"] >= 5  # every step ran inside the backend's compute context
    assert got[-1] < got[0]
    np.testing.assert_allclose(got, losses("numpy"), rtol=1e-10)


def test_backend_of_prefers_the_active_backend(numpy2):
    a = np.zeros(3)
    assert backend_of(a).name == "numpy"
    with dualnorm.use_backend("numpy2"):
        assert backend_of(a) is numpy2
    with pytest.raises(dualnorm.InputError, match="numpy2"):
        backend_of([1.0, 2.0])
