"""Record files as the UI reads them: truncated, random bytes, wrong JSON types, huge lines.

Always either records (every one of which the UI's state folds without error) or a RunFileError
naming the file and line; never another exception. ``DUALNORM_FUZZ_EXAMPLES`` raises the count.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualnorm.records import LayerStats, StepRecord
from dualnorm.tracking import MAX_LINE_BYTES, RunFileError, RunReader, read_run

EXAMPLES = int(os.environ.get("DUALNORM_FUZZ_EXAMPLES", "60"))
GOOD = StepRecord(
    "e", "v", 3, 1, 0.5, "numpy", accuracy=0.25,
    layers=[LayerStats("0", "ReLU", 0.1, 1.0, 0.0, 2.0, [1, 2], [0.0, 1.0, 2.0], dead_frac=0.5)],
    extra={"losses": [0.7, 0.5], "probe": {"input": [1.0]}, "scale_index": 2},
)  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _mutations():
    base = GOOD.to_dict()
    keys = [*base, "layers.0.act_mean", "layers.0.hist_counts", "extra.losses", "extra.probe"]
    return st.tuples(st.sampled_from(keys), json_values)


def _apply(base: dict, key: str, value) -> dict:
    data = json.loads(json.dumps(base))
    target = data
    *path, last = key.split(".")
    for part in path:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value
    return data


def _fold(records) -> None:
    pytest.importorskip("textual")
    from tui.state import RunState

    RunState().apply(records)  # must not raise on anything the reader let through


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations())
def test_wrong_json_types_are_a_clear_error_or_a_usable_record(tmp_path, mutation):
    key, value = mutation
    path = tmp_path / "r.jsonl"
    line = json.dumps(_apply(GOOD.to_dict(), key, value))
    path.write_text(GOOD.to_json() + "\n" + line + "\n")
    try:
        records, _ = read_run(path)
    except RunFileError as exc:
        assert exc.line == 2 and len(exc.records) == 1 and str(path) in str(exc)
        return
    _fold(records)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), cut=st.integers(0, 400))
def test_random_bytes_and_truncation(tmp_path, data, cut):
    path = tmp_path / "r.jsonl"
    good = (GOOD.to_json() + "\n").encode()
    path.write_bytes((good + data + b"\n" + good)[: len(good) + cut])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn last line is a warning by design
            records, _ = read_run(path)
    except RunFileError as exc:
        assert str(path) in str(exc)
        records = exc.records
    _fold(records)


def test_a_huge_line_without_newline_is_an_error_not_unbounded_memory(tmp_path):
    path = tmp_path / "r.jsonl"
    with open(path, "wb") as fh:
        fh.write((GOOD.to_json() + "\n").encode())
        fh.write(b"x" * (MAX_LINE_BYTES + 10))
    reader = RunReader(path)
    got = []
    while True:
        new = reader.poll()
        got.extend(new)
        if not new and (reader.error or reader.offset >= path.stat().st_size):
            break
    assert len(got) == 1 and reader.error is not None and "line 2" in str(reader.error)
