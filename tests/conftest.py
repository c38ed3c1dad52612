"""Shared fixtures: every backend-dependent test runs once per installed backend."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re

import numpy as np
import pytest
from hypothesis import settings

import dualnorm
from dualnorm import backends as _backends

# Hypothesis as on CI everywhere: the same examples every run (a failure reproduces; random shapes
# also made MLX compile new kernels on every local run) and no per-example deadline (a loaded
# machine would fail on time, not on numbers). HYPOTHESIS_PROFILE=default brings randomness back.
settings.register_profile("dualnorm", derandomize=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dualnorm"))

HAS_MLX = importlib.util.find_spec("mlx") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MLX_GPU = HAS_MLX and "gpu" in _backends.available_devices("mlx")
BACKENDS = [
    "numpy",
    pytest.param("mlx", marks=pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")),
    pytest.param("mlx-gpu", marks=pytest.mark.skipif(not HAS_MLX_GPU, reason="MLX has no GPU here")),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The name of a backend, active (on this thread) for the duration of the test.

    "mlx" runs on the CPU device (float64 works there), "mlx-gpu" on the GPU where there is one.
    """
    name, _, device = request.param.partition("-")
    with dualnorm.use_backend(name, device=device or "cpu"):
        dualnorm.manual_seed(0)
        yield name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On mlx-gpu, a float64 case stops at dualnorm's "no float64 on the GPU" error: a skip, not a
    failure (the same case runs in float64 on mlx, the CPU device)."""
    outcome = yield
    report = outcome.get_result()
    params = getattr(getattr(item, "callspec", None), "params", {})
    if (
        report.when == "call"
        and report.failed
        and params.get("backend") == "mlx-gpu"
        and call.excinfo is not None
        and call.excinfo.errisinstance(dualnorm.BackendError)
        and "no float64 on the GPU" in str(call.excinfo.value)
    ):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, "float64 on the MLX GPU: runs on mlx (CPU)")
    elif report.skipped and isinstance(report.longrepr, tuple) and _NO_GPU.search(str(report.longrepr[-1])):
        # one summary line for every GPU case skipped on a machine without one (-ra lists each place)
        report.longrepr = (__file__, None, NO_GPU_SKIPS)


_NO_GPU = re.compile(r"\bno GPU\b", re.IGNORECASE)
NO_GPU_SKIPS = "MLX has no GPU here: every GPU case skipped (they run where MLX has one)"


@pytest.fixture(scope="session")
def _cwd_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cwd")


_cwd_count = itertools.count()


@pytest.fixture(autouse=True)
def _run_in_tmp(request, _cwd_root):
    """Every test runs in its own temporary directory: what the commands write by default
    (./dualnorm-runs, the UI's exports) never lands in the checkout or among the user's runs.

    A test that asks for tmp_path runs in it; any other in a new empty directory made here, with
    one mkdir: tmp_path and monkeypatch.chdir for each of the ~5,000 tests cost ~8 s of CPU."""
    if "tmp_path" in request.fixturenames:
        where = request.getfixturevalue("tmp_path")
    else:
        where = _cwd_root / str(next(_cwd_count))
        where.mkdir()
    before = os.getcwd()
    os.chdir(where)
    try:
        yield where
    finally:
        os.chdir(before)


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
