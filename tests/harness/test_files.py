"""The file harness of issue #15: run files (JSON Lines of StepRecord) and checkpoints, damaged at random.

Properties: reading a damaged file either returns well-typed data or raises the library's error
(``CheckpointError`` naming the file; ``InputError`` from ``StepRecord.from_dict``), never another
exception and never a warning; a failed ``load_into`` leaves the module as it was; a clean file
round-trips. Derandomized, with the example count of ``--harness-examples`` (default 3, x5 here
since each example is cheap).
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import dualnorm
from dualnorm import nn, runlog
from dualnorm.checkpoint import CheckpointError
from dualnorm.errors import DualnormError, InputError
from dualnorm.experiments.base import RunConfig
from dualnorm.records import LayerStats, StepRecord


def _examples(request) -> int:
    value = request.config.getoption("--harness-examples") or os.environ.get("DUALNORM_HARNESS_EXAMPLES")
    return 5 * (int(value) if value else 3)


def _settings(request):
    return settings(
        max_examples=_examples(request),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )


# --- strategies -------------------------------------------------------------------------------------
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
text = st.text(max_size=12)
json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | floats | text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def layer_stats(draw):
    opt = st.none() | floats
    return LayerStats(
        name=draw(text),
        kind=draw(st.sampled_from(["Linear", "BatchNorm1d", "ReLU", "inf"])),
        act_mean=draw(floats),
        act_std=draw(floats),
        act_min=draw(floats),
        act_max=draw(floats),
        hist_counts=draw(st.lists(st.integers(0, 10**6), max_size=5)),
        hist_edges=draw(st.lists(floats, max_size=6)),
        dead_frac=draw(opt),
        grad_norm=draw(opt),
        gamma_mean=draw(opt),
    )


@st.composite
def step_records(draw):
    return StepRecord(
        experiment=draw(st.sampled_from(["dying-relu", "init-sweep", "nan"])),
        variant=draw(text),
        step=draw(st.integers(0, 10**9)),
        epoch=draw(st.integers(0, 10**6)),
        loss=draw(floats),
        backend=draw(st.sampled_from(["numpy", "mlx"])),
        accuracy=draw(st.none() | floats),
        layers=draw(st.lists(layer_stats(), max_size=2)),
        elapsed_s=draw(st.floats(0, 1e6)),
        status=draw(st.sampled_from(["running", "done", "diverged"])),
        message=draw(text),
        extra=draw(st.dictionaries(st.sampled_from(["probe", "scale", "lr"]), json_values, max_size=2)),
    )


# --- what a well-typed record is (independent of the reader's own checks) -------------------------
def _num(v):
    return isinstance(v, float)


def assert_well_typed(record):
    assert isinstance(record, StepRecord)
    for name in ("experiment", "variant", "backend", "status", "message"):
        assert isinstance(getattr(record, name), str), name
    for name in ("step", "epoch"):
        value = getattr(record, name)
        assert isinstance(value, int) and not isinstance(value, bool), name
    assert _num(record.loss) and _num(record.elapsed_s)
    assert record.accuracy is None or _num(record.accuracy)
    assert isinstance(record.extra, dict) and isinstance(record.layers, list)
    for layer in record.layers:
        assert isinstance(layer, LayerStats)
        assert isinstance(layer.name, str) and isinstance(layer.kind, str)
        assert all(_num(getattr(layer, n)) for n in ("act_mean", "act_std", "act_min", "act_max"))
        assert all(isinstance(c, int) and not isinstance(c, bool) for c in layer.hist_counts)
        assert all(_num(e) for e in layer.hist_edges)
        for n in ("saturated_frac", "dead_frac", "grad_norm", "weight_norm", "gamma_mean", "beta_mean"):
            assert getattr(layer, n) is None or _num(getattr(layer, n)), n


def assert_same_record(a: StepRecord, b: StepRecord):
    # NaN != NaN: compare the JSON forms, where NaN is the string "nan".
    assert a.to_json() == b.to_json()


def quietly(fn, *args):
    """Call ``fn``; a warning is a failure here (warnings become errors inside the harness)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


def read_or_library_error(fn, *args, expected=(CheckpointError,)):
    try:
        return quietly(fn, *args)
    except expected as exc:
        assert isinstance(exc, DualnormError)
        assert "\n" not in str(exc).strip() or len(str(exc)) < 2000
        return exc
    # Anything else propagates and fails the test with its own traceback.


# --- StepRecord.from_dict -----------------------------------------------------------------------------
def test_from_dict_on_arbitrary_json(request):
    @_settings(request)
    @given(json_values)
    def run(value):
        result = read_or_library_error(StepRecord.from_dict, value, expected=(InputError,))
        if isinstance(result, StepRecord):
            assert_well_typed(result)

    run()


def test_from_dict_with_one_field_of_a_wrong_type(request):
    @_settings(request)
    @given(step_records(), st.data())
    def run(record, data):
        d = record.to_dict()
        where = d
        if d["layers"] and data.draw(st.booleans(), label="in a layer"):
            where = d["layers"][0]
        key = data.draw(st.sampled_from(sorted(where)), label="field")
        where[key] = data.draw(json_values, label="value")
        result = read_or_library_error(
            StepRecord.from_dict, json.loads(json.dumps(d)), expected=(InputError,)
        )
        if isinstance(result, StepRecord):
            assert_well_typed(result)
        else:
            assert key in str(result) or "layers" in str(result), str(result)

    run()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"loss": "abc"}, "'loss' must be a number, got a string"),
        ({"step": 1.5}, "'step' must be an integer, got a number"),
        ({"step": True}, "'step' must be an integer, got a boolean"),
        ({"layers": {"a": 1}}, "'layers' must be a list"),
        ({"layers": [3]}, "layers[0] must be a JSON object"),
        ({"experiment": None}, "'experiment' must be a string, got null"),
        ({"extra": []}, "'extra' must be a JSON object"),
        ({"accuracy": 10**400}, "too large for a float"),
        ({"bogus": 1}, "unknown keys ['bogus']"),
    ],
)
def test_from_dict_names_the_field(change, fragment):
    d = StepRecord("dying-relu", "bn", 1, 1, 0.5, "numpy").to_dict()
    d.update(change)
    with pytest.raises(InputError) as info:
        StepRecord.from_dict(d)
    assert fragment in str(info.value)


def test_from_dict_missing_field_and_not_an_object():
    d = StepRecord("dying-relu", "bn", 1, 1, 0.5, "numpy").to_dict()
    del d["loss"]
    with pytest.raises(InputError, match=r"missing \['loss'\]"):
        StepRecord.from_dict(d)
    with pytest.raises(TypeError, match="must be a JSON object, got a list"):
        StepRecord.from_dict([1, 2])


# --- run files (save_run / load_run) -----------------------------------------------------------------
def _saved(tmp_path, records, name="run.jsonl"):
    path = tmp_path / name
    dualnorm.save_run(records, RunConfig(steps=3, lr=0.1), path)
    return path


def test_run_file_round_trip(request, tmp_path):
    @_settings(request)
    @given(st.lists(step_records(), max_size=4))
    def run(records):
        path = _saved(tmp_path, records)
        loaded, config = quietly(dualnorm.load_run, path)
        assert config == RunConfig(steps=3, lr=0.1)
        assert len(loaded) == len(records)
        for a, b in zip(loaded, records, strict=True):
            assert_well_typed(a)
            assert_same_record(a, b)

    run()


@st.composite
def damaged(draw, data: bytes):
    how = draw(st.sampled_from(["truncate", "flip", "insert", "random", "line", "field", "huge", "deep"]))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    if how == "insert":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
    if how == "random":
        return draw(st.binary(max_size=200))
    lines = data.decode().split("\n")
    i = draw(st.integers(0, len(lines) - 2))
    if how == "line":  # a line replaced by another JSON value
        lines[i] = json.dumps(draw(json_values))
    elif how == "field":  # one field of one line gets a value of another type
        item = json.loads(lines[i])
        key = draw(st.sampled_from(sorted(item)))
        item[key] = draw(json_values)
        lines[i] = json.dumps(item)
    elif how == "huge":
        lines[i] = '{"message": "' + "x" * (runlog.MAX_LINE_CHARS + 1) + '"}'
    else:  # "deep"
        depth = draw(st.sampled_from([10, 5000, 200_000]))
        lines[i] = "[" * depth + "]" * depth
    return "\n".join(lines).encode()


def test_damaged_run_file_gives_records_or_a_clear_error(request, tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "MAX_LINE_CHARS", 4096)  # a "huge" line without writing 16 MB each time
    records = [
        StepRecord("dying-relu", "bn", 1, 1, 0.5, "numpy", layers=[LayerStats("0", "Linear", 0, 1, -1, 1)]),
        StepRecord("dying-relu", "bn", 2, 2, float("nan"), "numpy", status="diverged", extra={"p": [1.0]}),
    ]
    data = _saved(tmp_path, records, "good.jsonl").read_bytes()

    @_settings(request)
    @given(damaged(data))
    def run(bad):
        path = tmp_path / "bad.jsonl"
        path.write_bytes(bad)
        result = read_or_library_error(dualnorm.load_run, path)
        if isinstance(result, CheckpointError):
            assert str(path) in str(result)
        else:
            loaded, _config = result
            for record in loaded:
                assert_well_typed(record)

    run()


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"message": "' + "x" * (runlog.MAX_LINE_CHARS + 1) + '"}', "characters long"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        (
            '{"experiment": "x", "variant": "v", "step": "1", "epoch": 1, "loss": 1, "backend": "numpy"}',
            "'step'",
        ),
    ],
    ids=["huge-line", "deep-nesting", "string-step"],
)
def test_run_file_bad_line_names_the_line(tmp_path, line, fragment):
    path = _saved(tmp_path, [StepRecord("x", "v", 1, 1, 1.0, "numpy")])
    lines = path.read_text().split("\n")
    lines[1] = line
    path.write_text("\n".join(lines))
    with pytest.raises(CheckpointError) as info:
        dualnorm.load_run(path)
    assert "line 2" in str(info.value) and fragment in str(info.value)


def test_run_header_config_of_the_wrong_type(tmp_path):
    path = _saved(tmp_path, [])
    header = json.loads(path.read_text().split("\n")[0])
    header["config"]["steps"] = "many"
    path.write_text(json.dumps(header) + "\n")
    with pytest.raises(CheckpointError, match=r"config field 'steps' must be an integer or null, got 'many'"):
        dualnorm.load_run(path)


# --- checkpoints ----------------------------------------------------------------------------------------
def test_damaged_checkpoint_gives_arrays_or_a_clear_error(request, tmp_path, backend):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model(np.random.default_rng(0).normal(size=(5, 3)))
    good = tmp_path / "good.safetensors"
    dualnorm.save(model, good)
    data = good.read_bytes()
    before = {k: np.array(dualnorm.to_numpy(v)) for k, v in model.state_dict().items()}

    @_settings(request)
    @given(st.data())
    def run(draw):
        how = draw.draw(st.sampled_from(["truncate", "flip", "insert", "random", "header-json"]))
        if how == "truncate":
            bad = data[: draw.draw(st.integers(0, len(data) - 1))]
        elif how == "flip":
            i = draw.draw(st.integers(0, len(data) - 1))
            bad = data[:i] + bytes([data[i] ^ draw.draw(st.integers(1, 255))]) + data[i + 1 :]
        elif how == "insert":
            i = draw.draw(st.integers(0, len(data)))
            bad = data[:i] + draw.draw(st.binary(min_size=1, max_size=16)) + data[i:]
        elif how == "random":
            bad = draw.draw(st.binary(max_size=300))
        else:  # a well-framed header holding any JSON value
            header = json.dumps(draw.draw(json_values)).encode()
            bad = len(header).to_bytes(8, "little") + header
        path = tmp_path / "bad.safetensors"
        path.write_bytes(bad)
        result = read_or_library_error(dualnorm.load, path)
        if isinstance(result, CheckpointError):
            assert str(path) in str(result)
            with pytest.raises(CheckpointError):
                dualnorm.load_into(model, path)
            after = {k: np.array(dualnorm.to_numpy(v)) for k, v in model.state_dict().items()}
            for key, value in before.items():
                np.testing.assert_array_equal(after[key], value, err_msg=key)
        else:
            assert all(isinstance(v, np.ndarray) for v in result.values())

    run()
