"""Done once before a parallel run of the whole suite (conftest.py), in three processes at once.

numba's kernels: with a cold cache (a fresh CI machine) every kernel compiled at its first use, in
whichever xdist worker or command-line subprocess got there first, and in each one that got there
before the first had written the cache (the early CLI tests' subprocesses all did). Two processes
here split the kernels (about equal compile time each) and reach them through the public layers,
at a size that takes the serial kernels and one that takes the threaded ones.

Byte code: dev.py installs without byte-compiling (Python compiles what is imported, a fraction of
torch's files); the first import of torch, MLX and Textual then compiled them in every process
that imported them at the same time (both workers, the first tests' subprocesses). One process
here imports them first and writes the byte code they all load.

Nothing here asserts anything: what fails here fails again, with its message, in its own tests."""

from __future__ import annotations

import sys

import numpy as np


def _numba_kernels(layers) -> None:
    import dualnorm
    from dualnorm.backends import kernels_numba

    if not kernels_numba.available():
        return
    dualnorm.set_backend("numpy")
    kernels_numba.warm_up()  # from here on small layers take numba's kernels too, as in a run
    rng = np.random.default_rng(0)
    for make, *shapes in layers:
        for shape in shapes:
            x = rng.standard_normal(shape).astype(np.float32)
            layer = make()
            for training in (True, False):
                layer.train(training)
                layer(x)
                layer.backward(np.ones_like(x))


def batch_norm_2d_and_rows() -> None:
    from dualnorm import nn

    _numba_kernels(
        [  # (layer, a small input: the serial kernels, a large one: the threaded kernels)
            (lambda: nn.BatchNorm2d(32), (8, 32, 8, 8), (16, 32, 32, 32)),
            (lambda: nn.LayerNorm(512), (16, 512), (1024, 512)),
            (lambda: nn.RMSNorm(512), (16, 512), (1024, 512)),
        ]
    )


def batch_norm_1d_and_groups() -> None:
    from dualnorm import nn

    _numba_kernels(
        [
            (lambda: nn.BatchNorm1d(512), (16, 512), (1024, 512)),
            (lambda: nn.GroupNorm(4, 32), (8, 32, 8, 8), (16, 32, 32, 32)),
        ]
    )


def imports() -> None:
    import importlib
    import importlib.util

    for name in ("dualnorm.cli", "dualnorm.experiments", "dualnorm.bench_cnn", "hypothesis", "safetensors"):
        importlib.import_module(name)
    if importlib.util.find_spec("textual") is not None:
        for name in ("textual.app", "textual.widgets", "textual_plot", "tui.app"):
            importlib.import_module(name)
    if importlib.util.find_spec("mlx") is not None:
        import mlx.core as mx
        import mlx.nn
        import mlx.optimizers  # noqa: F401

        mx.eval(mx.ones((2, 2)) @ mx.ones((2, 2)))
    if importlib.util.find_spec("torch") is not None:
        import torch

        # a training step imports what the parity tests and the benchmarks' torch side import later
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.LocalResponseNorm(2),
            torch.nn.GroupNorm(2, 4), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
            torch.nn.Linear(4 * 4 * 4, 10),
        )  # fmt: skip
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = torch.nn.functional.cross_entropy(model(torch.ones(2, 3, 8, 8)), torch.tensor([1, 2]))
        loss.backward()
        optimizer.step()


GROUPS = {f.__name__: f for f in (batch_norm_2d_and_rows, batch_norm_1d_and_groups, imports)}

if __name__ == "__main__":
    GROUPS[sys.argv[1]]()
