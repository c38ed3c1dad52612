"""A griffe extension for the reference: dualnorm's docstrings are plain text with doctest
examples and reST ``::`` literal blocks, which Markdown would mangle (``[a][b]`` reads as a link).
Fence them before mkdocstrings renders the docstring; the source files stay as they are."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc):`~?([^`]+)`")


def fence(text: str) -> str:
    text = ROLE.sub(r"`\1`", text)  # Sphinx roles: plain code here
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(">>>"):  # a doctest at the base indentation: up to the next blank line
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["", "```pycon", *block, "```", ""]
            continue
        if line.rstrip().endswith("::") and not line.startswith(" ") and i + 1 < len(lines):
            # "text::" then a blank line then an indented block: a literal block
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and lines[j].startswith(" "):
                block = []
                while j < len(lines) and (not lines[j].strip() or lines[j].startswith(" ")):
                    block.append(lines[j])
                    j += 1
                while block and not block[-1].strip():
                    block.pop()
                indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                stripped = line.rstrip()[:-2].rstrip()
                out += [
                    stripped + ":" if stripped else "",
                    "",
                    "```text",
                    *(b[indent:] for b in block),
                    "```",
                    "",
                ]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class PlainDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence(obj.docstring.value)
