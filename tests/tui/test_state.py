"""Unit tests of the UI model: smoothing, downsampling, sparklines, histograms, the buffer, RunState."""

from __future__ import annotations

import math
import threading

import pytest

pytest.importorskip("textual")

from fakes import FakeExperiment, fake_experiments
from hypothesis import given
from hypothesis import strategies as st

from dualnorm.experiments.base import RunConfig
from dualnorm.records import StepRecord
from tui.state import (
    RecordBuffer,
    RunState,
    downsample_minmax,
    ellipsize,
    ema_debiased,
    fmt,
    resample_counts,
    sparkline,
    text_histogram,
)


def test_ema_debiased_matches_hand_computation():
    w = 0.5
    values = [4.0, 2.0, 8.0]
    # last_1 = 0.5*4 = 2, debias 1-0.5 = 0.5 -> 4
    # last_2 = 0.5*2 + 0.5*2 = 2, debias 1-0.25 = 0.75 -> 2.6667
    # last_3 = 0.5*2 + 0.5*8 = 5, debias 1-0.125 = 0.875 -> 5.7143
    out = ema_debiased(values, w)
    assert out == pytest.approx([4.0, 2.0 / 0.75, 5.0 / 0.875])


def test_ema_first_value_is_unbiased_and_constant_stays_constant():
    assert ema_debiased([7.0] * 20, 0.9) == pytest.approx([7.0] * 20)
    assert ema_debiased([], 0.9) == []
    assert ema_debiased([1.0, 2.0], 0.0) == [1.0, 2.0]


def test_ema_passes_nan_through_without_poisoning():
    out = ema_debiased([1.0, float("nan"), 1.0], 0.6)
    assert out[0] == pytest.approx(1.0) and math.isnan(out[1]) and out[2] == pytest.approx(1.0)


def test_ema_rejects_bad_weight():
    with pytest.raises(ValueError):
        ema_debiased([1.0], 1.0)


def test_downsample_keeps_extremes_and_order():
    xs = list(range(1000))
    ys = [math.sin(x / 30) for x in xs]
    ys[517] = 50.0  # a spike must survive
    dx, dy = downsample_minmax(xs, ys, 40)
    assert len(dx) <= 80
    assert dx == sorted(dx)
    assert 50.0 in dy
    assert min(dy) == pytest.approx(min(ys))


def test_downsample_short_curve_unchanged_and_drops_nan():
    dx, dy = downsample_minmax([1, 2, 3], [1.0, float("nan"), 3.0], 10)
    assert dx == [1.0, 3.0] and dy == [1.0, 3.0]
    assert downsample_minmax([], [], 10) == ([], [])


def test_sparkline():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1.0, 1.0]) == "▅▅"
    assert sparkline([None, float("nan")]) == ""
    assert sparkline([0, None, 1]) == "▁ █"
    assert len(sparkline(range(100), 10)) == 10


def test_text_histogram_shape_and_peak():
    lines = text_histogram([0, 1, 4, 1, 0], 5, 3)
    assert len(lines) == 3 and all(len(line) == 5 for line in lines)
    assert lines[0][2] == "█"  # the peak reaches the top line
    assert lines[-1][0] == " "  # empty bins stay empty
    assert sum(resample_counts([1, 2, 3, 4], 2)) == pytest.approx(10)
    assert resample_counts([5, 5], 4) == pytest.approx([2.5, 2.5, 2.5, 2.5])


def test_fmt():
    assert fmt(None) == "-"
    assert fmt(float("nan")) == "nan"
    assert fmt(0.5) == "0.5"
    assert fmt(1e-7) == "1.00e-07"
    assert fmt(-7.31e-05) == "-7.31e-05"  # was cut to "-7.31e-0" by a narrow column


@given(st.floats(min_value=-1e300, max_value=1e300))
def test_fmt_fits_its_width_and_keeps_the_value(value):
    for width in (9, 8):
        text = fmt(value, width=width)
        assert len(text) <= width
        if value != 0:  # the sign and the order of magnitude survive, with at least one digit
            back = float(text)
            assert back == pytest.approx(value, rel=0.5 if abs(value) < 1e5 else 1.0)


def test_ellipsize_cuts_at_the_end_with_a_mark():
    assert ellipsize("SpectralNorm", 9) == "Spectral…"
    assert ellipsize("ReLU", 9) == "ReLU"
    assert ellipsize("abc", 0) == ""


def test_the_baseline_curve_stays_plotted_among_many():
    names = ("none", *(f"v{i}" for i in range(9)))
    state = RunState(names)
    state.apply([StepRecord("zoo", name, 1, 0, 1.0, "numpy") for name in names])
    shown, total = state.plotted(8)
    assert total == 10 and len(shown) == 8 and shown[0] == "none"
    state.focus = "v0"
    shown, _ = state.plotted(8)
    assert {"none", "v0"} <= set(shown)
    assert "none" not in state.plotted(2, keep_first=False)[0]


def test_record_buffer_concurrent_append_and_drain():
    buf = RecordBuffer()
    n = 20000

    def produce():
        for i in range(n):
            buf.append(i)

    t = threading.Thread(target=produce)
    t.start()
    got = []
    while t.is_alive() or len(buf):
        got.extend(buf.drain())
    t.join()
    assert got == list(range(n))
    buf.append(1)
    buf.append(2)
    assert buf.drain(limit=1) == [1] and buf.drain() == [2]


def test_run_state_folds_records_and_reports_changes():
    exp = fake_experiments(steps=10)["dying-relu"]
    state = RunState(exp.variants)
    records = list(exp.run(RunConfig()))
    ch = state.apply(records[:5])
    assert ch.curves == {"plain"} and ch.layers == {"plain"} and ch.probe == {"plain"}
    assert state.total_steps == 5
    state.apply(records[5:])
    assert state.total_steps == 20
    assert state.variants["batchnorm"].probe["after_bn"] is not None
    rows = state.layer_rows()
    assert {r[0] for r in rows} == {"plain", "batchnorm"}
    xs, ys = state.curve("batchnorm", width=4, smoothing=0.9, log_y=True)
    assert len(xs) <= 8 and all(y < 6 for y in ys)


def test_run_state_marks_divergence():
    exp = FakeExperiment("diverge", "diverge", steps=20)
    state = RunState(exp.variants)
    ch = state.apply(exp.run(RunConfig()))
    assert ch.status
    (v,) = state.diverged()
    assert v.name == "plain" and v.diverged_at == 10 and v.status == "diverged"
    xs, _ = state.curve("plain", width=100)
    assert max(xs) < 10  # NaN points are not drawn


def test_run_state_sweep_cells():
    exp = fake_experiments(steps=12)["init-sweep"]
    state = RunState(exp.variants)
    ch = state.apply(exp.run(RunConfig()))
    assert ch.sweep == set(range(16))
    cell = state.sweep[3]
    assert set(cell) == {"scale", "batchnorm", "none"}
    assert state.variants[cell["batchnorm"]].accuracies
    # with 32 variants the table shows only the latest two
    assert {r[0] for r in state.layer_rows()} == {"s15-batchnorm", "s15-plain"}


def test_steps_per_second():
    exp = fake_experiments(steps=10)["dying-relu"]
    state = RunState(exp.variants)
    recs = list(exp.run(RunConfig()))
    state.apply(recs[:2], now=0.0)
    state.apply(recs[2:6], now=2.0)
    assert state.steps_per_second == pytest.approx(2.0)


def test_run_state_memory_is_bounded_and_keeps_recent_steps_and_spikes():
    from dualnorm.records import StepRecord
    from tui.state import VariantState

    state = RunState()
    n = 24_500  # 3x MAX_POINTS, rounded to the batches
    spike_at = 100
    for start in range(0, n, 500):
        recs = [
            StepRecord("long", "v", s, 0, 50.0 if s == spike_at else 1.0 / s, "numpy")
            for s in range(start + 1, start + 501)
        ]
        state.apply(recs)
    v = state.variants["v"]
    assert len(v.steps) == len(v.losses) <= VariantState.MAX_POINTS
    assert len(state.records) == RunState.RECENT_RECORDS and state.records_seen == n
    recent = VariantState.RECENT_POINTS
    assert v.steps[-recent:] == list(range(n - recent + 1, n + 1))  # recent steps at full resolution
    assert v.steps == sorted(v.steps) and v.steps[0] == 1  # history still starts at the start
    assert 50.0 in v.losses  # min/max downsampling keeps the old spike
    assert v.last_step == n and state.total_steps == n
