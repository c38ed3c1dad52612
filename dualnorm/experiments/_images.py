"""Helpers of the image experiments (simple-cnn, small-batch): shuffled epochs, chunked accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from dualnorm.backends import Backend


def epoch_batches(
    backend: Backend,
    x_host: np.ndarray,
    y_host: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    *,
    drop_last: bool = False,
):
    """``batch(step)``: shuffled epochs, as a ``DataLoader(shuffle=True)``; a new permutation per epoch.

    Steps are 1-based; epoch ``e`` covers steps ``(e-1)*spe + 1 .. e*spe`` with
    ``spe = steps_per_epoch(len(x_host), batch_size, drop_last)``. The last batch of an epoch is
    smaller unless ``drop_last``. The whole set lives on the backend once.
    """
    x_all = backend.asarray(x_host, backend.float32)
    y_all = backend.asarray(y_host, backend.int64)
    n = len(x_host)
    spe = steps_per_epoch(n, batch_size, drop_last)
    order: dict[str, Any] = {"epoch": 0, "perm": None}

    def batch(step: int) -> tuple[Any, Any]:
        epoch, within = divmod(step - 1, spe)
        if order["epoch"] != epoch + 1 or order["perm"] is None:
            order["epoch"], order["perm"] = epoch + 1, rng.permutation(n)
        idx = order["perm"][within * batch_size : (within + 1) * batch_size]
        rows = backend.indices(idx)
        return x_all[rows], y_all[rows]

    return batch


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    return max(1, n // batch_size if drop_last else -(-n // batch_size))


def chunked_logits(backend: Backend, model: Any, x_host: np.ndarray, chunk: int) -> np.ndarray:
    """The model's outputs for ``x_host`` in chunks of ``chunk`` images (bounded memory)."""
    out = []
    for start in range(0, len(x_host), chunk):
        part = backend.asarray(x_host[start : start + chunk], backend.float32)
        with np.errstate(all="ignore"):
            out.append(np.asarray(backend.to_numpy(model(part))))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def accuracy(
    backend: Backend,
    model: Any,
    x_host: np.ndarray,
    labels: np.ndarray,
    *,
    chunk: int,
    train_mode: bool = False,
) -> float:
    """Accuracy in eval mode (running statistics), or in train mode with batches of ``chunk`` images.

    Train mode normalizes every chunk by its own statistics, as training did with batches of that
    size; the running statistics are saved and put back, so the evaluation leaves no trace. Only
    whole chunks are used in train mode (batch norm refuses a batch of one).
    """
    if train_mode:
        usable = len(x_host) - len(x_host) % chunk
        x_host, labels = x_host[:usable], labels[:usable]
        saved = [(m, dict(m._buffers)) for _, m in model.named_modules() if m._buffers]
        model.train()
        try:
            logits = chunked_logits(backend, model, x_host, chunk)
        finally:
            for module, buffers in saved:
                module._buffers.update(buffers)
    else:
        model.eval()
        try:
            logits = chunked_logits(backend, model, x_host, chunk)
        finally:
            model.train()
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(logits, axis=1) == labels))
