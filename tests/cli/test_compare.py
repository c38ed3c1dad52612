"""dualnorm compare: the comparison library on made-up streams, and the command on real runs.

The command's agreement figures are checked against runs made separately with the library
and differences computed here, independently of dualnorm.compare.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

import dualnorm
from dualnorm.cli import main
from dualnorm.compare import LiveComparison, compare_records, rel_diff
from dualnorm.experiments import EXPERIMENTS, RunConfig
from dualnorm.records import LayerStats, StepRecord

HAS_MLX = importlib.util.find_spec("mlx") is not None
mlx_only = pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")


def _stream(backend: str, losses: list[float], variant: str = "v", every: int = 2) -> list[StepRecord]:
    """Records every ``every`` steps, each carrying the losses since the previous one."""
    records, pending = [], []
    for step, loss in enumerate(losses, start=1):
        pending.append(loss)
        last = step == len(losses) or not math.isfinite(loss)
        if step % every == 0 or last:
            status = "diverged" if not math.isfinite(loss) else ("done" if last else "running")
            layer = LayerStats("0", "Linear", act_mean=loss / 10, act_std=1.0, act_min=0.0, act_max=1.0)
            records.append(
                StepRecord(
                    "e",
                    variant,
                    step,
                    step,
                    loss,
                    backend,
                    layers=[layer],
                    status=status,
                    extra={"losses": pending},
                )
            )
            pending = []
            if not math.isfinite(loss):
                break
    return records


def test_rel_diff():
    assert rel_diff(1.0, 1.0) == 0.0 and rel_diff(0.0, 0.0) == 0.0
    assert rel_diff(2.0, 1.0) == pytest.approx(0.5)
    assert rel_diff(float("nan"), 1.0) == math.inf and rel_diff(1.0, float("inf")) == math.inf
    assert rel_diff(float("nan"), float("nan")) == 0.0


def test_loss_differences_per_step_and_first_step_over_tol():
    ref = [4.0, 3.0, 2.0, 1.0, 0.5]
    other = [4.0, 3.0, 2.02, 1.0, 0.6]
    c = compare_records({"a": _stream("numpy", ref), "b": _stream("mlx", other)}, tol=0.05)
    b = c.backends["b"]
    expected = [abs(x - y) / max(abs(x), abs(y)) for x, y in zip(ref, other, strict=True)]
    assert b.max_rel_loss_diff == pytest.approx(max(expected))
    assert b.variants["v"].max_diff_step == 5
    assert b.first_over_tol == ("v", 5)  # step 3 differs by 1 %, under the tolerance
    assert b.variants["v"].compared_steps == 5
    assert not c.agree
    assert compare_records({"a": _stream("numpy", ref), "b": _stream("mlx", other)}, tol=0.2).agree
    # act_mean is loss / 10 in these streams, recorded at steps 2, 4 and 5 (the last)
    value, rel, where = b.layer_diffs["act_mean"]
    assert value == pytest.approx(0.01) and rel == pytest.approx(0.1 / 0.6) and where == "v step 5 layer 0"


def test_one_backend_diverging_is_a_disagreement_at_that_step_not_a_crash():
    ref = [4.0, 3.0, 2.0, 1.0, 0.5, 0.25]
    other = [4.0, 3.0, float("nan")]
    c = compare_records({"numpy": _stream("numpy", ref), "mlx-cpu": _stream("mlx", other)}, tol=1e-3)
    b = c.backends["mlx-cpu"]
    assert b.first_over_tol == ("v", 3)
    assert b.max_rel_loss_diff == math.inf
    assert b.diverged == ["v"]
    assert not c.agree
    payload = json.dumps(c.to_dict(), allow_nan=False)  # NaN/Inf written as strings
    assert json.loads(payload)["backends"]["mlx-cpu"]["max_rel_loss_diff"] == "inf"
    both = compare_records({"a": _stream("numpy", other), "b": _stream("mlx", other)}, tol=0.0)
    assert both.agree  # diverging at the same step on both is agreement


def test_live_comparison_in_any_interleaving_equals_the_batch_result():
    ref = [4.0, 3.5, 3.0, 2.0, 1.0, 0.7]
    other = [4.0, 3.4, 3.1, 2.0, 1.1, 0.7]
    a, b = _stream("numpy", ref), _stream("mlx", other)
    batch = compare_records({"a": a, "b": b}, tol=0.01).to_dict()
    live = LiveComparison(["a", "b"], tol=0.01)
    snapshots = []
    for rb, ra in zip(b, a, strict=True):  # the other stream first: the reference arrives late
        live.add("b", rb)
        live.add("a", ra)
        snapshots.append(live.result().backends["b"].max_rel_loss_diff)
    assert live.result().to_dict() == batch
    assert snapshots == sorted(snapshots)  # "so far": never decreases


def test_bad_comparison_input():
    with pytest.raises(dualnorm.InputError):
        LiveComparison(["a", "a"], tol=0.1)
    with pytest.raises(dualnorm.InputError):
        LiveComparison(["a", "b"], tol=-1)
    with pytest.raises(dualnorm.InputError, match="unknown stream"):
        LiveComparison(["a", "b"], tol=0.1).add("c", _stream("numpy", [1.0])[0])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compare", "dying-relu", "--backends", "numpy,cuda"], "unknown backend 'cuda'"),
        (["compare", "dying-relu", "--backends", "numpy"], "at least two backends"),
        (["compare", "nope", "--backends", "numpy,numpy2"], "unknown backend"),
        (["compare", "dying-relu", "--tol", "-1"], "number >= 0"),
    ],
)
def test_compare_bad_input_exits_2(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def _library_losses(backend: str, device: str, steps: int) -> tuple[dict[int, float], dict[tuple, float]]:
    """Per-step losses and recorded act_mean per (step, layer), from a run made with the library."""
    exp = EXPERIMENTS["dying-relu"]
    config = RunConfig(backend=backend, steps=steps, seed=3, variants=("batchnorm",), record_every=5)
    with dualnorm.use_backend(backend, device=device):
        records = list(exp.run(config))
    losses, act = {}, {}
    for r in records:
        first = r.step - len(r.extra["losses"]) + 1
        for i, loss in enumerate(r.extra["losses"]):
            losses[first + i] = loss
        for layer in r.layers:
            act[(r.step, layer.name)] = layer.act_mean
    return losses, act


@mlx_only
def test_compare_numpy_against_mlx_cpu_matches_separate_runs(tmp_path, capsys):
    steps = 20
    ref, ref_act = _library_losses("numpy", "cpu", steps)
    mlx, mlx_act = _library_losses("mlx", "cpu", steps)
    diffs = {s: abs(ref[s] - mlx[s]) / max(abs(ref[s]), abs(mlx[s])) for s in ref}
    largest = max(diffs.values())
    act_largest = max(abs(ref_act[k] - mlx_act[k]) for k in ref_act)
    if largest == 0:
        pytest.skip("the two backends agree exactly here: no tolerance to place between them")
    tol = largest / 2
    first = min(s for s, d in diffs.items() if d > tol)

    path = tmp_path / "c.json"
    argv = ["compare", "dying-relu", "--backends", "numpy,mlx-cpu", "--steps", str(steps), "--seed", "3"]
    argv += ["--variants", "batchnorm", "--record-every", "5", "--no-tui", "--json", str(path)]
    assert main([*argv, "--tol", repr(tol), "--out", str(tmp_path / "runs")]) == 1  # they disagree
    result = json.loads(path.read_text())
    mine = result["backends"]["mlx-cpu"]
    assert result["reference"] == "numpy" and result["agree"] is False
    assert mine["max_rel_loss_diff"] == pytest.approx(largest, rel=1e-12)
    assert mine["first_over_tol"] == {"variant": "batchnorm", "step": first}
    assert mine["layer_diffs"]["act_mean"]["max_abs_diff"] == pytest.approx(act_largest, rel=1e-9, abs=1e-15)
    assert mine["steps"] == steps and mine["device"] == "cpu" and mine["steps_per_s"] > 0
    # each backend left a run directory the viewer can reopen, named in the JSON
    assert result["run_dirs"]["mlx-cpu"] == str(tmp_path / "runs" / "mlx-cpu")
    assert (tmp_path / "runs" / "mlx-cpu" / "records.jsonl").exists()
    out = capsys.readouterr().out
    assert "disagree" in out and "mlx-cpu" in out

    assert main([*argv, "--tol", repr(largest * 2)]) == 0  # within a looser tolerance: exit 0
    assert json.loads(path.read_text())["agree"] is True


def test_compare_device_names_the_device_of_every_mlx_backend():
    from dualnorm.backends import get_backend
    from dualnorm.cli import _on_device

    numpy = get_backend("numpy")
    assert _on_device({"numpy": numpy}, "cpu") == {"numpy": numpy}  # NumPy keeps its only device
    with pytest.raises(dualnorm.BackendError, match="unknown device 'tpu'; choose from: cpu"):
        _on_device({"numpy": numpy}, "tpu")
    if HAS_MLX:
        on_cpu = _on_device({"numpy": numpy, "mlx-cpu": get_backend("mlx-cpu")}, "CPU")
        assert list(on_cpu) == ["numpy", "mlx-cpu"]


@mlx_only
def test_compare_device_cpu_runs_numpy_against_mlx_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "c.json"
    argv = ["compare", "dying-relu", "--device", "cpu", "--steps", "2", "--variants", "plain", "--no-tui"]
    assert main([*argv, "--json", str(out), "--out", str(tmp_path / "runs")]) == 0
    assert set(json.loads(out.read_text())["run_dirs"]) == {"numpy", "mlx-cpu"}
    assert main(["compare", "dying-relu", "--device", "tpu", "--no-tui"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
