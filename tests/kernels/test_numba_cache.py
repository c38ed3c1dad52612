"""The serial and parallel compiles of one numba kernel keep separate on-disk cache entries.

numba keys a cached entry by the function's name and signature, not by ``parallel=``: with one
Python function behind both variants, whichever compiled first was loaded for both, so a
process that ran a small layer first (the serial kernel) ran its large layers on one thread.
Each process below starts from an empty ``NUMBA_CACHE_DIR``-to-be-filled, as a new user does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualnorm.backends import kernels_numba

pytestmark = pytest.mark.skipif(not kernels_numba.available(), reason="numba is not installed")

ROOT = Path(__file__).resolve().parents[2]

# Compiles (or loads) variants of bne_forward2 (the smallest kernel) in the order given, runs each,
# and prints for each whether the code behind the dispatcher has a parallel region: a parfor's
# gufunc in the object code of the entry it compiled or loaded. Not timing: what was compiled.
# The on-disk cache is what is shared: a variant compiled earlier in the same process is found
# there exactly as one compiled by an earlier process.
_PROBE = """
import glob, json, os, sys
import numpy as np
from dualnorm.backends import kernels_numba as K

numba = K._import_numba()
for name in sys.argv[1:]:
    nt = 1 if name.endswith(":serial") else 2
    numba.set_num_threads(min(nt, numba.config.NUMBA_NUM_THREADS))
    x = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    c = np.ones(8, np.float32)
    y = np.empty_like(x)
    fn = K._kernel(name)
    fn(x, c - 1, c, c, nt, y)
    assert np.array_equal(y, x + 1)
    cache = fn._cache._cache_file
    base = os.path.splitext(cache._index_path)[0]
    code = b"".join(open(p, "rb").read() for p in glob.glob(base + ".*.nbc"))
    print(json.dumps({
        "parallel_option": bool(fn.targetoptions.get("parallel")),
        "cache_hit": bool(fn.stats.cache_hits),
        "has_parfor": b"parfor_gufunc" in code,
        "index": os.path.basename(cache._index_path),
    }))
"""


def _probe(names: list[str], cache: Path) -> list[dict]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2")
    env.pop("DUALNORM_KERNELS", None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *names], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-len(names) :]]


def test_serial_compiled_first_does_not_stand_in_for_the_parallel_kernel(tmp_path):
    serial, parallel = _probe(["bne_forward2:serial", "bne_forward2"], tmp_path)
    assert not serial["parallel_option"] and not serial["cache_hit"] and not serial["has_parfor"]
    assert parallel["parallel_option"]
    assert not parallel["cache_hit"], "the parallel kernel was loaded from the serial kernel's cache entry"
    assert parallel["has_parfor"]
    assert parallel["index"] != serial["index"]
    # A later process loads each variant from its own entry.
    again, serial_again = _probe(["bne_forward2", "bne_forward2:serial"], tmp_path)
    assert again["cache_hit"] and again["has_parfor"]
    assert serial_again["cache_hit"] and not serial_again["has_parfor"]
