"""End to end: the documents' experiments on each dualnorm backend vs the same loops in PyTorch.

The PyTorch loops mirror the experiments exactly (model, init, data, batches, loss,
optimizer, steps, one ``loss.item()`` per step, and for init-sweep the per-epoch
accuracy on the 1 000 training images with batch statistics).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import dualnorm
from benchmarks.layers import kernel_tables
from dualnorm.experiments import RunConfig, get_experiment

NEVER = 10**9  # record_every: only the first and last steps are recorded


def run_dualnorm(
    name: str, backend: str, steps: int | None, record_every: int | None, **kw: Any
) -> dict[str, float]:
    """Run experiment ``name`` to the end: total seconds, and the loop's own split of them
    (``record_s``: per-layer statistics, ``eval_s``: accuracy, ``train_s``: the rest)."""
    exp = get_experiment(name)
    config = RunConfig(backend=backend, steps=steps, record_every=record_every, **kw)
    last: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for record in exp.run(config):
        last[record.variant] = record.extra
    total = time.perf_counter() - t0
    split = {k: sum(float(e.get(k, 0.0)) for e in last.values()) for k in ("record_s", "eval_s", "train_s")}
    return {"s": total, **split}


# --- dying-relu in PyTorch -------------------------------------------------------------------


def torch_dying_relu(steps: int) -> float:
    import torch

    from dualnorm.experiments.dying_relu import INITIAL_WEIGHT, dataset

    x_host, y_host = dataset()
    x, y = torch.from_numpy(x_host), torch.from_numpy(y_host)
    t0 = time.perf_counter()
    for variant in ("plain", "batchnorm"):
        torch.manual_seed(0)
        linear = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            linear.weight.fill_(INITIAL_WEIGHT)
        layers = [linear, torch.nn.BatchNorm1d(1), torch.nn.ReLU()] if variant == "batchnorm" else [linear]
        model = torch.nn.Sequential(*layers, *([] if variant == "batchnorm" else [torch.nn.ReLU()]))
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.MSELoss()
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            loss.item()
    return time.perf_counter() - t0


# --- init-sweep in PyTorch -------------------------------------------------------------------


def torch_init_sweep(scale_indices: list[int], steps: int) -> float:
    import torch

    from dualnorm.experiments._common import dataset_from, seed_everything
    from dualnorm.experiments.init_sweep import (
        BATCH_SIZE,
        BN_EPS,
        HIDDEN,
        ITERS_PER_EPOCH,
        SCALES,
        TRAIN_SIZE,
    )

    data = dataset_from(RunConfig())
    x_all = torch.from_numpy(np.ascontiguousarray(data.x_train[:TRAIN_SIZE], dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(data.y_train[:TRAIN_SIZE], dtype=np.int64))
    labels = y_all.numpy()
    t0 = time.perf_counter()
    for index in scale_indices:
        for norm in ("batchnorm", "plain"):
            rng = seed_everything(0, index)
            layers: list[Any] = []
            prev = data.input_dim
            for h in HIDDEN:
                lin = torch.nn.Linear(prev, h)
                with torch.no_grad():
                    lin.weight.normal_(0.0, SCALES[index])
                    lin.bias.zero_()
                layers.append(lin)
                if norm == "batchnorm":
                    layers.append(torch.nn.BatchNorm1d(h, eps=BN_EPS))
                layers.append(torch.nn.ReLU())
                prev = h
            out = torch.nn.Linear(prev, data.num_classes)
            with torch.no_grad():
                out.weight.normal_(0.0, SCALES[index])
                out.bias.zero_()
            model = torch.nn.Sequential(*layers, out)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            loss_fn = torch.nn.CrossEntropyLoss()
            for step in range(1, steps + 1):
                idx = torch.from_numpy(rng.integers(0, TRAIN_SIZE, BATCH_SIZE))
                xb, yb = x_all[idx], y_all[idx]
                opt.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                loss.item()
                if step % ITERS_PER_EPOCH == 0 or step == steps:
                    # accuracy with the evaluated batch's own statistics, running stats untouched
                    saved = {
                        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_b" in k
                    }
                    with torch.no_grad():
                        logits = model(x_all)
                    model.load_state_dict(saved, strict=False)
                    float(np.mean(np.argmax(logits.numpy(), axis=1) == labels))
    return time.perf_counter() - t0


@contextlib.contextmanager
def kernels_installed(backend: str, table: dict[str, Any] | None) -> Iterator[None]:
    """Run with ``table`` as the backend's kernels (None: as installed)."""
    if table is None:
        yield
        return
    B = dualnorm.get_backend(backend)
    saved = B.kernels
    B.kernels = table
    try:
        yield
    finally:
        B.kernels = saved


# --- all together ----------------------------------------------------------------------------


def run(
    quick: bool, progress: Callable[[str], None] = print, backends: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows: {experiment, setup, implementation, seconds}; ``backends``: those available, or these."""
    from dualnorm.experiments.init_sweep import SCALES, variant_name

    try:
        import torch  # noqa: F401

        has_torch = True
    except ImportError:
        has_torch = False
    backends = backends or dualnorm.available_backends()
    rows: list[dict[str, Any]] = []
    relu_steps = 500 if quick else 10_000
    sweep_idx = [0, 15] if quick else list(range(len(SCALES)))
    sweep_variants = tuple(variant_name(i, n) for i in sweep_idx for n in ("batchnorm", "plain"))
    setups = {
        "dying-relu": (f"{relu_steps} full-batch epochs x 2 variants", relu_steps, None),
        "init-sweep": (f"{len(sweep_idx)} scales x 2 variants x 200 steps", None, sweep_variants),
    }
    for name, (setup, steps, variants) in setups.items():
        runs = [(b, f"dualnorm-{b}", None) for b in backends if b != "numpy"]
        if "numpy" in backends:
            runs = [("numpy", impl, table) for impl, table in kernel_tables().items()] + runs
        for b, impl, table in runs:
            for label, every in (("record default", None), ("record never", NEVER)):
                progress(f"e2e: {name} as {impl} ({label})")
                with kernels_installed(b, table):
                    res = run_dualnorm(name, b, steps, every, variants=variants)
                rows.append({"experiment": name, "setup": setup, "impl": f"{impl} ({label})", **res})
        if has_torch:
            progress(f"e2e: {name} in PyTorch")
            secs = torch_dying_relu(relu_steps) if name == "dying-relu" else torch_init_sweep(sweep_idx, 200)
            rows.append({"experiment": name, "setup": setup, "impl": "torch", "s": secs})
    return rows
