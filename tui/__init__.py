"""Textual terminal app that shows dualnorm's experiments training live (``python -m tui``)."""

from __future__ import annotations

__all__ = ["main"]


def main(argv=None) -> int:
    from tui.app import main as _main

    return _main(argv)
