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
    assert np.isinf(y).all() and np.geterr() == before and not _quiet._state.quiet


def test_errstate_is_entered_once_per_call_tree(monkeypatch):
    entered = []
    real = np.errstate

    def counting(**kw):
        entered.append(kw)
        return real(**kw)

    monkeypatch.setattr(_quiet.np, "errstate", counting)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), _Overflowing(), nn.Linear(8, 2))
    model(np.ones((3, 4), np.float32))
    assert len(entered) == 1  # the Sequential's call, not each of its four layers'
    entered.clear()
    with get_backend("numpy").compute():  # a training step's block
        model(np.ones((3, 4), np.float32))
    assert entered == [{"all": "ignore"}]


def test_the_mark_is_cleared_when_a_forward_raises():
    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        Broken()(np.ones(2, np.float32))
    assert not _quiet._state.quiet
    with pytest.warns(RuntimeWarning):  # outside any module call NumPy warns as it always did
        np.float32(3e38) * np.float32(10.0)
