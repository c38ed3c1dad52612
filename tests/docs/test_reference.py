"""Every public name of the documented modules has an entry in the generated reference.

An entry is a mkdocstrings directive in docs/: ``::: dualnorm.nn.LayerNorm`` (any path that
resolves to the same object), or a module-level ``::: dualnorm.nn`` whose filters let the
name through. mkdocstrings renders only documented objects here (``show_if_no_docstring:
false``), so every public class and function must also have a summary line.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.docs.markdown_blocks import ROOT

MODULES = [
    "dualnorm",
    "dualnorm.nn",
    "dualnorm.optim",
    "dualnorm.lr_scheduler",
    "dualnorm.losses",
    "dualnorm.data",
    "dualnorm.models",
    "dualnorm.tracking",
    "dualnorm.errors",
]
# Shown in the docs' text and examples rather than as an entry of its own.
NOT_AN_ENTRY = {("dualnorm", "__version__")}
DIRECTIVE = re.compile(r"^::: *(?P<path>[\w.]+) *$")


@dataclass
class Directive:
    page: Path
    path: str
    filters: list[str] | None = None  # None: the site's default ("public")
    target: Any = field(default=None, repr=False)


def public_names(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    # No __all__ (dualnorm.errors): the classes and functions defined in the module itself.
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    ]


def resolve(path: str) -> Any:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)


def directives() -> list[Directive]:
    found = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            match = DIRECTIVE.match(line)
            if not match:
                continue
            directive = Directive(page, match["path"])
            options = []
            for following in lines[i + 1 :]:
                if following.strip() and not following.startswith(" "):
                    break
                options.append(following)
            if any(o.strip() == "filters:" for o in options):
                start = next(k for k, o in enumerate(options) if o.strip() == "filters:")
                directive.filters = [
                    o.strip()[2:].strip().strip("\"'")
                    for o in options[start + 1 :]
                    if o.strip().startswith("- ")
                ]
            directive.target = resolve(directive.path)
            found.append(directive)
    return found


def passes(name: str, module: ModuleType, filters: list[str] | None) -> bool:
    if filters is None:  # "public": not underscored, and in __all__ when the module has one
        exported = getattr(module, "__all__", None)
        return not name.startswith("_") and (exported is None or name in exported)
    for pattern in filters:
        negative = pattern.startswith("!")
        hit = re.search(pattern[1:] if negative else pattern, name) is not None
        if hit == negative:
            return False
    return True


def covered(module: ModuleType, name: str, found: list[Directive]) -> bool:
    value = getattr(module, name)
    for d in found:
        if d.path == f"{module.__name__}.{name}":
            return True
        if (inspect.isclass(value) or inspect.isroutine(value)) and d.target is value:
            return True
        if inspect.ismodule(value) and d.path.startswith(value.__name__):
            return True  # a submodule (nn.functional, nn.utils): documented through its members
        if (
            inspect.ismodule(d.target)
            and passes(name, d.target, d.filters)
            and getattr(d.target, name, None) is value
            and name in public_names(d.target)
        ):
            return True
    return False


FOUND = directives()


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_has_a_reference_entry(module_name):
    module = importlib.import_module(module_name)
    missing = [
        name
        for name in public_names(module)
        if (module_name, name) not in NOT_AN_ENTRY and not covered(module, name, FOUND)
    ]
    assert not missing, (
        f"{module_name}: no reference entry for {missing}; add a '::: {module_name}.NAME' directive "
        "to the page of its family under docs/reference/ (or let a module-level directive's filters through)"
    )


@pytest.mark.parametrize("module_name", MODULES)
def test_public_classes_and_functions_have_a_summary(module_name):
    module = importlib.import_module(module_name)
    bare = []
    for name in public_names(module):
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            doc = inspect.getdoc(value) or ""
            if not doc.strip() or (inspect.isclass(value) and value.__doc__ is None):
                bare.append(name)
    assert not bare, f"{module_name}: no docstring (the reference would leave them out): {bare}"


def test_directives_resolve_and_the_test_can_fail():
    """Each directive names something real, and a name nobody documents is reported."""
    assert FOUND and all(d.target is not None for d in FOUND)
    fake = ModuleType("fake")
    fake.__all__ = ["Undocumented"]
    fake.Undocumented = type("Undocumented", (), {})
    assert not covered(fake, "Undocumented", FOUND)
    assert passes("Conv2d", importlib.import_module("dualnorm.nn"), ["!^_", "!^(BatchNorm[123]d)$"])
    assert not passes("BatchNorm2d", importlib.import_module("dualnorm.nn"), ["!^_", "!^(BatchNorm[123]d)$"])
