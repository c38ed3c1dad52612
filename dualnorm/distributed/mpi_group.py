"""MPI through ``mpi4py``: the engine for the NumPy backend (any MPI; ``pip install mpi4py mpich`` works).

Launch with the MPI's own launcher::

    mpiexec -n 2 python train.py                          # 2 processes on this machine
    mpiexec -n 8 -hosts node1,node2 python train.py       # 8 across hosts (ssh, same paths)

NumPy arrays go straight into MPI's buffers; MLX arrays are copied through NumPy.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from dualnorm.backends import backend_of
from dualnorm.distributed.group import DistributedError, ProcessGroup, watch_from_outside

__all__ = ["MPIProcessGroup", "mpi_available"]

_INSTALL = 'pip install "mpi4py>=4" mpich   (or: pip install "dualnorm[distributed]")'


def mpi_available() -> bool:
    """True when ``mpi4py`` can be imported (without initializing MPI)."""
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


class MPIProcessGroup(ProcessGroup):
    """The ranks of an MPI communicator (``MPI.COMM_WORLD`` unless ``comm`` is given).

    Args:
        comm: an ``mpi4py`` communicator; None for ``COMM_WORLD``.
        timeout: seconds one collective may take (None: no watchdog).
        connect_timeout: seconds ``MPI_Init`` may take.
        abort_on_exception: when a rank ends with an uncaught exception, call
            ``MPI_Abort`` so ``mpiexec`` stops the other ranks at once (what
            ``python -m mpi4py`` does) instead of leaving them waiting.
    """

    engine = "mpi"

    def __init__(
        self,
        comm: Any = None,
        *,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        abort_on_exception: bool = True,
    ) -> None:
        if not mpi_available():
            raise DistributedError(
                f"the MPI engine needs mpi4py, which is not installed. Install it with: {_INSTALL}"
            )
        message = (
            f"dualnorm.distributed: MPI_Init did not finish within {connect_timeout} s; the MPI launcher "
            "(mpiexec) is unreachable or the other ranks never started. Terminating this process."
        )
        with watch_from_outside(connect_timeout, message):
            try:
                from mpi4py import MPI
            except Exception as exc:  # e.g. mpi4py built for an MPI library that is not installed
                raise DistributedError(
                    f"mpi4py is installed but MPI could not be loaded ({type(exc).__name__}: {exc}). "
                    f"Install an MPI library: {_INSTALL}"
                ) from None
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(self.comm.Get_rank(), self.comm.Get_size(), timeout)
        if abort_on_exception and self.size > 1:
            _install_abort_hook(self.comm)

    def _lost_peer_hint(self) -> str:
        return (
            "another rank probably died, stalled or called a different collective; look for its error above"
        )

    def _allreduce_sum(self, array: Any) -> Any:
        host = np.ascontiguousarray(_to_host(array))
        out = np.empty_like(host)
        self.comm.Allreduce(host, out, op=self._MPI.SUM)
        return _like(out, array)

    def _allgather(self, array: Any) -> Any:
        host = np.ascontiguousarray(_to_host(array))
        out = np.empty((self.size, *host.shape), dtype=host.dtype)
        self.comm.Allgather(host, out)
        return _like(out, array)


def _to_host(array: Any) -> np.ndarray:
    return backend_of(array).to_numpy(array)


def _like(result: np.ndarray, template: Any) -> Any:
    return backend_of(template).from_host(result, template.dtype)


_hook_installed = False


def _install_abort_hook(comm: Any) -> None:
    global _hook_installed
    if _hook_installed:
        return
    previous = sys.excepthook

    def hook(exc_type: Any, exc: Any, tb: Any) -> None:
        previous(exc_type, exc, tb)
        if not issubclass(exc_type, KeyboardInterrupt):
            sys.stderr.write(
                f"dualnorm.distributed: rank {comm.Get_rank()} ended with {exc_type.__name__}; "
                "calling MPI_Abort so mpiexec stops every rank.\n"
            )
            sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = hook
    _hook_installed = True
