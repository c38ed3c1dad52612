"""Training runners: iterate an experiment's generator into a RecordBuffer, off the UI thread.

All backend (MLX/NumPy) work happens inside the generator, so it all stays on the one
thread that iterates it. The UI never calls into training: it drains the buffer on a timer.
Pausing is cheap: the runner waits between records, so training simply stops pulling the
generator; a single step lets exactly one record through.

:class:`ProcessTrainingRunner` iterates in a child process (the library's registered
experiments, so the UI cannot slow training through the GIL); :class:`TrainingRunner` in a
thread of the UI process (experiments handed to the app as objects, e.g. the tests' fakes).
:func:`make_runner` picks one.
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
        self.traceback: str | None = None
        self.notices: list[str] = []  # one-line messages for the status area (e.g. a kernel compile)
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
        drive(lambda: self.experiment, self.config, self.stop_event, self._wait_turn, self._emit)

    def _emit(self, kind: str, payload: Any) -> None:
        if kind == "record":
            self.records_pulled += 1
            self.buffer.append(payload)
        elif kind == "started":
            self.started_at = time.perf_counter()
        elif kind == "notice":
            self.notices.append(payload)
        elif kind == "error":
            # traceback before error: the UI reads both once it sees error set
            self.traceback = payload[1]
            self.error = payload[0]
        elif kind == "done":
            self.finished_at = time.perf_counter()
            self.finished.set()


class ProcessTrainingRunner:
    """The same controls as :class:`TrainingRunner`, with training in a child process.

    Training steps of the small demo networks are pure Python, so in a thread they share the
    GIL with the UI and every millisecond of rendering is taken from them (25-35 % measured on
    dying-relu). In a child process they do not compete. All backend work of the run stays on
    the child's one thread; a relay thread here moves the records (plain Python values) into
    the buffer. Only experiments the child can look up by name (``dualnorm.experiments``) run
    this way.
    """

    POLL_S = 0.1  # how often the child checks stop/pause while it waits, and the relay its child

    def __init__(self, experiment: Any, config: Any, buffer: RecordBuffer, *, paused: bool = False) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded UI process
        self.experiment = experiment
        self.config = config
        self.buffer = buffer
        self.finished = threading.Event()
        self.error: str | None = None
        self.traceback: str | None = None
        self.notices: list[str] = []  # one-line messages for the status area (e.g. a kernel compile)
        self.records_pulled = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        with _real_stdio():  # creating these may start multiprocessing's resource tracker
            self._queue = ctx.Queue()
            self._running = ctx.Event()
            self._credits = ctx.Semaphore(0)
            self._stop = ctx.Event()
        self._paused = paused
        if not paused:
            self._running.set()
        self._process = ctx.Process(
            target=_child_main,
            args=(experiment.name, config, self._queue, self._running, self._credits, self._stop),
            name=f"dualnorm-train-{experiment.name}",
            daemon=True,
        )
        self._relay_thread = threading.Thread(
            target=self._relay, name=f"dualnorm-relay-{experiment.name}", daemon=True
        )

    @property
    def stop_event(self) -> Any:
        return self._stop

    # -- control (called from the UI thread) -----------------------------------------------------

    def start(self) -> None:
        with _real_stdio():
            self._process.start()
        self._relay_thread.start()

    @property
    def paused(self) -> bool:
        return self._paused

    def _drain_credits(self) -> None:
        while self._credits.acquire(block=False):
            pass

    def pause(self) -> None:
        self._paused = True
        self._running.clear()
        self._drain_credits()

    def resume(self) -> None:
        self._paused = False
        self._running.set()

    def step(self, n: int = 1) -> None:
        """Pause (if running) and let exactly ``n`` more records through."""
        self._paused = True
        self._running.clear()
        for _ in range(n):
            self._credits.release()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the child to stop, then join it (terminating it if it does not) and the relay."""
        self._stop.set()
        if self._process.pid is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(2.0)
        if self._relay_thread.is_alive() and threading.current_thread() is not self._relay_thread:
            self._relay_thread.join(timeout)
        return not self.alive

    @property
    def alive(self) -> bool:
        return self._process.is_alive() or self._relay_thread.is_alive()

    # -- the relay thread ------------------------------------------------------------------------

    def _handle(self, message: tuple[str, Any]) -> bool:
        """Apply one message from the child; True when the child has finished."""
        kind, payload = message
        if kind == "record":
            self.records_pulled += 1
            self.buffer.append(payload)
        elif kind == "started":
            self.started_at = time.perf_counter()
        elif kind == "notice":
            self.notices.append(payload)
        elif kind == "error":
            self.traceback = payload[1]
            self.error = payload[0]
        return kind == "done"

    def _relay(self) -> None:
        import queue

        try:
            while True:
                try:
                    if self._handle(self._queue.get(timeout=self.POLL_S)):
                        return
                except queue.Empty:
                    if self._process.is_alive():
                        continue
                    # The child is gone: take what it sent before it went, then say why.
                    with contextlib.suppress(queue.Empty):
                        while True:
                            if self._handle(self._queue.get(timeout=self.POLL_S)):
                                return
                    if not self._stop.is_set() and self.error is None:
                        self.error = (
                            f"the training process ended unexpectedly (exit code {self._process.exitcode})"
                        )
                    return
        finally:
            self.finished_at = time.perf_counter()
            self.finished.set()


@contextlib.contextmanager
def _real_stdio() -> Any:
    """Textual replaces sys.stdout/stderr with capture objects that have no file descriptor;
    multiprocessing hands ``sys.stderr.fileno()`` to the processes it starts, so put the
    interpreter's own streams back while starting one."""
    import sys

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__ or saved[0], sys.__stderr__ or saved[1]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def drive(get_experiment: Any, config: Any, stop: Any, wait_turn: Any, emit: Any) -> None:
    """The one run loop, in a thread (TrainingRunner) or a child process (ProcessTrainingRunner).

    Pulls one record per turn (``wait_turn()`` blocks while paused; False means stop) and hands
    each on as ``emit(kind, payload)``: "started", "record" (a StepRecord), "error" (message,
    traceback), "notice" (a one-line message, e.g. a first kernel compile that takes a while) and,
    always last, "done". An exception of the experiment is reported, never raised.
    """
    gen = None
    remove_listener = _listen_for_compiles(lambda message: emit("notice", message))
    try:
        experiment = get_experiment()
        if not wait_turn():
            return
        emit("started", None)
        gen = experiment.run(config, stop)
        first = True
        while True:
            if not first and not wait_turn():
                return
            first = False
            try:
                record = next(gen)
            except StopIteration:
                return
            emit("record", record)
    except Exception as exc:  # shown in the UI, never raised into it
        emit("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        if gen is not None:
            with contextlib.suppress(Exception):
                gen.close()
        remove_listener()
        emit("done", None)


def _listen_for_compiles(callback: Any) -> Any:
    """Forward the NumPy backend's "compiling kernels" notice (never sent where numba is missing)."""
    from dualnorm.backends.kernels_numba import add_compile_listener

    return add_compile_listener(callback)


def _child_main(name: str, config: Any, out: Any, running: Any, credits: Any, stop: Any) -> None:
    """The training process: run experiment ``name``, one record per turn, until done or stopped."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the UI, which stops us cleanly

    def wait_turn() -> bool:
        while not stop.is_set():
            if running.is_set() or credits.acquire(timeout=ProcessTrainingRunner.POLL_S):
                return True
        return False

    def experiment() -> Any:
        from dualnorm.experiments import get_experiment

        return get_experiment(name)

    from dualnorm._threads import blas_threads_for

    with blas_threads_for(experiment()):  # the demos' small matrices: no BLAS thread pool
        drive(experiment, config, stop, wait_turn, lambda kind, payload: out.put((kind, payload)))


def make_runner(experiment: Any, config: Any, buffer: RecordBuffer, *, paused: bool = False) -> Any:
    """A process runner for the library's registered experiments, a thread runner otherwise.

    ``DUALNORM_TUI_RUNNER=thread`` keeps training in a thread of the UI process.
    """
    import os

    from dualnorm.experiments import EXPERIMENTS

    choice = os.environ.get("DUALNORM_TUI_RUNNER", "process").strip().lower()
    if choice != "thread" and EXPERIMENTS.get(experiment.name) is experiment:
        return ProcessTrainingRunner(experiment, config, buffer, paused=paused)
    return TrainingRunner(experiment, config, buffer, paused=paused)
