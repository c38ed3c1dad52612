"""MLX through ``mlx.core.distributed``: the engine for the MLX backend.

Launch with MLX's launcher (the ring backend over TCP works on one machine and across hosts)::

    mlx.launch -n 2 train.py                                  # 2 processes on this machine
    mlx.launch --hosts 10.0.0.1,10.0.0.2 -n 4 train.py        # 8 across two hosts (ssh, same paths)

or start the processes yourself with ``MLX_RANK`` and ``MLX_HOSTFILE`` set (see the README).
MPI, NCCL and JACCL backends are used when MLX finds them (``backend="any"``).
Collectives are evaluated immediately (``mx.eval``) so the watchdog can bound them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dualnorm.distributed.group import DistributedError, ProcessGroup, watch_from_outside

__all__ = ["MLXProcessGroup", "mlx_launched"]

_MLX_ENV = ("MLX_RANK", "MLX_HOSTFILE", "MLX_WORLD_SIZE", "MLX_JACCL_COORDINATOR")


def mlx_launched() -> bool:
    """True when this process was started by ``mlx.launch`` (or by hand with MLX's variables)."""
    return any(os.environ.get(name) for name in _MLX_ENV)


class MLXProcessGroup(ProcessGroup):
    """The ranks MLX's distributed backend connects.

    Args:
        backend: ``"any"`` (default: the first that works), ``"ring"``, ``"mpi"``,
            ``"nccl"`` or ``"jaccl"``.
        strict: fail when no distributed backend is configured instead of returning
            a group of size 1. None (default): strict exactly when the process was
            started by ``mlx.launch`` (``MLX_RANK`` / ``MLX_HOSTFILE`` are set), so a
            mis-launched run cannot silently train alone.
        timeout: seconds one collective may take (None: no watchdog).
        connect_timeout: seconds ``mx.distributed.init`` may take to connect the ranks.
    """

    engine = "mlx"

    def __init__(
        self,
        backend: str = "any",
        *,
        strict: bool | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        try:
            import mlx.core as mx
        except Exception as exc:
            raise DistributedError(
                f"the MLX engine needs MLX ({type(exc).__name__}: {exc}); install it with "
                'pip install "dualnorm[mlx]"'
            ) from None
        self._mx = mx
        strict = mlx_launched() if strict is None else strict
        hostfile = os.environ.get("MLX_HOSTFILE", "")
        message = (
            f"dualnorm.distributed: rank {os.environ.get('MLX_RANK', '?')} could not connect to the other "
            f"ranks within {connect_timeout} s (mx.distributed.init(backend={backend!r}), hostfile "
            f"{hostfile or 'none'}): a peer never started, died, or its address/port is unreachable. "
            "Terminating this process. Start every rank with mlx.launch, check the hosts' IPs and the "
            "ports (mlx.launch --starting-port), or raise DUALNORM_DIST_CONNECT_TIMEOUT."
        )
        with watch_from_outside(connect_timeout, message):
            try:
                self._group = mx.distributed.init(strict=strict, backend=backend)
            except Exception as exc:
                raise DistributedError(
                    f"mx.distributed.init(backend={backend!r}, strict={strict}) failed: {exc}. "
                    "Launch with mlx.launch (ring backend), or set MLX_RANK and MLX_HOSTFILE."
                ) from None
        cuda = getattr(mx, "cuda", None)
        # ring/MPI collectives run on the CPU (unified memory on Apple silicon); NCCL on the GPU.
        self._stream = None if (cuda is not None and cuda.is_available()) else mx.cpu
        super().__init__(self._group.rank(), self._group.size(), timeout)

    def _lost_peer_hint(self) -> str:
        return (
            "another rank probably died or stalled (mlx.launch then stops the rest); look for its error above"
        )

    def _native(self, array: Any) -> Any:
        mx = self._mx
        if isinstance(array, mx.array):
            return array
        host = np.asarray(array)
        return mx.array(host, dtype=_mlx_dtype(mx, host.dtype))

    def _back(self, result: Any, template: Any) -> Any:
        if isinstance(template, self._mx.array):
            return result
        return np.array(result, copy=True)

    def _allreduce_sum(self, array: Any) -> Any:
        mx = self._mx
        native = self._native(array)
        out = mx.distributed.all_sum(native, group=self._group, stream=self._stream)
        mx.eval(out)
        return self._back(out, array)

    def _allgather(self, array: Any) -> Any:
        mx = self._mx
        native = self._native(array)
        shape = tuple(native.shape)
        flat = native.reshape((1, native.size))
        out = mx.distributed.all_gather(flat, group=self._group, stream=self._stream)
        out = out.reshape((self.size, *shape))
        mx.eval(out)
        return self._back(out, array)


def _mlx_dtype(mx: Any, dtype: np.dtype) -> Any:
    table = {
        "float32": mx.float32,
        "float64": mx.float64,
        "float16": mx.float16,
        "int32": mx.int32,
        "int64": mx.int64,
        "uint8": mx.uint8,
    }
    if dtype.name not in table:
        raise DistributedError(f"the MLX engine cannot communicate {dtype} arrays; use float32 or float64")
    return table[dtype.name]
