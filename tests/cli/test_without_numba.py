"""dualnorm on a machine without numba (it is an optional extra): a process in which ``import numba``
fails imports dualnorm, takes the NumPy kernels, and runs the layers and the `run` command.

CI also runs tests/core's layer tests on NumPy with numba blocked (.ci/run); this test is the part
every `python3 dev.py test` runs, in one process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.modules["numba"] = None  # as if numba were not installed: `import numba` raises ImportError

import numpy as np

import dualnorm
from dualnorm import nn
from dualnorm.backends import kernels_numba, kernels_numpy
from dualnorm.cli import main

assert not kernels_numba.available()
dualnorm.set_backend("numpy")
B = dualnorm.get_backend()
assert B.kernels["batch_norm_train"] is kernels_numpy.batch_norm_train, B.kernels["batch_norm_train"]
assert not B.warm_ups  # nothing to load in the background
B.start_warm_up()
B.warm_up()

# Sizes from which numba's kernels would take over (MIN_ELEMENTS): the NumPy kernels instead, and
# the same numbers as the reference math (no kernels at all).
rng = np.random.default_rng(0)
x = (rng.standard_normal((8, 16, 32, 32)) * 3 + 5).astype(np.float32)
assert x.size >= kernels_numba.MIN_ELEMENTS
g = rng.standard_normal(x.shape).astype(np.float32)
for make in (lambda: nn.BatchNorm2d(16), lambda: nn.GroupNorm(4, 16), lambda: nn.LayerNorm([32, 32])):
    results = []
    for kernels in (dict(B.kernels), {}):
        saved, B.kernels = B.kernels, kernels
        try:
            dualnorm.manual_seed(0)
            layer = make()
            y = dualnorm.to_numpy(layer(x))
            dx = dualnorm.to_numpy(layer.backward(g))
        finally:
            B.kernels = saved
        results.append((y, dx))
    (y, dx), (y_ref, dx_ref) = results
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4, err_msg=type(layer).__name__)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-3, atol=1e-4, err_msg=type(layer).__name__)

sys.exit(main(["run", "dying-relu", "--steps", "3", "--quiet", "--backend", "numpy"]))
"""


def test_dualnorm_without_numba_imports_takes_the_numpy_kernels_and_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DUALNORM_KERNELS"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final loss" in done.stdout, done.stdout[-2000:]
    assert "numba" not in done.stderr.lower(), done.stderr[-2000:]  # no compile notice, no warning
