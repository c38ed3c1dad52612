"""User experiments: the build_task contract, loading from a file and from an entry point."""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import pytest

from dualnorm.experiments import EXPERIMENTS, Experiment, RunConfig
from dualnorm.experiments.loading import ENTRY_POINT_GROUP, ExperimentLoadError, load_experiment

SOURCE = Path(__file__).with_name("user_exp_source.py")


@pytest.fixture
def user_file(tmp_path):
    target = tmp_path / "my_experiments.py"
    shutil.copy(SOURCE, target)
    return target


def test_file_experiment_trains_on_every_backend(backend, user_file):
    exp = load_experiment(f"{user_file}:Wider")
    assert isinstance(exp, Experiment) and exp.name == "wider"
    records = list(exp.run(RunConfig(backend=backend, steps=10)))
    by = {}
    for r in records:
        by.setdefault(r.variant, []).append(r)
    assert list(by) == ["w2", "w16"]
    for recs in by.values():
        assert [r.step for r in recs] == [1, 5, 10] and recs[-1].status == "done"
        assert recs[0].backend == backend and recs[0].layers[1].kind == "BatchNorm1d"
        losses = [v for r in recs for v in r.extra["losses"]]
        assert len(losses) == 10 and losses[-1] < losses[0]
    # seeded: the same records again
    again = list(exp.run(RunConfig(backend=backend, steps=10)))
    assert [r.loss for r in again] == [r.loss for r in records]


def test_entry_point_experiment(monkeypatch, user_file):
    monkeypatch.syspath_prepend(str(user_file.parent))
    ep = metadata.EntryPoint(name="wider-ep", value="my_experiments:Wider", group=ENTRY_POINT_GROUP)
    real = metadata.entry_points

    def fake(**kw):
        if kw.get("group") == ENTRY_POINT_GROUP:
            return metadata.EntryPoints([ep])
        return real(**kw)

    monkeypatch.setattr(metadata, "entry_points", fake)
    exp = load_experiment("wider-ep")
    assert exp.name == "wider" and type(exp).__name__ == "Wider"
    assert len(list(exp.run(RunConfig(backend="numpy", steps=2, variants=("w2",))))) == 2
    with pytest.raises(ExperimentLoadError, match="'wider-ep'"):  # listed among the choices
        load_experiment("nope")


def test_builtin_names_still_resolve():
    assert load_experiment("dying-relu") is EXPERIMENTS["dying-relu"]


@pytest.mark.parametrize(
    ("body", "spec_name", "needle"),
    [
        ("import not_a_module_anywhere\n", "X", "importing .* failed: ModuleNotFoundError"),
        ("x = (\n", "X", "importing .* failed: SyntaxError"),
        ("class X:\n    pass\n", "X", "is a type, expected a dualnorm.experiments.Experiment subclass"),
        (
            "from dualnorm.experiments import Experiment\nclass Y(Experiment):\n    pass\n",
            "X",
            "has no 'X'.*: Y",
        ),
    ],
)
def test_broken_user_files(tmp_path, body, spec_name, needle):
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(ExperimentLoadError, match=needle) as info:
        load_experiment(f"{path}:{spec_name}")
    assert str(path) in str(info.value)
    if "importing" in needle:
        assert "Traceback" in info.value.details


def test_missing_file(tmp_path):
    with pytest.raises(ExperimentLoadError, match="no such file"):
        load_experiment(f"{tmp_path / 'none.py'}:X")


def test_a_user_experiment_that_raises_while_training(user_file):
    exp = load_experiment(f"{user_file}:Broken")
    with pytest.raises(RuntimeError, match="on purpose"):
        list(exp.run(RunConfig(backend="numpy")))
