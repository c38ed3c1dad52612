"""Training in a child process: the same controls as the thread runner, and no GIL shared with the UI."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytest.importorskip("textual")

from fakes import FakeExperiment

from dualnorm.experiments import get_experiment
from dualnorm.experiments.base import RunConfig
from tui.runner import ProcessTrainingRunner, TrainingRunner, make_runner
from tui.state import RecordBuffer

DYING = get_experiment("dying-relu")
SHORT = RunConfig(backend="numpy", steps=200, record_every=20)  # 11 records per variant


def _wait(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_registered_experiments_train_in_a_process_others_in_a_thread(monkeypatch):
    assert isinstance(make_runner(DYING, SHORT, RecordBuffer()), ProcessTrainingRunner)
    assert isinstance(
        make_runner(FakeExperiment("x", "relu", steps=1), SHORT, RecordBuffer()), TrainingRunner
    )
    monkeypatch.setenv("DUALNORM_TUI_RUNNER", "thread")
    assert isinstance(make_runner(DYING, SHORT, RecordBuffer()), TrainingRunner)


def test_runs_to_completion_with_the_same_records_as_in_process():
    buf = RecordBuffer()
    runner = ProcessTrainingRunner(DYING, SHORT, buf)
    runner.start()
    assert runner.finished.wait(60)
    assert runner.error is None
    records = buf.drain()
    expected = list(DYING.run(SHORT))
    assert [(r.variant, r.step) for r in records] == [(r.variant, r.step) for r in expected]
    assert [r.loss for r in records] == pytest.approx([r.loss for r in expected], rel=1e-6)
    assert runner.records_pulled == len(expected) and runner.started_at is not None
    assert runner.stop() and not runner.alive


def test_paused_start_single_steps_and_resume():
    buf = RecordBuffer()
    runner = ProcessTrainingRunner(DYING, SHORT, buf, paused=True)
    runner.start()
    time.sleep(1.0)  # the child is up and waiting for its turn
    assert len(buf) == 0 and runner.paused
    runner.step()
    _wait(lambda: len(buf) == 1)
    runner.step(2)
    _wait(lambda: len(buf) == 3)
    time.sleep(0.3)
    assert len(buf) == 3  # exactly the records that were let through
    runner.resume()
    assert runner.finished.wait(60)
    assert len(buf) == 22
    runner.stop()


def test_stop_ends_a_long_run_and_leaves_no_process():
    runner = ProcessTrainingRunner(DYING, RunConfig(backend="numpy", steps=10**7), RecordBuffer())
    runner.start()
    _wait(lambda: runner.records_pulled > 0)
    runner.pause()
    assert runner.stop(timeout=60)
    assert not runner.alive and runner.error is None


def test_an_error_in_the_experiment_reaches_the_ui():
    bad = RunConfig(backend="numpy", steps=5, options={"no_such_option": 1})
    runner = ProcessTrainingRunner(DYING, bad, RecordBuffer())
    runner.start()
    assert runner.finished.wait(60)
    assert runner.error is not None and "no_such_option" in runner.error
    runner.stop()


def test_a_killed_training_process_is_reported_not_hung_on():
    runner = ProcessTrainingRunner(DYING, RunConfig(backend="numpy", steps=10**7), RecordBuffer())
    runner.start()
    _wait(lambda: runner.records_pulled > 0)
    os.kill(runner._process.pid, signal.SIGKILL)
    assert runner.finished.wait(60)
    assert "ended unexpectedly" in runner.error and "-9" in runner.error
    assert runner.stop() and not runner.alive
