"""Shared by the pytest side and the worker processes: the cases, their data, and the reference runs.

The worker (``dist_worker.py``, started by ``mpiexec`` or ``mlx.launch``) and the test
build the same data from the same seeds; the test runs single-process BatchNorm on the
full global batch and compares with what each rank of the SyncBatchNorm run wrote.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dualnorm
import dualnorm.data
from dualnorm import nn

# --- layer parity ------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCase:
    name: str
    layer: str  # "1d", "2d", "3d"
    sample_shape: tuple[int, ...]  # (C, *spatial)
    sizes: tuple[int, int]  # rows of the global batch on rank 0 and rank 1
    kwargs: dict[str, Any] = field(default_factory=dict)
    offset: float = 0.0

    @property
    def batch(self) -> int:
        return sum(self.sizes)


LAYER_CASES = [
    LayerCase("1d_NC_equal", "1d", (3,), (8, 8)),
    LayerCase("1d_NC_unequal", "1d", (3,), (3, 13)),
    LayerCase("1d_NCL_unequal_cumulative", "1d", (4, 5), (5, 11), {"momentum": None}),
    LayerCase("2d_one_sample_rank", "2d", (3, 4, 4), (1, 15)),
    LayerCase("2d_empty_rank_no_affine", "2d", (2, 3, 3), (0, 16), {"affine": False}),
    LayerCase("1d_no_running_stats", "1d", (3,), (6, 10), {"track_running_stats": False}),
    LayerCase("3d_unequal", "3d", (2, 2, 2, 2), (7, 9), {"momentum": 0.3}),
    LayerCase("1d_large_offset", "1d", (3,), (5, 11), {}, offset=1000.0),
]
LAYER_STEPS = 2
EVAL_ROWS = 4


def layer_data(case: LayerCase, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, grad_output) of the global batch at a training step, float32."""
    rng = np.random.default_rng([zlib.crc32(case.name.encode()), step])
    shape = (case.batch, *case.sample_shape)
    scale = rng.uniform(0.5, 3.0, size=(1, case.sample_shape[0]) + (1,) * (len(shape) - 2))
    x = (
        case.offset
        + scale * rng.standard_normal(shape)
        + rng.standard_normal((1, case.sample_shape[0]) + (1,) * (len(shape) - 2))
    )
    g = rng.standard_normal(shape)
    return x.astype(np.float32), g.astype(np.float32)


def eval_input(case: LayerCase) -> np.ndarray:
    rng = np.random.default_rng(99)
    return (case.offset + rng.standard_normal((EVAL_ROWS, *case.sample_shape))).astype(np.float32)


def make_layer(case: LayerCase) -> nn.Module:
    cls = {"1d": nn.BatchNorm1d, "2d": nn.BatchNorm2d, "3d": nn.BatchNorm3d}[case.layer]
    layer = cls(case.sample_shape[0], **case.kwargs)
    if layer.affine:  # not the trivial ones/zeros, so parameter use is tested
        c = case.sample_shape[0]
        layer.load_state_dict(
            {**layer.state_dict(), "weight": np.linspace(0.5, 1.5, c), "bias": np.linspace(-0.2, 0.3, c)}
        )
    return layer


def run_layer(
    layer: nn.Module, case: LayerCase, rows: slice, reduce_grads: Any = None
) -> dict[str, np.ndarray]:
    """Train steps on ``rows`` of each global batch, then an eval forward; everything as NumPy."""
    out: dict[str, np.ndarray] = {}
    for step in range(LAYER_STEPS):
        x, g = layer_data(case, step)
        layer.train()
        layer.zero_grad()
        y = layer(x[rows])
        dx = layer.backward(g[rows])
        if reduce_grads is not None:
            reduce_grads(layer)
        out[f"y{step}"] = dualnorm.to_numpy(y)
        out[f"dx{step}"] = dualnorm.to_numpy(dx)
        if layer.affine:
            out[f"dw{step}"] = dualnorm.to_numpy(layer.weight.grad)
            out[f"db{step}"] = dualnorm.to_numpy(layer.bias.grad)
    for name, value in layer.state_dict().items():
        out[f"state.{name}"] = dualnorm.to_numpy(value)
    layer.eval()
    out["eval"] = dualnorm.to_numpy(layer(eval_input(case)))
    return {k: np.array(v, copy=True) for k, v in out.items()}


# --- data-parallel training ----------------------------------------------------------

TRAIN_STEPS = 8
TRAIN_BATCH = 64
TRAIN_LR = 0.2
TRAIN_RUNS = {  # name: (shard sizes, gradient combination)
    "unequal_scaled_sum": ((20, 44), "scaled_sum"),
    "equal_average": ((32, 32), "average"),
}


def build_mlp() -> nn.Module:
    dualnorm.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def train_batches() -> list[tuple[np.ndarray, np.ndarray]]:
    data = dualnorm.data.load_digits()
    rng = np.random.default_rng(7)
    batches = []
    for _ in range(TRAIN_STEPS):
        idx = rng.choice(len(data.x_train), TRAIN_BATCH, replace=False)
        batches.append((data.x_train[idx].astype(np.float32), data.y_train[idx]))
    return batches


def cross_entropy(logits: Any, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(sum of per-sample losses, d(sum)/d(logits)) computed on the host in float64."""
    z = np.asarray(dualnorm.to_numpy(logits), dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    picked = log_p[np.arange(len(labels)), labels]
    grad = np.exp(log_p)
    grad[np.arange(len(labels)), labels] -= 1.0
    return float(-picked.sum()), grad


def sgd_step(model: nn.Module, lr: float) -> None:
    for p in model.parameters():
        p.data = p.data - lr * p.grad


def train_reference(steps: int = TRAIN_STEPS) -> dict[str, np.ndarray]:
    """Single process, plain BatchNorm, the full global batch every step."""
    model = build_mlp()
    losses = []
    for x, y in train_batches()[:steps]:
        out = model(x)
        loss_sum, grad = cross_entropy(out, y)
        losses.append(loss_sum / len(y))
        model.zero_grad()
        model.backward(model.backend.asarray(grad / len(y), model.dtype))
        sgd_step(model, TRAIN_LR)
    result = {"losses": np.array(losses)}
    result.update({f"state.{k}": np.array(dualnorm.to_numpy(v)) for k, v in model.state_dict().items()})
    return result
