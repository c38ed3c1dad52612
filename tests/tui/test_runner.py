"""The training thread: pause, single step, stop, errors."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("textual")

from fakes import FakeExperiment

from dualnorm.experiments.base import RunConfig
from tui.runner import TrainingRunner
from tui.state import RecordBuffer


def _wait(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_runs_to_completion_on_its_own_thread():
    buf = RecordBuffer()
    seen_threads = set()

    class Spy(FakeExperiment):
        def run(self, config, stop=None):
            for rec in super().run(config, stop):
                seen_threads.add(threading.get_ident())
                yield rec

    r = TrainingRunner(Spy("x", "relu", steps=5), RunConfig(), buf)
    r.start()
    assert r.finished.wait(60)
    assert len(buf.drain()) == 10
    assert seen_threads and threading.get_ident() not in seen_threads
    assert r.stop() and not r.alive


def test_paused_start_and_single_steps():
    buf = RecordBuffer()
    r = TrainingRunner(FakeExperiment("x", "relu", steps=50), RunConfig(), buf, paused=True)
    r.start()
    time.sleep(0.05)
    assert len(buf) == 0
    r.step()
    _wait(lambda: len(buf) == 1)
    r.step(2)
    _wait(lambda: len(buf) == 3)
    time.sleep(0.05)
    assert len(buf) == 3
    r.resume()
    assert r.finished.wait(60)
    assert len(buf) == 100
    r.stop()


def test_stop_while_paused_joins_thread():
    r = TrainingRunner(FakeExperiment("x", "relu", steps=10**6), RunConfig(), RecordBuffer())
    r.start()
    time.sleep(0.02)
    r.pause()
    assert r.stop(timeout=60)
    assert not r.alive


def test_experiment_error_is_captured():
    class Broken(FakeExperiment):
        def run(self, config, stop=None):
            yield from super().run(config, stop)
            raise RuntimeError("boom")

    r = TrainingRunner(Broken("x", "relu", steps=2), RunConfig(), RecordBuffer())
    r.start()
    assert r.finished.wait(60)
    assert r.error == "RuntimeError: boom"


def test_a_kernel_compile_notice_reaches_the_runner():
    kernels_numba = pytest.importorskip("dualnorm.backends.kernels_numba")
    pytest.importorskip("numba")

    class Compiling(FakeExperiment):
        def run(self, config, stop=None):
            kernels_numba._announce("dualnorm: compiling numba kernels (test)")
            yield from super().run(config, stop)

    listeners = list(kernels_numba._listeners)
    buffer = RecordBuffer()
    runner = TrainingRunner(Compiling("compiling", "relu", steps=3), RunConfig(), buffer)
    runner.start()
    assert runner.finished.wait(30)
    assert runner.notices == ["dualnorm: compiling numba kernels (test)"]
    # the run's listener is gone with the run (others' runs may add or drop theirs meanwhile)
    assert not [cb for cb in kernels_numba._listeners if all(cb is not old for old in listeners)]
