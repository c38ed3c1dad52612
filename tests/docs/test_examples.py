"""Every ```python block of the README and docs/ runs, so the docs cannot drift from the code.

The blocks of one page run in order in one namespace (a page reads as one session), in a
temporary working directory, with the backend state restored afterwards.

A ``print(...)`` whose comment shows an array or a tuple prints what the comment shows:
``print(bn.running_mean)   # [0.15  inf]``. The comment starts with the printed text (whitespace
aside; prose may follow, and ``...`` elides the rest), so a behaviour change cannot leave a stale
output on a page. Comments that do not start with ``[`` or ``(`` are prose (``~0, ~1``) and are
not compared.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io

import pytest

import dualnorm
from dualnorm import backends
from tests.docs.markdown_blocks import ROOT, Block, blocks, markdown_files

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
    stale = []
    try:
        for block in runnable:
            for node in ast.parse(block.code).body:  # statement by statement: prints are compared
                code = compile(ast.Module([node], []), f"{page.relative_to(ROOT)}:{block.line}", "exec")
                shown = shown_output(block, node)
                if shown is None:
                    exec(code, namespace)
                    continue
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    exec(code, namespace)
                if not output_matches(printed.getvalue(), shown):
                    stale.append(
                        f"{page.relative_to(ROOT)}:{block.line + node.lineno}: prints "
                        f"{printed.getvalue().strip()!r}, the comment shows {shown!r}"
                    )
    finally:
        backends._process_default = saved
        dualnorm.manual_seed(0)
    assert not stale, "\n".join(stale)


def shown_output(block: Block, node: ast.stmt) -> str | None:
    """The output a print statement's trailing comment shows, when it shows an array or a tuple."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return None
    if getattr(node.value.func, "id", None) != "print":
        return None
    comment = block.code.splitlines()[node.end_lineno - 1][node.end_col_offset :].strip()
    shown = comment[1:].strip() if comment.startswith("#") else ""
    return shown if shown[:1] in ("[", "(") else None


def output_matches(printed: str, shown: str) -> bool:
    """The comment starts with the printed text (whitespace aside); an elided one (``...``) shows
    a prefix of it."""
    printed, shown = " ".join(printed.split()), " ".join(shown.split())
    for ellipsis in ("...", "…"):
        if ellipsis in shown:
            return printed.startswith(shown.split(ellipsis)[0].rstrip(", "))
    return shown.startswith(printed)


def test_pages_show_printed_outputs_that_are_compared():
    checked = [
        (page, block.line)
        for page in PAGES
        for block in blocks(page)
        if block.lang == "python" and not block.skipped
        for node in ast.parse(block.code).body
        if shown_output(block, node)
    ]
    assert len({page for page, _ in checked}) >= 3, "the docs show printed arrays on several pages"
    assert output_matches("[0.15  inf]\n", "[0.15 inf]: the mean")
    assert not output_matches("[[1.2 -1.2 0.]]", "[[0. 0. 0.]]")
    assert output_matches("['a', 'b', 'c']", "['a', 'b', ...]")


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
