"""Process groups for synchronized batch norm and data-parallel training.

One call at the top of a training script picks the engine from how the script was
launched, and every :class:`~dualnorm.nn.SyncBatchNorm` and data-parallel helper uses
that group from then on::

    import dualnorm.distributed as dist

    group = dist.init_process_group()   # "auto": mlx.launch -> MLX, mpiexec -> MPI, else one process
    print(group.rank, group.size)

Engines (no transport of dualnorm's own):

* ``"mlx"``: ``mlx.core.distributed`` (ring over TCP, MPI, NCCL, JACCL), launched with ``mlx.launch``;
* ``"mpi"``: MPI through ``mpi4py`` (``pip install mpi4py mpich``), launched with ``mpiexec``;
* ``"single"``: one process; every collective is the identity, so the same script runs anywhere.

Without ``init_process_group`` the default group is the single-process group, and
``SyncBatchNorm`` behaves exactly like ``BatchNorm``.
"""

from __future__ import annotations

import os

from dualnorm.distributed.group import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    WATCHDOG_EXIT_CODE,
    DistributedError,
    ProcessGroup,
    SingleProcessGroup,
    timeout_from_env,
)
from dualnorm.distributed.mlx_group import MLXProcessGroup, mlx_launched
from dualnorm.distributed.mpi_group import MPIProcessGroup, mpi_available
from dualnorm.distributed.parallel import (
    allreduce_gradients,
    broadcast_parameters,
    check_parameters_equal,
    global_count,
    shard,
    shard_sizes,
    shard_slice,
)
from dualnorm.distributed.stats import chan_merge, merge_moments

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "ENGINES",
    "WATCHDOG_EXIT_CODE",
    "DistributedError",
    "MLXProcessGroup",
    "MPIProcessGroup",
    "ProcessGroup",
    "SingleProcessGroup",
    "allreduce_gradients",
    "broadcast_parameters",
    "chan_merge",
    "check_parameters_equal",
    "destroy_process_group",
    "detect_engine",
    "get_default_group",
    "global_count",
    "init_process_group",
    "is_initialized",
    "merge_moments",
    "mlx_launched",
    "mpi_available",
    "shard",
    "shard_sizes",
    "shard_slice",
]

ENGINES = ("auto", "single", "mpi", "mlx")
ENGINE_ENV = "DUALNORM_DIST_ENGINE"
_MPI_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD")

_default: ProcessGroup | None = None


def detect_engine() -> str:
    """The engine that launched this process: "mlx" (mlx.launch), "mpi" (mpiexec) or "single"."""
    chosen = os.environ.get(ENGINE_ENV, "").strip().lower()
    if chosen and chosen != "auto":
        if chosen not in ENGINES:
            raise DistributedError(f"{ENGINE_ENV}={chosen!r}: choose one of {', '.join(ENGINES)}")
        return chosen
    if mlx_launched():
        return "mlx"
    if any(os.environ.get(name) for name in _MPI_ENV):
        return "mpi"
    return "single"


def init_process_group(
    engine: str = "auto",
    *,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    mlx_backend: str = "any",
) -> ProcessGroup:
    """Connect this process to the others and make the group the default one.

    Args:
        engine: "auto" (from the launcher's environment, or ``DUALNORM_DIST_ENGINE``),
            "mlx", "mpi" or "single".
        timeout: seconds one collective may take before the watchdog ends the process
            (default ``DUALNORM_DIST_TIMEOUT`` or 600).
        connect_timeout: seconds the ranks may take to connect (default
            ``DUALNORM_DIST_CONNECT_TIMEOUT`` or 120).
        mlx_backend: MLX's distributed backend ("any", "ring", "mpi", "nccl", "jaccl").

    Calling it again returns the existing group.
    """
    global _default
    if _default is not None:
        return _default
    name = str(engine).strip().lower()
    if name not in ENGINES:
        raise DistributedError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if name == "auto":
        name = detect_engine()
    if timeout is None:
        timeout = timeout_from_env("DUALNORM_DIST_TIMEOUT", DEFAULT_TIMEOUT)
    if connect_timeout is None:
        connect_timeout = timeout_from_env("DUALNORM_DIST_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
    group: ProcessGroup
    if name == "mlx":
        group = MLXProcessGroup(mlx_backend, timeout=timeout, connect_timeout=connect_timeout)
    elif name == "mpi":
        group = MPIProcessGroup(timeout=timeout, connect_timeout=connect_timeout)
    else:
        group = SingleProcessGroup()
    _default = group
    return group


def is_initialized() -> bool:
    return _default is not None


def get_default_group() -> ProcessGroup:
    """The group made by :func:`init_process_group`, or the single-process group."""
    return _default if _default is not None else _SINGLE


def destroy_process_group() -> None:
    """Forget the default group (the engine stays initialized; MPI finalizes at exit)."""
    global _default
    _default = None


_SINGLE = SingleProcessGroup()
