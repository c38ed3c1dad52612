"""The rich Console the commands print results with, and the one ratio convention of their tables."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

#: Every timing ratio in every table (``dualnorm bench``, ``bench --sweep``, ``python -m benchmarks``):
#: a column "A/B" is A's time / B's time, A being dualnorm's (a backend, a kernel set), B the other.
RATIO_RULE = "x = dualnorm / other, < 1 is faster"

# Piped or redirected, a table is printed at its natural width: rich would otherwise squeeze it into
# 80 columns and cut every cell to "…". A width this large never binds; a table is no wider than it needs.
UNBOUNDED_WIDTH = 1_000_000


def output_console(file: TextIO | None = None, *, stderr: bool = False) -> Any:
    """A Console at the terminal's width, or, when the output is not a terminal, at each table's
    natural width (``COLUMNS`` set in the environment still wins)."""
    from rich.console import Console

    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    is_tty = bool(getattr(stream, "isatty", None) and stream.isatty())
    width = None if is_tty or os.environ.get("COLUMNS") else UNBOUNDED_WIDTH
    return Console(file=file, stderr=stderr, width=width)


def titled_table(title: str, **options: Any) -> Any:
    """A rich Table at least as wide as its title, so that the title (which states the ratio
    convention) is never wrapped or cut where the output has room for it."""
    from rich.table import Table

    return Table(title=title, min_width=len(title), **options)


def fmt_ratio(numerator: float, denominator: float) -> str:
    """``numerator / denominator`` as a table cell ("0.85x"), "-" where it is not a number."""
    try:
        value = numerator / denominator
    except (TypeError, ZeroDivisionError):
        return "-"
    return f"{value:.2f}x" if value == value else "-"


__all__ = ["RATIO_RULE", "fmt_ratio", "output_console", "titled_table"]
