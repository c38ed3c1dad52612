"""Compile numba's kernels into its on-disk cache before a parallel run of the suite (conftest.py).

With a cold cache (a fresh CI machine) every kernel compiled at its first use: in whichever xdist
worker or command-line subprocess got there first, and in each of them that got there before the
first had written the cache (the early CLI tests' subprocesses all did). Two processes started
here split the kernels (``GROUPS``, about equal compile time each) and reach them through the
public layers, at a size that takes the serial kernels and one that takes the threaded ones;
the test processes then load every kernel from the cache. Nothing here asserts anything: a kernel
that fails to compile fails in its own tests."""

from __future__ import annotations

import sys

import numpy as np

from dualnorm import nn

# (layer, a small input: the serial kernels, a large one: the threaded kernels where there are
# several cores), train and eval, forward and backward. About 25 s of compiling per group.
GROUPS = {
    "batch_norm_2d_and_rows": [
        (lambda: nn.BatchNorm2d(32), (8, 32, 8, 8), (16, 32, 32, 32)),
        (lambda: nn.LayerNorm(512), (16, 512), (1024, 512)),
        (lambda: nn.RMSNorm(512), (16, 512), (1024, 512)),
    ],
    "batch_norm_1d_and_groups": [
        (lambda: nn.BatchNorm1d(512), (16, 512), (1024, 512)),
        (lambda: nn.GroupNorm(4, 32), (8, 32, 8, 8), (16, 32, 32, 32)),
    ],
}


def warm(group: str) -> None:
    import dualnorm
    from dualnorm.backends import kernels_numba

    if not kernels_numba.available():
        return
    dualnorm.set_backend("numpy")
    kernels_numba.warm_up()  # from here on small layers take numba's kernels too, as in a run
    rng = np.random.default_rng(0)
    for make, *shapes in GROUPS[group]:
        for shape in shapes:
            x = rng.standard_normal(shape).astype(np.float32)
            layer = make()
            for training in (True, False):
                layer.train(training)
                layer(x)
                layer.backward(np.ones_like(x))


if __name__ == "__main__":
    warm(sys.argv[1])
