"""NumPy's floating-point warnings off, entered once per call tree, not per layer.

``np.errstate`` costs 3-7 µs to enter: paid by every layer of a model it was 6 % of a small MLP's
forward. A module call (and a training step, through the NumPy backend's ``compute()``) enters it
once and marks the thread; module calls inside it run as they are.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# Overflow on the way to inf/NaN is the layers' business (reported as divergence), not a warning.
QUIET = {"over": "ignore", "invalid": "ignore", "divide": "ignore"}


class _Depth(threading.local):
    quiet = False  # True while this thread is inside a block that turned the warnings off


_state = _Depth()


def call_quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the warnings in QUIET off."""
    if _state.quiet:
        return fn(*args, **kwargs)
    _state.quiet = True  # (quiet_floats() inlined: a generator's context costs ~1 µs more)
    try:
        with np.errstate(**QUIET):
            return fn(*args, **kwargs)
    finally:
        _state.quiet = False


@contextlib.contextmanager
def quiet_floats(**errstate: str) -> Iterator[None]:
    """``np.errstate(**errstate)`` (at least QUIET's warnings off) for the block, marked for
    :func:`call_quietly`; inside an outer block, nothing more to do."""
    if _state.quiet:
        yield
        return
    _state.quiet = True
    try:
        with np.errstate(**errstate):
            yield
    finally:
        _state.quiet = False
