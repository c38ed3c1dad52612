"""The one training thread: iterates an experiment's generator into a RecordBuffer.

All backend (MLX/NumPy) work happens inside the generator, so it all stays on this
thread. The UI never calls into training: it drains the buffer on a timer.
Pausing is cheap: the thread waits on a condition between records, so training
simply stops pulling the generator; a single step lets exactly one record through.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from typing import Any

from tui.state import RecordBuffer


class TrainingRunner:
    def __init__(self, experiment: Any, config: Any, buffer: RecordBuffer, *, paused: bool = False) -> None:
        self.experiment = experiment
        self.config = config
        self.buffer = buffer
        self.stop_event = threading.Event()
        self._cond = threading.Condition()
        self._paused = paused
        self._credits = 0  # records allowed through while paused
        self.finished = threading.Event()
        self.error: str | None = None
        self.records_pulled = 0
        self.started_at: float | None = None  # perf_counter() when the generator was created
        self.finished_at: float | None = None
        self._thread = threading.Thread(
            target=self._loop, name=f"dualnorm-train-{experiment.name}", daemon=True
        )

    # -- control (called from the UI thread) -----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        with self._cond:
            self._paused = True
            self._credits = 0

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def step(self, n: int = 1) -> None:
        """Pause (if running) and let exactly ``n`` more records through."""
        with self._cond:
            self._paused = True
            self._credits += n
            self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the experiment to stop, wake the thread and join it. True when it ended."""
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------------

    def _wait_turn(self) -> bool:
        with self._cond:
            while self._paused and self._credits <= 0 and not self.stop_event.is_set():
                self._cond.wait()
            if self.stop_event.is_set():
                return False
            if self._paused:
                self._credits -= 1
            return True

    def _loop(self) -> None:
        gen = None
        try:
            if not self._wait_turn():
                return
            self.started_at = time.perf_counter()
            gen = self.experiment.run(self.config, self.stop_event)
            first = True
            while True:
                if not first and not self._wait_turn():
                    return
                first = False
                try:
                    rec = next(gen)
                except StopIteration:
                    return
                self.records_pulled += 1
                self.buffer.append(rec)
        except Exception as exc:  # shown in the UI, never raised into it
            self.error = f"{type(exc).__name__}: {exc}"
            self._traceback = traceback.format_exc()
        finally:
            if gen is not None:
                with contextlib.suppress(Exception):
                    gen.close()
            self.finished_at = time.perf_counter()
            self.finished.set()
