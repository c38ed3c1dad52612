"""Shared fixtures: every backend-dependent test runs once per installed backend."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import dualnorm
from dualnorm import backends as _backends

HAS_MLX = importlib.util.find_spec("mlx") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None
BACKENDS = [
    "numpy",
    pytest.param("mlx", marks=pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The name of a backend, active (on this thread) for the duration of the test."""
    with dualnorm.use_backend(request.param):
        dualnorm.manual_seed(0)
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _isolate_backend_state():
    """set_backend() in one test must not leak into the next."""
    saved = _backends._process_default
    yield
    _backends._process_default = saved


def pytest_report_header(config):
    return f"dualnorm backends available: {dualnorm.available_backends()}; torch installed: {HAS_TORCH}"


def pytest_addoption(parser):
    parser.addoption(
        "--harness-examples",
        type=int,
        default=None,
        help="hypothesis examples per case in tests/harness (default 3, or DUALNORM_HARNESS_EXAMPLES)",
    )
