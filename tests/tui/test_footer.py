"""KeyFooter: Textual's Footer rebuilt at most once per refresh, showing the bindings as they are."""

from __future__ import annotations

from typing import ClassVar

from helpers import sync
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Static
from textual.widgets._footer import FooterKey

from tui.widgets import KeyFooter


class Pane(Static, can_focus=True):
    def __init__(self, key: str, **kwargs) -> None:
        super().__init__(key, **kwargs)
        self._bindings.bind(key, "app.bell", f"pane {key}")


class FooterApp(App):
    BINDINGS: ClassVar = [Binding("q", "quit", "Quit")]

    def compose(self) -> ComposeResult:
        yield Pane("a", id="a")
        yield Pane("b", id="b")
        yield KeyFooter()


def keys(app: App) -> set[str]:
    return {fk.key for fk in app.screen.query(FooterKey)}


async def settle(pilot) -> None:
    for _ in range(5):
        await pilot.pause()


@sync
async def test_the_footer_follows_the_focus_and_rebuilds_once_per_burst(monkeypatch):
    signals, rebuilds = [], []
    original_changed, original_rebuild = KeyFooter.bindings_changed, KeyFooter._rebuild

    def changed(self, screen):
        signals.append(screen)
        original_changed(self, screen)

    async def rebuild(self):
        rebuilds.append(1)
        await original_rebuild(self)

    monkeypatch.setattr(KeyFooter, "bindings_changed", changed)
    monkeypatch.setattr(KeyFooter, "_rebuild", rebuild)
    app = FooterApp()
    async with app.run_test(size=(80, 24)) as pilot:
        app.set_focus(app.query_one("#a"))
        await settle(pilot)
        assert {"q", "a"} <= keys(app) and "b" not in keys(app)
        signals.clear(), rebuilds.clear()
        for pane in ("#b", "#a", "#b"):  # a burst of focus changes: one signal each
            app.set_focus(app.query_one(pane))
        await settle(pilot)
        assert {"q", "b"} <= keys(app) and "a" not in keys(app)  # the last focus's bindings
        assert len(signals) >= 3 and len(rebuilds) < len(signals)
