"""dualnorm.track on torch.nn models: the statistics, the hooks' lifetime, the examples, the viewer.

The expected statistics are computed here from a replay of the recorded step (the same
weights and batch, intermediate outputs kept with ``retain_grad``), independently of the
watcher's hooks.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import dualnorm  # noqa: E402
from dualnorm.cli import main as cli_main  # noqa: E402

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models, a shared machine: one intra-op thread is faster and steadier."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 3), nn.Sigmoid())

    def forward(self, x):
        return self.head(self.features(x))


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def _replay(model, x, y):
    """The recorded step, redone on a copy: {path: (output, grad of output)}, and the parameter grads."""
    model = copy.deepcopy(model)
    outputs = {}

    def keep(name):
        def hook(module, args, out):
            out.retain_grad()
            outputs[name] = out

        return hook

    for name, module in model.named_modules():
        if name and not list(module.children()):
            module.register_forward_hook(keep(name))
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    grads = {name: {k: p.grad.clone() for k, p in m.named_parameters(recurse=False)}
             for name, m in model.named_modules()}  # fmt: skip
    return {k: (v.detach().clone(), v.grad.clone()) for k, v in outputs.items()}, grads


@pytest.mark.parametrize("host", [True, False], ids=["reduced-by-numpy", "reduced-on-device"])
def test_records_carry_activation_gradient_and_bn_statistics_by_module_path(tmp_path, host):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {}
    with dualnorm.track(model, dir=tmp_path / "run", every=3) as run:
        run._watcher.host = host  # CPU tensors go to NumPy by default; the device path is the same maths
        for step in range(1, 7):
            x, y = torch.randn(16, 4), torch.rand(16, 3)
            if step in (1, 3, 6):
                expected[step] = _replay(model, x, y)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            run.log(step, loss=1.0)
    records, meta = dualnorm.read_run(tmp_path / "run")
    assert meta["backend"] == "torch" and meta["status"] == "finished"
    recorded = {r.step: r for r in records if r.layers}
    assert sorted(recorded) == [1, 3, 6]
    for step, (outputs, param_grads) in expected.items():
        layers = {layer.name: layer for layer in recorded[step].layers}
        assert list(layers) == ["features.0", "features.1", "features.2", "head.0", "head.1"]
        assert [layers[n].kind for n in layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "Sigmoid"]
        for name, (out, grad) in outputs.items():
            a = out.numpy().astype(np.float64).ravel()
            got = layers[name]
            assert got.act_mean == pytest.approx(a.mean(), rel=1e-6, abs=1e-9)
            assert got.act_std == pytest.approx(a.std(), rel=1e-6)
            assert (got.act_min, got.act_max) == (pytest.approx(a.min()), pytest.approx(a.max()))
            assert sum(got.hist_counts) == a.size and len(got.hist_edges) == len(got.hist_counts) + 1
            lo, hi = got.hist_edges[0], got.hist_edges[-1]
            counts = np.histogram(np.clip(a, lo, hi), bins=len(got.hist_counts), range=(lo, hi))[0]
            assert np.abs(counts - np.array(got.hist_counts)).sum() <= 2  # edges rounded apart
            assert got.grad_norm == pytest.approx(float(np.linalg.norm(grad.numpy())), rel=1e-6)
            own = param_grads[name]
            if own:
                norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in own.values()))
                assert got.param_grad_norm == pytest.approx(norm, rel=1e-6)
            else:
                assert got.param_grad_norm is None and got.weight_norm is None
        relu = outputs["features.2"][0].numpy()
        assert layers["features.2"].dead_frac == pytest.approx(float(np.mean(relu.max(axis=0) <= 0)))
        sig = outputs["head.1"][0].numpy()
        assert layers["head.1"].saturated_frac == pytest.approx(float(np.mean((sig < 0.01) | (sig > 0.99))))
        assert layers["features.0"].dead_frac is None and layers["features.0"].gamma_mean is None
        assert recorded[step].extra["num_batches_tracked"] == {"features.1": step}
    # gamma/beta/running statistics are read after the step: the model's final state at step 6
    bn = model.features[1]
    last = {layer.name: layer for layer in recorded[6].layers}["features.1"]
    assert last.gamma_mean == pytest.approx(float(bn.weight.detach().mean()), rel=1e-6)
    assert last.beta_mean == pytest.approx(float(bn.bias.detach().mean()), abs=1e-7)
    assert last.running_mean_mean == pytest.approx(float(bn.running_mean.mean()), rel=1e-6)
    assert last.running_var_mean == pytest.approx(float(bn.running_var.mean()), rel=1e-6)
    assert last.weight_norm == pytest.approx(float(bn.weight.detach().norm()), rel=1e-6)


def test_hooks_run_only_for_recording_steps_and_are_gone_after_finish(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = dualnorm.track(model, dir=tmp_path / "run", every=5)
    watcher = run._watcher
    calls, installed = [], []
    for step in range(1, 13):
        before = watcher.hook_calls
        opt.zero_grad()
        ((model(torch.randn(8, 4))) ** 2).mean().backward()
        opt.step()
        calls.append(watcher.hook_calls - before)
        run.log(step, loss=0.0)
        installed.append(_hooks(model))
    run.finish()
    # 5 recorded modules: 5 forward hooks and 5 output-gradient hooks on steps 1, 5 and 10 only
    assert calls == [10 if step in (1, 5, 10) else 0 for step in range(1, 13)]
    # hooks stand only from the log before a recording step to that step's log
    assert installed == [5 if step in (4, 9) else 0 for step in range(1, 13)]
    assert _hooks(model) == 0
    records, _ = dualnorm.read_run(tmp_path / "run")
    assert [r.step for r in records if r.layers] == [1, 5, 10]


def test_a_step_logged_off_the_guessed_stride_is_recorded_at_the_next_log(tmp_path):
    model = Net()
    with dualnorm.track(model, dir=tmp_path / "run", every=4) as run:
        for step in (1, 2, 4, 6, 7, 8):  # 4 comes after a stride of 2, unguessed after 1 -> 2
            model(torch.randn(8, 4)).sum().backward()
            run.log(step, loss=0.0)
    recorded = [r.step for r in dualnorm.read_run(tmp_path / "run")[0] if r.layers]
    assert recorded == [1, 6, 8]  # step 4 found nothing captured: taken at the next log (6)
    assert _hooks(model) == 0


def test_forward_under_no_grad_does_not_replace_the_training_forward(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    with dualnorm.track(model, dir=tmp_path / "run") as run:
        x = torch.ones(4, 2)
        model(x).sum().backward()
        with torch.no_grad():
            model(x * 100)  # an evaluation pass after the step
        run.log(1, loss=0.0)
    layer = dualnorm.read_run(tmp_path / "run")[0][0].layers[0]
    assert layer.act_mean == pytest.approx(float(model(x).detach().mean()), rel=1e-6)
    assert layer.grad_norm == pytest.approx(math.sqrt(8))


def test_resnet_block_with_inplace_add_is_tracked(tmp_path):
    from track_frozen_bn import BasicBlock

    block = BasicBlock(3)
    with dualnorm.track(block, dir=tmp_path / "run") as run:
        block(torch.randn(2, 3, 4, 4)).sum().backward()  # `out += x` after bn2: a view+inplace refusal
        run.log(1, loss=0.0)  # with full backward hooks
    names = [layer.name for layer in dualnorm.read_run(tmp_path / "run")[0][0].layers]
    assert names == ["conv1", "bn1", "relu", "conv2", "bn2"]


def test_frozen_batch_norms_stop_their_running_statistics(tmp_path, capsys):
    import track_frozen_bn

    run_dir = track_frozen_bn.main(
        ["--steps", "4", "--every", "2", "--batch", "16", "--out", str(tmp_path / "fz")]
    )
    records = [r for r in dualnorm.read_run(run_dir)[0] if r.layers]
    assert [r.step for r in records] == [1, 2, 4, 6, 8]
    bn_names = ["stem.1", "blocks.0.bn1", "blocks.0.bn2", "blocks.1.bn1", "blocks.1.bn2"]
    for name in bn_names:
        rows = [(r.extra["scalars"]["bn_frozen"], {la.name: la for la in r.layers}[name]) for r in records]
        before = [la for frozen, la in rows if not frozen]
        after = [la for frozen, la in rows if frozen]
        assert len({la.running_var_mean for la in before}) == len(before)  # moving while training
        assert {la.running_mean_mean for la in after} == {before[-1].running_mean_mean}  # then still
        assert {la.running_var_mean for la in after} == {before[-1].running_var_mean}
        assert after[-1].gamma_mean != before[-1].gamma_mean  # gamma still learns (no --freeze-affine)
    counts = [r.extra["num_batches_tracked"]["blocks.1.bn2"] for r in records]
    assert counts == [1, 2, 4, 4, 4]


def test_dying_relu_example_in_torch(tmp_path, capsys):
    import track_torch

    dirs = track_torch.main(["--steps", "20", "--every", "10", "--out", str(tmp_path)])
    plain = dualnorm.read_run(dirs["plain"])[0]
    assert len({r.loss for r in plain}) == 1 and plain[0].loss == pytest.approx(3.34e5, rel=0.01)
    for r in plain:
        if r.layers:
            linear, relu = r.layers
            assert relu.dead_frac == 1.0 and linear.grad_norm == 0.0 and linear.param_grad_norm == 0.0
    bn = dualnorm.read_run(dirs["batchnorm"])[0]
    assert bn[-1].loss < bn[0].loss
    last = {layer.name: layer for layer in bn[-1].layers}
    assert last["2"].dead_frac == 0.0 and last["1"].running_var_mean > 1.0
    assert bn[-1].extra["num_batches_tracked"] == {"1": 20}


def test_a_tracked_torch_run_opens_in_the_viewer(tmp_path):
    pytest.importorskip("textual")
    import track_torch

    from tui.app import DualnormApp
    from tui.screens import ViewScreen

    dirs = track_torch.main(
        ["--steps", "10", "--every", "5", "--out", str(tmp_path), "--variants", "batchnorm"]
    )

    async def scenario():
        app = DualnormApp({}, backends=["numpy"], backend="numpy", runs=[dirs["batchnorm"]], runs_root="none")
        async with app.run_test(size=(140, 45)) as pilot:
            end = time.monotonic() + 60
            while not (isinstance(app.screen, ViewScreen) and app.screen.runner.finished.is_set()):
                assert time.monotonic() < end, "the run did not load"
                await pilot.pause(0.02)
            app.screen.poll(force=True)
            await pilot.pause()
            state = app.screen.state.variants["batchnorm"]
            return state.steps, app.screen.status_text().plain

    steps, status = asyncio.run(scenario())
    assert steps == list(range(1, 11))
    assert "torch" in status and "finished" in status


def _torch_dying_relu_losses(steps: int) -> list[float]:
    """The batchnorm variant trained by hand in PyTorch (independently of dualnorm.references)."""
    x = torch.linspace(1.0, 1000.0, 10_000).reshape(-1, 1)
    linear = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        linear.weight.fill_(-10.0)
    model = nn.Sequential(linear, nn.BatchNorm1d(1), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_compare_against_a_torch_reference_run_on_dying_relu(tmp_path, capsys, monkeypatch):
    steps = 10
    # mlx.nn's reference run takes the same path: tests/tracking/test_track_mlx.py runs it in the UI
    argv = ["compare", "dying-relu", "--backends", "numpy,torch", "--steps", str(steps), "--variants"]
    argv += ["batchnorm", "--record-every", "5", "--no-tui", "--json", str(tmp_path / "c.json")]
    argv += ["--out", str(tmp_path / "runs")]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child process's torch: tiny ops, a shared machine
    assert cli_main(argv) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["agree"] is True
    mine = result["backends"]["torch"]
    assert mine["steps"] == steps and mine["backend"] == "torch"
    assert mine["max_rel_loss_diff"] < 1e-4
    assert {"act_mean", "grad_norm", "running_var_mean", "gamma_mean"} <= set(mine["layer_diffs"])
    # the same initial weights went across in a checkpoint
    initial = dualnorm.load(tmp_path / "runs" / "torch" / "initial-batchnorm.safetensors")
    assert initial["0.weight"].item() == -10
    records = dualnorm.read_run(tmp_path / "runs" / "torch")[0]
    losses = [loss for r in records for loss in r.extra["losses"]]
    assert losses == pytest.approx(_torch_dying_relu_losses(steps), rel=1e-6)
    assert [layer.name for layer in records[-1].layers] == ["0", "1", "2"]
    assert "torch" in capsys.readouterr().out


def test_compare_refuses_a_reference_run_of_an_experiment_it_cannot_rebuild(tmp_path, capsys):
    argv = ["compare", "norm-zoo", "--backends", "numpy,torch", "--no-tui", "--out", str(tmp_path / "r")]
    assert cli_main(argv) == 2
    assert "BatchRenorm1d" in capsys.readouterr().err
    assert not (tmp_path / "r" / "torch").exists()


def test_neither_torch_nor_mlx_is_imported_for_a_dualnorm_model_or_a_non_model(tmp_path):
    import subprocess

    code = (
        "import sys, dualnorm\n"
        "from dualnorm import nn\n"
        f"with dualnorm.track(nn.Sequential(nn.Linear(2, 2)), dir={str(tmp_path / 'r')!r}) as run:\n"
        "    run.log(1, loss=1.0)\n"
        "try:\n"
        f"    dualnorm.track(object(), dir={str(tmp_path / 's')!r})\n"
        "except dualnorm.InputError as exc:\n"
        "    print(exc)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlx')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    message, imported = out.stdout.strip().splitlines()
    assert "torch.nn.Module or an mlx.nn.Module" in message and "got object" in message
    assert imported == "[]"
