"""NumPy's float warnings are off inside module calls and training steps, entered once per call tree."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dualnorm.nn as nn
from dualnorm import _quiet
from dualnorm.backends import get_backend


class _Overflowing(nn.Module):
    def forward(self, x):
        return np.float32(3e38) * x  # overflows to inf: a RuntimeWarning outside a quiet block


def test_a_module_call_is_quiet_and_leaves_numpy_as_it_was():
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = _Overflowing()(np.full(3, 10.0, np.float32))
    assert np.isinf(y).all() and np.geterr() == before and not _quiet.is_quiet()


def test_errstate_is_entered_once_per_call_tree(monkeypatch):
    entered = []
    if _quiet._extobj_contextvar is None:  # NumPy 1.x: np.errstate
        real_errstate = np.errstate

        def counting_errstate(**kw):
            entered.append(kw)
            return real_errstate(**kw)

        monkeypatch.setattr(_quiet.np, "errstate", counting_errstate)
    else:  # NumPy 2: the error state's context variable, set to a prepared state
        real_set = _quiet._set

        def counting_set(state):
            entered.append({k: v for k, v in _errstate_of(state).items() if k in _quiet.QUIET})
            return real_set(state)

        monkeypatch.setattr(_quiet, "_set", counting_set)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), _Overflowing(), nn.Linear(8, 2))
    model(np.ones((3, 4), np.float32))
    model(np.ones((3, 4), np.float32))  # the prepared state, found again
    assert entered == [_quiet.QUIET] * 2  # the Sequential's calls, not each of its four layers'
    entered.clear()
    with get_backend("numpy").compute():  # a training step's block
        model(np.ones((3, 4), np.float32))
    assert entered in ([{"all": "ignore"}], [_quiet.QUIET])  # (np.errstate's arguments, or what it set)


def _errstate_of(state):
    token = _quiet._extobj_contextvar.set(state)
    try:
        return np.geterr()
    finally:
        _quiet._extobj_contextvar.reset(token)


def test_the_callers_other_settings_are_kept_and_followed():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(np.geterr())
            return x

    x = np.ones(2, np.float32)
    for under in ("raise", "ignore", "raise"):  # a state met before (cached) and a changed one
        with np.errstate(under=under, over="raise"):
            Probe()(x)
            assert np.geterr()["over"] == "raise"  # restored after the call
    assert [s["under"] for s in seen] == ["raise", "ignore", "raise"]
    assert all(s["over"] == s["invalid"] == s["divide"] == "ignore" for s in seen)


def test_a_module_inside_a_callers_own_errstate_is_quiet_again():
    # The caller's state inside a module call is not one of the quiet ones: a module called there
    # turns the warnings off anew (derived from that state) and restores it after.
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(np.geterr())
            return x

    class Outer(nn.Module):
        def forward(self, x):
            assert _quiet.is_quiet()
            with np.errstate(over="raise", under="raise"):
                assert not _quiet.is_quiet()
                y = Probe()(x)
                assert np.geterr()["over"] == "raise"
            return y

    Outer()(np.ones(2, np.float32))
    assert seen[0]["over"] == "ignore" and seen[0]["under"] == "raise"


def test_a_module_called_from_another_thread_is_quiet_there():
    import threading

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((np.geterr()["over"], _quiet.is_quiet()))
            return x

    with np.errstate(over="raise"):
        thread = threading.Thread(target=lambda: Probe()(np.ones(2, np.float32)))
        thread.start()
        thread.join()
    assert seen == [("ignore", True)] and not _quiet.is_quiet()


def test_the_mark_is_cleared_when_a_forward_raises():
    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        Broken()(np.ones(2, np.float32))
    assert not _quiet.is_quiet()
    with pytest.warns(RuntimeWarning):  # outside any module call NumPy warns as it always did
        np.float32(3e38) * np.float32(10.0)
