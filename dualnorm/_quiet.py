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

# NumPy >= 2 keeps the error state in a context variable: setting it to a prepared state costs
# 0.3 µs where np.errstate costs ~3 (it rebuilds the state each time). The quiet state is derived
# from the caller's (which keeps their other settings), once per distinct caller state.
try:
    from numpy._core._ufunc_config import _extobj_contextvar, _make_extobj
except ImportError:  # NumPy 1.x: np.errstate
    _extobj_contextvar = _make_extobj = None
_QUIET_OF_MAX = 16
_quiet_of: dict[Any, Any] = {}  # the caller's state -> the same with QUIET's warnings off


def _quiet_state() -> Any:
    current = _extobj_contextvar.get()
    quiet = _quiet_of.get(current)
    if quiet is None:
        quiet = _make_extobj(**QUIET)  # built on the current state
        if len(_quiet_of) < _QUIET_OF_MAX:  # keys are kept alive, so their identity stays unique
            _quiet_of[current] = quiet
    return quiet


def call_quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the warnings in QUIET off."""
    if _state.quiet:
        return fn(*args, **kwargs)
    _state.quiet = True
    try:
        if _extobj_contextvar is None:
            with np.errstate(**QUIET):
                return fn(*args, **kwargs)
        token = _extobj_contextvar.set(_quiet_state())
        try:
            return fn(*args, **kwargs)
        finally:
            _extobj_contextvar.reset(token)
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
