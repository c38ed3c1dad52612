"""The process-group interface every engine implements, the single-process group, and the watchdog.

A :class:`ProcessGroup` is the set of processes that train one model together. It
knows this process's ``rank`` and the group's ``size`` and offers the collectives
that synchronized batch norm and data-parallel training need:

* ``allreduce_sum(array)`` -- the element-wise sum over every rank, on every rank;
* ``allgather(array)`` -- every rank's array stacked along a new first axis, in rank order;
* ``broadcast(array, root)`` and ``barrier()`` (built on the two above).

Arrays may be NumPy or MLX arrays; the result has the type of the argument. The engines
(MPI through ``mpi4py``, MLX through ``mlx.core.distributed``) move the bytes; dualnorm
never opens a socket of its own.

Every collective runs under a watchdog: a collective (or the initial connection) that
does not finish within the group's timeout means another rank died, stalled or never
connected. The blocked call cannot be interrupted from Python, so the watchdog prints
one clear message to stderr and ends the process with exit code
:data:`WATCHDOG_EXIT_CODE`; the launcher (``mpiexec``, ``mlx.launch``) then stops the
other ranks. A run therefore ends with an error in bounded time instead of hanging.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from dualnorm.backends import backend_of
from dualnorm.errors import DualnormError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "WATCHDOG_EXIT_CODE",
    "DistributedError",
    "ProcessGroup",
    "SingleProcessGroup",
]

DEFAULT_TIMEOUT = 600.0
"""Seconds one collective may take before the watchdog ends the process (env ``DUALNORM_DIST_TIMEOUT``)."""

DEFAULT_CONNECT_TIMEOUT = 120.0
"""Seconds the engine may take to connect the ranks (env ``DUALNORM_DIST_CONNECT_TIMEOUT``)."""

WATCHDOG_EXIT_CODE = 75
"""Exit status of a process the watchdog ends (EX_TEMPFAIL)."""


class DistributedError(DualnormError, RuntimeError):
    """A collective failed, a peer was lost, or the process group is misconfigured."""


def timeout_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DistributedError(f"{name}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise DistributedError(f"{name}={raw!r} must be a positive number of seconds")
    return value


class _Watchdog:
    """One daemon thread per process that ends it when a watched call overruns its deadline."""

    _poll = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._message = ""
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="dualnorm-dist-watchdog", daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def watch(self, timeout: float | None, message: str) -> Iterator[None]:
        if timeout is None:
            yield
            return
        with self._lock:
            self._ensure_thread()
            previous = (self._deadline, self._message)
            self._deadline = time.monotonic() + timeout
            self._message = message
        try:
            yield
        finally:
            with self._lock:
                self._deadline, self._message = previous

    def _run(self) -> None:
        while True:
            time.sleep(self._poll)
            with self._lock:
                expired = self._deadline is not None and time.monotonic() > self._deadline
                message = self._message
            if expired:
                try:
                    sys.stderr.write(f"\n{message}\n")
                    sys.stderr.flush()
                finally:
                    os._exit(WATCHDOG_EXIT_CODE)


_WATCHDOG = _Watchdog()


def watch(timeout: float | None, message: str) -> contextlib.AbstractContextManager[None]:
    """Context manager: end the process with ``message`` if the block runs longer than ``timeout`` s.

    The watchdog is a Python thread, so the watched call must release the GIL while it
    blocks (MPI and MLX collectives do). For calls that may block holding the GIL, such
    as connecting the ranks, use :func:`watch_from_outside`.
    """
    return _WATCHDOG.watch(timeout, message)


_OUTSIDE_WATCHER = r"""
import os, select, signal, sys, time
pid, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if ready:  # the watched process closed the pipe: it finished the call, or it died
    sys.exit(0)
sys.stderr.write("\n" + message + "\n")
sys.stderr.flush()
os.kill(pid, signal.SIGTERM)
for _ in range(40):
    time.sleep(0.05)
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(0)
os.kill(pid, signal.SIGKILL)
"""


@contextlib.contextmanager
def watch_from_outside(timeout: float | None, message: str) -> Iterator[None]:
    """Like :func:`watch`, but the watchdog is a separate process that terminates this one.

    Works even while the watched call holds the GIL (``mx.distributed.init`` does while it
    waits for its peers). Costs one short-lived interpreter, so it guards one-off calls only.
    """
    if timeout is None:
        yield
        return
    import subprocess

    watcher = subprocess.Popen(
        [sys.executable, "-c", _OUTSIDE_WATCHER, str(os.getpid()), str(timeout), message],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        assert watcher.stdin is not None
        watcher.stdin.close()
        watcher.wait()


class ProcessGroup(abc.ABC):
    """The processes that train one model together (rank ``0 .. size - 1``)."""

    engine: str = ""

    def __init__(self, rank: int, size: int, timeout: float | None) -> None:
        self.rank = int(rank)
        self.size = int(size)
        self.timeout = timeout
        self._calls = 0

    # --- engine hooks (NumPy or native arrays in, same kind out) ------------------
    @abc.abstractmethod
    def _allreduce_sum(self, array: Any) -> Any: ...

    @abc.abstractmethod
    def _allgather(self, array: Any) -> Any: ...

    def _lost_peer_hint(self) -> str:
        return "another rank probably died or stalled; look for its error above"

    # --- the collectives ------------------------------------------------------------
    def _collective(self, name: str, fn: Any, array: Any) -> Any:
        self._calls += 1
        what = f"{name} #{self._calls} of {_describe(array)}"
        message = (
            f"dualnorm.distributed: rank {self.rank} of {self.size} ({self.engine}): {what} did not "
            f"finish within {self.timeout:g} s: {self._lost_peer_hint()}. Ending this process (exit "
            f"code {WATCHDOG_EXIT_CODE}) so the launcher stops the others. If a rank legitimately works "
            "alone for longer (evaluation, checkpointing), raise the limit with "
            "init_process_group(timeout=...) or DUALNORM_DIST_TIMEOUT=<seconds>."
            if self.timeout is not None
            else ""
        )
        try:
            with watch(self.timeout, message):
                return fn(array)
        except DistributedError:
            raise
        except Exception as exc:
            raise DistributedError(
                f"rank {self.rank} of {self.size} ({self.engine}): {what} failed: {type(exc).__name__}: "
                f"{exc}. {self._lost_peer_hint().capitalize()}."
            ) from exc

    def allreduce_sum(self, array: Any) -> Any:
        """Element-wise sum of ``array`` over every rank (same shape and type as ``array``)."""
        if self.size == 1:
            return array
        return self._collective("allreduce_sum", self._allreduce_sum, array)

    def allgather(self, array: Any) -> Any:
        """Every rank's ``array`` stacked in rank order: shape ``(size, *array.shape)``."""
        if self.size == 1:
            return array.reshape((1, *tuple(array.shape)))
        return self._collective("allgather", self._allgather, array)

    def broadcast(self, array: Any, root: int = 0) -> Any:
        """``root``'s ``array`` on every rank (bit-exact: the other ranks contribute zeros)."""
        if not 0 <= root < self.size:
            raise DistributedError(f"broadcast: root {root} is not a rank of a group of size {self.size}")
        if self.size == 1:
            return array
        contribution = array if self.rank == root else backend_of(array).zeros_like(array)
        return self.allreduce_sum(contribution)

    def barrier(self) -> None:
        """Return once every rank has reached the barrier."""
        self.allreduce_sum(np.zeros(1, dtype=np.float32))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} engine={self.engine!r} rank={self.rank} size={self.size}>"


class SingleProcessGroup(ProcessGroup):
    """The group of one process: every collective is the identity, so nothing is communicated."""

    engine = "single"

    def __init__(self) -> None:
        super().__init__(0, 1, None)

    def _allreduce_sum(self, array: Any) -> Any:
        return array

    def _allgather(self, array: Any) -> Any:
        return array.reshape((1, *tuple(array.shape)))


def _describe(array: Any) -> str:
    shape = tuple(getattr(array, "shape", ()))
    dtype = str(getattr(array, "dtype", "?")).rsplit(".", 1)[-1]
    return f"a {dtype} array of shape {shape}"
