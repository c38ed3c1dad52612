"""BLAS thread pools while a demo trains: one thread where the matrices are small.

The demos multiply matrices of about (100, 100). OpenBLAS splits even those across its
thread pool, and its threads spin while they wait: on a machine whose cores are busy with
another process, the spinning threads compete with the work and a demo runs several times
slower (init-sweep --steps 40: 8.4 s against 2.2 s with one thread, on 2 cores with one of
them busy). OpenBLAS reads ``OPENBLAS_NUM_THREADS`` only when it is loaded, which is before
any of dualnorm's code runs, so the limit is set at run time with ``threadpoolctl``, for the
duration of the run only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

#: Environment variables with which a user already chose the BLAS thread count: those win.
USER_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_BLAS_THREADS")


@contextlib.contextmanager
def blas_threads_for(experiment: Any) -> Iterator[int | None]:
    """Limit the BLAS thread pools to ``experiment.blas_threads`` inside the block.

    Yields the limit applied, or None when nothing was changed: the experiment sets no
    limit (its matrices are large enough to gain from threads), the user chose a count in
    the environment, or ``threadpoolctl`` is not installed.
    """
    limit = getattr(experiment, "blas_threads", None)
    chosen = os.environ.get("DUALNORM_BLAS_THREADS", "").strip()
    if chosen.isdigit() and int(chosen) > 0:
        limit = int(chosen)
    elif any(os.environ.get(var) for var in USER_THREAD_VARS):
        limit = None
    if limit is None:
        yield None
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield None
        return
    with threadpool_limits(limits=limit, user_api="blas"):
        yield limit


__all__ = ["blas_threads_for"]
