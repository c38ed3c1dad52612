"""Pilot helpers shared by the app tests."""

from __future__ import annotations

import time

from fakes import fake_experiments

from tui.app import DualnormApp
from tui.screens import RunScreen

SIZE = (140, 45)


def make_app(steps: int = 60, delay: float = 0.0, **kwargs) -> DualnormApp:
    kwargs.setdefault("backends", ["numpy", "mlx"])
    kwargs.setdefault("backend", "numpy")
    kwargs.setdefault(
        "runs_root", "no-runs-here"
    )  # the start screen's run list, empty whatever the cwd holds
    return DualnormApp(fake_experiments(steps=steps, delay=delay), **kwargs)


async def wait_for(pilot, cond, timeout: float = 60.0, what: str = "condition") -> None:
    # generous: a pass returns at once, and a loaded 2-core CI machine must not turn slowness into failure
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def burst(pilot, *keys: str) -> None:
    """Queue ``keys`` at once, as a user hammering the keyboard does: none is handled before the last
    is sent (``pilot.press`` waits until the app is idle after each key, restarts included)."""
    from textual import events

    app = pilot.app
    for key in keys:
        event = events.Key(key, " " if key == "space" else key if len(key) == 1 else None)
        event.set_sender(app)
        app.post_message(event)


async def settle(pilot, screen: RunScreen) -> None:
    """Wait until the training thread is idle (paused or finished) and the UI has drawn every record."""
    runner = screen.runner

    def idle() -> bool:
        return runner.finished.is_set() or (runner.paused and runner._credits == 0)

    await wait_for(pilot, idle, what="runner idle")
    await pilot.pause(0.05)
    screen.poll(force=True)
    await pilot.pause()


def sync(fn):
    """Run an async test with asyncio.run (no pytest-asyncio/anyio plugin needed)."""
    import asyncio
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
