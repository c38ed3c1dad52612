"""The docstring examples of dualnorm and dualnorm.nn stay true (run with doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dualnorm
import dualnorm.backends
import dualnorm.nn

# The core's modules (other parts of dualnorm.nn are tested with their own features).
CORE = [
    "module",
    "functional",
    "batchnorm",
    "layernorm",
    "groupnorm",
    "instancenorm",
    "lrn",
    "weight_norm",
    "spectral_norm",
    "linear",
    "activations",
    "utils",
    "_checks",
]
MODULES = ["dualnorm", "dualnorm.backends", "dualnorm.nn"] + [f"dualnorm.nn.{name}" for name in CORE]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    saved = dualnorm.backends._process_default  # examples may call set_backend()
    try:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    finally:
        dualnorm.backends._process_default = saved
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"


def test_every_core_module_is_listed():
    present = {info.name for info in pkgutil.iter_modules(dualnorm.nn.__path__)}
    assert set(CORE) <= present


def test_the_examples_exist():
    attempted = 0
    for name in MODULES:
        finder = doctest.DocTestFinder()
        attempted += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert attempted >= 20
