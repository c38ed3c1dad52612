"""small-batch and simple-cnn in short, seeded forms on every backend; the CLI's --cifar10 and
per-epoch lines; compare; tracking a CNN."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import dualnorm
from dualnorm.cli import main
from dualnorm.data import DatasetError
from dualnorm.experiments import RunConfig, get_experiment
from dualnorm.experiments._images import accuracy, epoch_batches
from dualnorm.experiments.simple_cnn import NEEDS
from dualnorm.models import digits_cnn
from dualnorm.tracking import read_run
from tests.cnn.cifar_files import fake_batches, write_binary, write_python


def _run(name, backend, **kw):
    return list(get_experiment(name).run(RunConfig(backend=backend, **kw)))


# --- small-batch ------------------------------------------------------------------------------


def test_small_batch_variants_and_grid_fields():
    exp = get_experiment("small-batch")
    assert len(exp.variants) == 12 and exp.variants[:3] == ("b02-batchnorm", "b02-groupnorm", "b02-none")
    assert exp.variants[-1] == "b32-none"


def test_small_batch_short_run_records(backend):
    variants = ("b02-batchnorm", "b32-groupnorm")
    records = _run("small-batch", backend, steps=3, variants=variants, record_every=2)
    by_variant = {}
    for r in records:
        by_variant.setdefault(r.variant, []).append(r)
    assert list(by_variant) == list(variants)
    bn, gn = by_variant["b02-batchnorm"], by_variant["b32-groupnorm"]
    assert [r.step for r in bn] == [1, 2, 3] and bn[-1].status == "done"
    assert [len(r.extra["losses"]) for r in bn] == [1, 1, 1]
    for recs, index, size, norm in ((bn, 0, 2, "batchnorm"), (gn, 3, 32, "groupnorm")):
        extra = recs[-1].extra
        assert (extra["scale_index"], extra["scale"], extra["batch_size"], extra["normalization"]) == (
            index,
            size,
            size,
            norm,
        )
        assert 0.0 <= recs[-1].accuracy <= 1.0 and 0.0 <= extra["train_mode_accuracy"] <= 1.0
        kinds = [layer.kind for layer in recs[-1].layers]
        assert kinds.count("Conv2d") == 4 and kinds[-1] == "Linear"
        conv4 = next(layer for layer in recs[-1].layers if layer.name == "conv4")
        assert len(conv4.channel_mean) == 64 and len(conv4.channel_std) == 64
    assert gn[-1].extra["train_mode_accuracy"] == gn[-1].accuracy  # no batch statistics: one accuracy
    # the linear scaling rule: lr * B / 32
    assert (bn[0].extra["lr"], gn[0].extra["lr"]) == pytest.approx((0.1 * 2 / 32, 0.1))
    assert bn[0].extra["grid_label"] == "batch 2"


def test_small_batch_epochs_option_and_errors():
    exp = get_experiment("small-batch")
    with pytest.raises(dualnorm.InputError, match="epochs'\\] must be a positive integer"):
        exp.run(RunConfig(backend="numpy", options={"epochs": 0}))
    with pytest.raises(dualnorm.InputError, match="unknown option"):
        exp.run(RunConfig(backend="numpy", options={"cifar10": "x"}))


def test_train_mode_accuracy_uses_batch_statistics_and_leaves_no_trace(rng):
    """Train-mode accuracy normalizes each chunk by itself; eval mode uses the running averages."""
    with dualnorm.use_backend("numpy"):
        dualnorm.manual_seed(0)
        model = digits_cnn("batch")
    be = model.backend
    x = rng.uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)
    labels = np.arange(8) % 10
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    chunk2 = accuracy(be, model, x, labels, chunk=2, train_mode=True)
    after = model.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)  # running statistics untouched
    expected = []
    for start in range(0, 8, 2):
        expected.append(np.argmax(be.to_numpy(model(x[start : start + 2])), axis=1))
    assert chunk2 == pytest.approx(np.mean(np.concatenate(expected) == labels))
    assert model.training
    eval_acc = accuracy(be, model, x, labels, chunk=300)
    assert model.training and 0.0 <= eval_acc <= 1.0


def test_epoch_batches_shuffle_each_epoch_and_cover_the_set(rng):
    with dualnorm.use_backend("numpy"):
        be = dualnorm.get_backend()
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    batch = epoch_batches(be, x, y, 4, np.random.default_rng(0), drop_last=True)  # 2 steps per epoch
    first = np.concatenate([batch(1)[1], batch(2)[1]])
    second = np.concatenate([batch(3)[1], batch(4)[1]])
    assert len(set(first.tolist())) == 8 and len(set(second.tolist())) == 8
    assert first.tolist() != second.tolist()
    last = epoch_batches(be, x, y, 4, np.random.default_rng(0))  # keeps the short last batch
    assert [len(last(s)[1]) for s in (1, 2, 3)] == [4, 4, 2]


# --- simple-cnn -------------------------------------------------------------------------------


def test_simple_cnn_without_cifar_runs_the_random_check(backend):
    records = _run("simple-cnn", backend, steps=1)
    assert {r.variant for r in records} == {"lrn"}  # the seed's network only, unless asked
    first = records[0]
    assert NEEDS in first.extra["print"] and "random images" in first.extra["print"]
    assert first.extra["dataset"] == "random" and first.extra["lr"] == pytest.approx(0.01)
    assert records[-1].status == "done" and records[-1].accuracy is not None
    kinds = [layer.kind for layer in records[-1].layers]
    assert kinds.count("LocalResponseNorm") == 3 and kinds.count("MaxPool2d") == 3


def test_simple_cnn_on_fake_cifar_steps_the_lr_per_epoch(tmp_path):
    path = write_python(tmp_path / "cifar", fake_batches(per_batch=1))  # 5 training images: 1 step per epoch
    config = {"options": {"cifar10": str(path)}, "variants": ("batch",), "steps": 8, "record_every": 4}
    records = _run("simple-cnn", "numpy", **config)
    assert [(r.step, r.epoch) for r in records] == [(1, 1), (4, 4), (8, 8)]
    assert all(r.accuracy is not None for r in records)  # every recorded step ends an epoch here
    np.testing.assert_allclose([r.extra["lr"] for r in records], [0.01, 0.01, 0.001])  # StepLR(7, 0.1)
    lines = [r.extra["print"] for r in records]
    assert lines[0].startswith("[batch] epoch 1/8  train loss ") and "test acc " in lines[0]
    assert all(r.extra["dataset"] == "cifar10" for r in records)
    assert records[0].extra["train_loss"] == pytest.approx(records[0].loss)  # one step in the epoch
    assert records[1].extra["train_loss"] == pytest.approx(np.mean(records[1].extra["losses"]))


def test_simple_cnn_bad_cifar_path_fails_before_the_first_record(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        get_experiment("simple-cnn").run(RunConfig(options={"cifar10": str(tmp_path / "nope")}))


def test_cli_run_simple_cnn_prints_one_line_per_epoch(tmp_path, capsys):
    path = write_binary(tmp_path / "cifar", fake_batches(per_batch=1))
    code = main(
        ["run", "simple-cnn", "--cifar10", str(path), "--steps", "2", "--quiet", "--out", str(tmp_path / "r")]
    )
    out = capsys.readouterr().out
    assert code == 0
    epoch_lines = [line for line in out.splitlines() if line.startswith("[lrn] epoch ")]
    assert [line.split()[2] for line in epoch_lines] == ["1/2", "2/2"]
    assert all(" s" in line and "test acc" in line for line in epoch_lines)
    records, meta = read_run(tmp_path / "r")
    assert meta["status"] == "finished" and meta["variants"] == ["lrn"] and records[-1].step == 2


def test_cli_run_simple_cnn_without_cifar_says_what_it_needs(tmp_path, capsys):
    assert main(["run", "simple-cnn", "--steps", "1", "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert "pass --cifar10 PATH" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "simple-cnn", "--cifar10", "nope"], "CIFAR-10 path 'nope' does not exist"),
        (["run", "dying-relu", "--cifar10", "x"], "dying-relu does not use CIFAR-10"),
    ],
)
def test_cli_cifar_errors_are_one_line(argv, match, capsys):
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


# --- compare and tracking ---------------------------------------------------------------------


@pytest.mark.mlx
def test_compare_small_batch(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlx")
    root = str(Path(__file__).resolve().parents[2])  # the children import this checkout's dualnorm
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    argv = ["compare", "small-batch", "--backends", "numpy,mlx-cpu", "--steps", "3", "--no-tui"]
    argv += ["--variants", "b02-batchnorm,b08-groupnorm", "--out", str(tmp_path / "c")]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out  # three steps agree within compare's default tolerance
    assert "agree" in out and "b08-groupnorm" in out


def test_track_a_cnn(backend, tmp_path, rng):
    from dualnorm.losses import CrossEntropyLoss
    from dualnorm.optim import SGD

    model = digits_cnn("group")
    loss_fn = CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = model.backend.asarray(rng.uniform(0, 1, (4, 1, 8, 8)).astype(np.float32))
    y = model.backend.asarray(np.array([0, 1, 2, 3]), model.backend.int64)
    with dualnorm.track(model, name="cnn", every=2, dir=tmp_path / "run") as run:
        for step in range(1, 4):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            run.log(step, loss)
    records, meta = read_run(tmp_path / "run")
    assert [bool(r.layers) for r in records] == [True, True, False]
    layers = {layer.name: layer for layer in records[-2].layers}
    assert list(layers)[:3] == ["conv1", "gn1", "relu1"]
    conv1, gn1, relu1 = layers["conv1"], layers["gn1"], layers["relu1"]
    assert len(conv1.channel_mean) == 16 and conv1.weight_norm > 0 and conv1.param_grad_norm > 0
    assert gn1.gamma_mean is not None and gn1.beta_mean is not None and len(gn1.channel_std) == 16
    assert relu1.dead_channel_frac is not None and sum(relu1.hist_counts) == 4 * 16 * 8 * 8
    assert conv1.grad_norm is not None and "Conv2d(1, 16" in meta["model"]
