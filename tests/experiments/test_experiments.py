"""Each experiment in a shortened, seeded form on every installed backend; record contents."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from dualnorm.experiments import EXPERIMENTS, RunConfig, get_experiment
from dualnorm.records import StepRecord


def _run(name, backend, **kw):
    return list(get_experiment(name).run(RunConfig(backend=backend, **kw)))


def _by_variant(records):
    out = {}
    for r in records:
        out.setdefault(r.variant, []).append(r)
    return out


def _curve(records):
    return [loss for r in records for loss in r.extra["losses"]]


def test_registry_order_and_contract():
    assert list(EXPERIMENTS) == [
        "dying-relu",
        "sigmoid-depth",
        "init-sweep",
        "norm-zoo",
        "small-batch",
        "simple-cnn",
    ]
    for exp in EXPERIMENTS.values():
        assert exp.summary and exp.title and exp.variants
        assert exp.default_steps > 0 and exp.default_lr > 0 and exp.default_record_every > 0
    with pytest.raises(ValueError, match="choose one of: dying-relu, sigmoid-depth"):
        get_experiment("nope")


# --- dying-relu ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dying_runs():
    runs = {}
    from dualnorm import available_backends

    for be in available_backends():
        runs[be] = _by_variant(_run("dying-relu", be, steps=400, record_every=100))
    return runs


def test_dying_relu_plain_stays_put_and_bn_learns(dying_runs):
    for runs in dying_runs.values():
        plain = _curve(runs["plain"])
        assert len(plain) == 400
        assert plain[0] == pytest.approx(3.3368e5, rel=1e-3)
        assert all(v == plain[0] for v in plain)  # exactly constant: every gradient is zero
        bn = _curve(runs["batchnorm"])
        assert bn[-1] < 0.6 * bn[0]
        last = runs["batchnorm"][-1]
        assert last.status == "done" and last.step == 400
        probe = last.extra["probe"]
        assert probe["input"] == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert probe["after_linear"] == pytest.approx([-10, -20, -30, -40, -50], rel=1e-3)
        assert probe["after_bn"] is not None and probe["after_relu"] == [
            max(0.0, v) for v in probe["after_bn"]
        ]
        assert runs["plain"][-1].extra["probe"]["after_bn"] is None
        assert runs["plain"][-1].extra["probe"]["after_relu"] == [0.0] * 5


def test_dying_relu_numpy_and_mlx_agree(dying_runs):
    if "mlx" not in dying_runs:
        pytest.skip("MLX is not installed")
    for variant in ("plain", "batchnorm"):
        a, b = _curve(dying_runs["numpy"][variant]), _curve(dying_runs["mlx"][variant])
        np.testing.assert_allclose(a, b, rtol=2e-3)


def test_record_contents(dying_runs):
    records = dying_runs["numpy"]["batchnorm"]
    assert [r.step for r in records] == [1, 100, 200, 300, 400]
    assert sum(len(r.extra["losses"]) for r in records) == 400
    rec = records[-1]
    assert [layer.kind for layer in rec.layers] == ["Linear", "BatchNorm1d", "ReLU"]
    assert [layer.name for layer in rec.layers] == ["0", "1", "2"]
    for layer in rec.layers:
        assert sum(layer.hist_counts) == 10_000
        assert len(layer.hist_edges) == len(layer.hist_counts) + 1 == 31
        assert layer.act_min <= layer.act_mean <= layer.act_max
        assert layer.grad_norm is not None and math.isfinite(layer.grad_norm)
    linear, bn, relu = rec.layers
    assert linear.weight_norm == pytest.approx(10.0, rel=1e-3)
    assert linear.param_grad_norm is not None
    assert bn.gamma_mean is not None and bn.beta_mean is not None
    assert bn.running_mean_mean == pytest.approx(-5005.0, rel=1e-3)
    assert relu.dead_frac == 0.0 and relu.gamma_mean is None
    assert dying_runs["numpy"]["plain"][-1].layers[-1].dead_frac == 1.0
    assert dying_runs["numpy"]["plain"][-1].layers[0].grad_norm == 0.0
    # plain Python values only, and the JSON round trip
    back = StepRecord.from_dict(json.loads(rec.to_json()))
    assert back.loss == rec.loss and back.layers[1].gamma_mean == bn.gamma_mean
    assert isinstance(rec.loss, float) and all(isinstance(v, float) for v in rec.extra["losses"])


# --- divergence, stop, determinism --------------------------------------------------------------


def test_divergence_stops_only_that_variant(backend):
    # At lr 10 weight norm blows up within a few steps on every seed and backend, while spectral
    # norm bounds each layer's gain, so it keeps training: a stable pair, unlike chaotic ones.
    runs = _by_variant(
        _run("norm-zoo", backend, steps=40, lr=10.0, record_every=20, variants=("weight", "spectral"))
    )
    last = runs["weight"][-1]
    assert last.status == "diverged" and last.diverged
    assert f"step {last.step}" in last.message and last.step < 40
    assert not math.isfinite(last.loss) and last.layers == []
    assert runs["spectral"][-1].status == "done" and runs["spectral"][-1].step == 40
    json.loads(last.to_json())  # NaN is written as the string "nan"


def test_huge_lr_kills_the_bn_relu_instead(backend):
    # dying-relu with a huge lr does not overflow: one step flips gamma and every ReLU dies
    runs = _by_variant(_run("dying-relu", backend, steps=50, lr=10.0, variants=("batchnorm",)))
    assert runs["batchnorm"][-1].status == "done"
    assert runs["batchnorm"][-1].layers[-1].dead_frac == 1.0


def test_divergence_then_next_variant_runs(backend):
    runs = _by_variant(_run("init-sweep", backend, steps=20, variants=("s00-plain", "s05-batchnorm")))
    assert runs["s00-plain"][-1].status == "diverged"
    assert runs["s05-batchnorm"][-1].status == "done"


def test_stop_event_is_honoured(backend):
    stop = threading.Event()
    seen = []
    for rec in get_experiment("dying-relu").run(
        RunConfig(backend=backend, steps=1000, record_every=10), stop
    ):
        seen.append(rec)
        if rec.step >= 30:
            stop.set()
    assert seen[-1].step == 30 and seen[-1].variant == "plain"
    stop.set()
    assert list(get_experiment("norm-zoo").run(RunConfig(backend=backend, steps=10), stop)) == []


def test_same_seed_same_results(backend):
    kw = {"steps": 10, "variants": ("s06-batchnorm",), "seed": 7}  # one epoch: its accuracy too
    a, b = _run("init-sweep", backend, **kw), _run("init-sweep", backend, **kw)
    assert _curve(a) == _curve(b) and a[-1].accuracy == b[-1].accuracy
    c = _run("init-sweep", backend, **{**kw, "seed": 8})
    assert _curve(c) != _curve(a)


def test_bad_config_is_rejected():
    exp = get_experiment("dying-relu")
    with pytest.raises(ValueError, match="choose from: plain, batchnorm"):
        exp.run(RunConfig(variants=("nope",)))
    with pytest.raises(ValueError, match="unknown option"):
        exp.run(RunConfig(options={"dataset": "digits"}))
    with pytest.raises(ValueError, match="steps"):
        exp.run(RunConfig(steps=0))
    with pytest.raises(ValueError, match="accuracy_mode"):
        get_experiment("init-sweep").run(RunConfig(options={"accuracy_mode": "x"}))


# --- sigmoid-depth -------------------------------------------------------------------------------


def test_sigmoid_depth_forward_view_matches_the_document(backend):
    runs = _by_variant(_run("sigmoid-depth", backend, variants=("forward-plain", "forward-batchnorm")))
    plain, bn = runs["forward-plain"][0], runs["forward-batchnorm"][0]
    assert plain.step == 0 and plain.status == "done" and plain.extra["forward_only"]
    # the document's numbers, recomputed here in float64 NumPy
    rs = np.random.RandomState(0)
    x = rs.rand(100, 20)
    sizes = [20, 64, 64, 64, 64, 64]
    ws = [rs.randn(sizes[i], sizes[i + 1]) for i in range(5)]
    bs = [rs.randn(sizes[i + 1]) for i in range(5)]
    a = x
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        a = 1 / (1 + np.exp(-(a @ w + b)))
        mean, var = plain.extra["mean_var"][i]
        assert mean == pytest.approx(a.mean(), abs=1e-5) and var == pytest.approx(a.var(), abs=1e-5)
    sat_plain, sat_bn = plain.extra["saturated"], bn.extra["saturated"]
    assert min(sat_plain[1:]) >= 0.3  # deep layers: a third or more in the flat ends
    assert max(sat_bn) <= 0.01
    for m, _var in bn.extra["mean_var"]:
        assert m == pytest.approx(0.5, abs=0.01)
    sig = [layer for layer in plain.layers if layer.kind == "Sigmoid"]
    assert len(sig) == 5 and all(sum(s.hist_counts) == 6400 for s in sig)
    assert sig[0].hist_edges[0] == 0.0 and sig[0].hist_edges[-1] == 1.0


def test_sigmoid_depth_training_view(backend):
    runs = _by_variant(
        _run("sigmoid-depth", backend, steps=30, record_every=15, variants=("plain", "batchnorm"))
    )
    for variant in ("plain", "batchnorm"):
        recs = runs[variant]
        curve = _curve(recs)
        assert len(curve) == 30 and curve[-1] < curve[0]
        assert recs[-1].accuracy is not None and len(recs[-1].extra["sigmoid_input_grad_norms"]) == 5
    first_plain = runs["plain"][0].extra["sigmoid_input_grad_norms"][0]
    first_bn = runs["batchnorm"][0].extra["sigmoid_input_grad_norms"][0]
    assert first_plain < 0.6 * first_bn  # the vanishing gradient without BN


# --- init-sweep and norm-zoo ---------------------------------------------------------------------


def test_init_sweep_short(backend):
    variants = ("s04-batchnorm", "s04-plain", "s12-batchnorm", "s12-plain")
    # two epochs: BN is at ~0.64 by then (0.77 after four), plain at chance (0.099) throughout
    runs = _by_variant(_run("init-sweep", backend, steps=20, variants=variants))
    assert list(runs) == list(variants)
    for variant, recs in runs.items():
        accs = [r.accuracy for r in recs if r.accuracy is not None]
        assert len(accs) == 2  # one per epoch of 10 iterations
        assert [r.epoch for r in recs if r.accuracy is not None] == [1, 2]
        extra = recs[-1].extra
        assert extra["scale_index"] == int(variant[1:3])
        assert extra["scale"] == pytest.approx(10 ** (-4 * extra["scale_index"] / 15))
        assert extra["normalization"] == ("batchnorm" if variant.endswith("batchnorm") else "none")
    # at a tiny scale plain training stalls at chance; BN learns
    assert runs["s12-plain"][-1].accuracy < 0.2
    assert runs["s12-batchnorm"][-1].accuracy > 0.4


def test_norm_zoo_every_variant_trains(backend):
    recs = _run("norm-zoo", backend, steps=6, record_every=3)
    runs = _by_variant(recs)
    assert list(runs) == list(get_experiment("norm-zoo").variants)
    for variant, rs in runs.items():
        assert rs[-1].status == "done", variant
        assert rs[-1].accuracy is not None and "test_accuracy" in rs[-1].extra
        assert all(math.isfinite(v) for r in rs for v in r.extra["losses"])
