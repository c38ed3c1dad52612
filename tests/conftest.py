"""Shared fixtures: every backend-dependent test runs once per installed backend."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

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


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own temporary directory: what the commands write by default
    (./dualnorm-runs, the UI's exports) never lands in the checkout or among the user's runs."""
    monkeypatch.chdir(tmp_path)


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


def pytest_sessionstart(session):
    """A parallel run of the whole suite first compiles numba's kernels and the byte code of the large
    imports, once each (tests/_warm_up.py), before the workers start. With warm caches: about 2 s."""
    config = session.config
    if (
        hasattr(config, "workerinput")  # an xdist worker: its controller did it
        or not isinstance(getattr(config.option, "numprocesses", None), int)
        or config.option.numprocesses < 2
        or config.option.collectonly
        or os.environ.get("DUALNORM_TEST_WARM_UP", "1") == "0"
        or importlib.util.find_spec("numba") is None
        or not _runs_the_whole_suite(config)
    ):
        return
    _warm_up(config)


def _runs_the_whole_suite(config) -> bool:
    tests = Path(__file__).resolve().parent
    return all(
        Path(config.invocation_params.dir, arg.split("::")[0]).resolve() in (tests, tests.parent)
        for arg in config.args
    )


WARM_UP_TIMEOUT_S = 300.0


def _warm_up(config) -> None:
    import subprocess
    import sys
    import time

    from tests._warm_up import GROUPS

    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    )
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._warm_up", group],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for group in GROUPS
    ]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for group, proc in zip(GROUPS, procs, strict=True):
        try:  # a hang here (MLX's CPU build was seen to wait forever once) must not hang the run
            out, _ = proc.communicate(timeout=max(1.0, WARM_UP_TIMEOUT_S - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += f"\n(stopped after {WARM_UP_TIMEOUT_S:.0f} s)"
        if proc.returncode != 0 and reporter is not None:  # its own tests will say what is wrong
            reporter.write_line(f"warm-up ({group}) failed: {out.strip()[-1500:]}", yellow=True)
    if reporter is not None:
        reporter.write_line(
            f"warm-up (numba kernels, byte code) in {time.perf_counter() - start:.1f} s (tests/_warm_up.py)"
        )


def pytest_collection_modifyitems(config, items):
    """The UI tests first. About 100 of them take 40% of a parallel run (Textual restyling the
    screens); last, where their directory's name put them, the longest of them (10-25 s) could run
    alone at the end while the other worker had nothing left to take. Nothing depends on the order:
    every test sets up what it uses."""
    ui = Path(__file__).resolve().parent / "tui"
    items.sort(key=lambda item: not item.path.is_relative_to(ui))
