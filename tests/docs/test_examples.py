"""Every ```python block of the README and docs/ runs, so the docs cannot drift from the code.

The blocks of one page run in order in one namespace (a page reads as one session), in a
temporary working directory, with the backend state restored afterwards.
"""

from __future__ import annotations

import importlib.util

import pytest

import dualnorm
from dualnorm import backends
from tests.docs.markdown_blocks import ROOT, blocks, markdown_files

PAGES = [p for p in markdown_files() if any(b.lang == "python" and not b.skipped for b in blocks(p))]


def needs(code: str) -> list[str]:
    wanted = {"mlx": "mlx", "torch": "torch", "textual": "textual"}
    return [mod for word, mod in wanted.items() if f"import {word}" in code or f'"{word}"' in code]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    runnable = [b for b in blocks(page) if b.lang == "python" and not b.skipped]
    for block in runnable:
        for module in needs(block.code):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{module} is not installed (needed by line {block.line})")
    monkeypatch.chdir(tmp_path)
    saved = backends._process_default
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for block in runnable:
            compiled = compile(block.code, f"{page.relative_to(ROOT)}:{block.line}", "exec")
            exec(compiled, namespace)
    finally:
        backends._process_default = saved
        dualnorm.manual_seed(0)


def test_no_test_marks_precede_a_block():
    """A stray no-test mark (not right before a fence) would silently do nothing."""
    for page in markdown_files():
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if line.strip() == "<!-- no-test -->":
                following = next((n.strip() for n in lines[number:] if n.strip()), "")
                assert following.startswith("```"), (
                    f"{page.relative_to(ROOT)}:{number}: no fence after the mark"
                )
