"""NumPy's floating-point warnings off, entered once per call tree, not per layer.

``np.errstate`` costs 3-7 µs to enter: paid by every layer of a model it was 6 % of a small MLP's
forward. A module call (and a training step, through the NumPy backend's ``compute()``) sets it
once; module calls inside it find it set and run as they are.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# Overflow on the way to inf/NaN is the layers' business (reported as divergence), not a warning.
QUIET = {"over": "ignore", "invalid": "ignore", "divide": "ignore"}

# NumPy >= 2 keeps the error state in a context variable (per thread, per task): setting it to a
# prepared state costs 0.3 µs where np.errstate costs ~3 (it rebuilds the state each time). A
# quiet state is derived from the caller's (which keeps their other settings), once per distinct
# caller state, and is recognised by identity: inside one, a call has nothing to do.
try:
    from numpy._core._ufunc_config import _extobj_contextvar, _make_extobj
except ImportError:  # NumPy 1.x: np.errstate, and a per-thread mark
    _extobj_contextvar = _make_extobj = None
_QUIET_OF_MAX = 16
_quiet_of: dict[Any, Any] = {}  # the caller's state (and what to turn off, if not QUIET) -> quiet state
_quiet_states: set[Any] = set()  # every state in _quiet_of (kept alive there: identities stay unique)


class _Depth(threading.local):
    quiet = False  # NumPy 1.x: True while this thread is inside a block that turned the warnings off


_state = _Depth()


def _quiet_state(**errstate: str) -> Any:
    """The current error state with ``errstate`` (default QUIET) applied, prepared once."""
    current = _extobj_contextvar.get()
    key = (current, tuple(sorted(errstate.items()))) if errstate else current
    quiet = _quiet_of.get(key)
    if quiet is None:
        quiet = _make_extobj(**(errstate or QUIET))  # built on the current state
        if len(_quiet_of) < _QUIET_OF_MAX:
            _quiet_of[key] = quiet
            _quiet_states.add(quiet)
    return quiet


def is_quiet() -> bool:
    """True inside a module call or a training step (the warnings are off)."""
    if _extobj_contextvar is None:
        return _state.quiet
    return _extobj_contextvar.get() in _quiet_states


if _extobj_contextvar is not None:
    _get, _set, _reset = _extobj_contextvar.get, _extobj_contextvar.set, _extobj_contextvar.reset

    def call_quietly(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with the warnings in QUIET off."""
        current = _get()
        if current in _quiet_states:  # inside another module's call, or a step: already quiet
            return fn(*args)
        quiet = _quiet_of.get(current)  # (the prepared state, without a call: this is every layer's)
        token = _set(_quiet_state() if quiet is None else quiet)
        try:
            return fn(*args)
        finally:
            _reset(token)

    @contextlib.contextmanager
    def quiet_floats(**errstate: str) -> Iterator[None]:
        """The warnings in ``errstate`` (at least QUIET's) off for the block; inside an outer
        quiet block, nothing more to do."""
        if _get() in _quiet_states:
            yield
            return
        token = _set(_quiet_state(**errstate))
        try:
            yield
        finally:
            _reset(token)

else:

    def call_quietly(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with the warnings in QUIET off."""
        if _state.quiet:
            return fn(*args)
        _state.quiet = True
        try:
            with np.errstate(**QUIET):
                return fn(*args)
        finally:
            _state.quiet = False

    @contextlib.contextmanager
    def quiet_floats(**errstate: str) -> Iterator[None]:
        """The warnings in ``errstate`` (at least QUIET's) off for the block; inside an outer
        quiet block, nothing more to do."""
        if _state.quiet:
            yield
            return
        _state.quiet = True
        try:
            with np.errstate(**errstate):
                yield
        finally:
            _state.quiet = False
