"""The docstring examples of the CNN-side modules stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

import dualnorm.backends

MODULES = ["dualnorm.lr_scheduler", "dualnorm.data", "dualnorm.data.transforms", "dualnorm.data.cifar"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    saved = dualnorm.backends._process_default
    try:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    finally:
        dualnorm.backends._process_default = saved
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
