"""Data-parallel training: every rank takes its shard of each global batch; gradients are combined.

The recipe, exact also when ranks hold shards of different sizes::

    import dualnorm.distributed as dist
    from dualnorm import nn

    group = dist.init_process_group()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build_model())
    dist.broadcast_parameters(model)                 # every rank starts from rank 0's weights
    for x, y in global_batches:                      # the same global batches on every rank
        xs, ys = dist.shard((x, y))                  # this rank's rows
        n = dist.global_count(len(xs))
        out = model(xs)
        loss_local, grad = mean_loss_and_grad(out, ys)   # gradient of the *local mean* loss
        model.zero_grad()
        model.backward(grad * (len(xs) / n))         # weight each shard by its share of the batch
        dist.allreduce_gradients(model, average=False)   # sum: the gradient of the global mean loss
        sgd_step(model)                              # identical on every rank

With equal shards, ``model.backward(grad)`` followed by ``allreduce_gradients(model)``
(the default ``average=True``, as PyTorch's DistributedDataParallel does) is the same
thing. ``check_parameters_equal(model)`` verifies that the ranks have not drifted apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dualnorm.backends import backend_of
from dualnorm.distributed.group import DistributedError, ProcessGroup

__all__ = [
    "allreduce_gradients",
    "broadcast_parameters",
    "check_parameters_equal",
    "global_count",
    "shard",
    "shard_sizes",
    "shard_slice",
]


def _group(group: ProcessGroup | None) -> ProcessGroup:
    if group is not None:
        return group
    from dualnorm.distributed import get_default_group

    return get_default_group()


def shard_sizes(total: int, world_size: int, sizes: Sequence[int] | None = None) -> list[int]:
    """How many of ``total`` rows each rank takes: near-equal (the first ``total % size`` ranks get
    one more, as ``numpy.array_split``), or ``sizes`` (one per rank, summing to ``total``)."""
    total = int(total)
    if sizes is None:
        base, extra = divmod(total, world_size)
        return [base + (1 if r < extra else 0) for r in range(world_size)]
    sizes = [int(s) for s in sizes]
    if len(sizes) != world_size or any(s < 0 for s in sizes) or sum(sizes) != total:
        raise DistributedError(
            f"shard sizes {sizes} must be {world_size} non-negative integers (one per rank) summing to "
            f"the batch size {total}"
        )
    return sizes


def shard_slice(total: int, group: ProcessGroup | None = None, sizes: Sequence[int] | None = None) -> slice:
    """The rows ``start:stop`` of a batch of ``total`` rows that belong to this rank."""
    g = _group(group)
    counts = shard_sizes(total, g.size, sizes)
    start = sum(counts[: g.rank])
    return slice(start, start + counts[g.rank])


def shard(batch: Any, group: ProcessGroup | None = None, sizes: Sequence[int] | None = None) -> Any:
    """This rank's rows of ``batch`` (an array, or a tuple/list of arrays with the same first dimension)."""
    if isinstance(batch, (tuple, list)):
        lengths = {len(item) for item in batch}
        if len(lengths) != 1:
            raise DistributedError(f"shard: the arrays have different first dimensions {sorted(lengths)}")
        rows = shard_slice(lengths.pop(), group, sizes)
        return type(batch)(item[rows] for item in batch)
    return batch[shard_slice(len(batch), group, sizes)]


def global_count(n_local: int, group: ProcessGroup | None = None) -> int:
    """The sum of ``n_local`` over every rank (e.g. the global batch size)."""
    total = _group(group).allreduce_sum(np.array([float(n_local)], dtype=np.float64))
    return round(float(np.asarray(total).reshape(-1)[0]))


def _parameters(module_or_params: Any) -> list[Any]:
    if hasattr(module_or_params, "parameters"):
        return list(module_or_params.parameters())
    return list(module_or_params)


def allreduce_gradients(
    module_or_params: Any, group: ProcessGroup | None = None, *, average: bool = True
) -> None:
    """Sum (or, with ``average=True``, average) every parameter's ``grad`` over the group, in place.

    All gradients travel in one flat buffer (one collective). A parameter whose ``grad``
    is None counts as a zero gradient (and gets one), so every rank sends the same layout.
    """
    g = _group(group)
    params = _parameters(module_or_params)
    if g.size == 1 or not params:
        return
    xp = backend_of(params[0].data).xp
    flat = [
        (p.grad if p.grad is not None else xp.zeros(p.data.shape, dtype=p.data.dtype)).reshape(-1)
        for p in params
    ]
    total = g.allreduce_sum(xp.concatenate(flat))
    if average:
        total = total / g.size
    offset = 0
    for p in params:
        size = int(np.prod(p.data.shape))
        p.grad = total[offset : offset + size].reshape(p.data.shape).astype(p.data.dtype)
        offset += size


def _state_slots(module: Any, buffers: bool) -> list[tuple[str, Any, Any]]:
    """(name, getter, setter) for every parameter (and buffer) of a module, in a fixed order."""
    slots: list[tuple[str, Any, Any]] = []
    for name, param in module.named_parameters():
        slots.append((name, (lambda p=param: p.data), (lambda v, p=param: setattr(p, "data", v))))
    if buffers and hasattr(module, "_buffer_slots"):
        for name, owner, leaf in module._buffer_slots():
            slots.append(
                (
                    name,
                    (lambda o=owner, k=leaf: o._buffers[k]),
                    (lambda v, o=owner, k=leaf: o._buffers.__setitem__(k, v)),
                )
            )
    return slots


def broadcast_parameters(
    module: Any, group: ProcessGroup | None = None, *, root: int = 0, buffers: bool = True
) -> None:
    """Overwrite every rank's parameters (and buffers) with ``root``'s, bit for bit."""
    g = _group(group)
    if g.size == 1:
        return
    for _name, get, put in _state_slots(module, buffers):
        value = get()
        put(g.broadcast(value, root).astype(value.dtype))


def check_parameters_equal(module: Any, group: ProcessGroup | None = None, *, buffers: bool = True) -> None:
    """Raise :class:`DistributedError` unless every rank holds bit-identical parameters (and buffers).

    Gathers each array from every rank (memory: ``size`` copies of the model, once).
    """
    g = _group(group)
    if g.size == 1:
        return
    for name, get, _put in _state_slots(module, buffers):
        mine = np.asarray(_host(get()))
        gathered = np.asarray(_host(g.allgather(get())))
        for rank in range(g.size):
            if not np.array_equal(gathered[rank], mine, equal_nan=mine.dtype.kind == "f"):
                diff = np.max(np.abs(gathered[rank].astype(np.float64) - mine.astype(np.float64)))
                raise DistributedError(
                    f"rank {g.rank}: {name!r} differs from rank {rank}'s copy (max abs difference "
                    f"{diff:.3g}); the ranks have drifted apart. Start from broadcast_parameters(model) "
                    "and combine gradients with allreduce_gradients(model) before every step."
                )


def _host(array: Any) -> np.ndarray:
    from dualnorm.backends import to_numpy

    return to_numpy(array)
