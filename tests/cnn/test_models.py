"""simple_cnn: the seed's SimpleCNN layer for layer, its weights round-trip with the seed's PyTorch
module, and one training step matches PyTorch; digits_cnn; the example script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm.errors import InputError
from dualnorm.losses import CrossEntropyLoss
from dualnorm.models import CNN_NORMS, digits_cnn, simple_cnn

ROOT = Path(__file__).resolve().parents[2]
PREFIX = {"lrn": "lrn", "batch": "bn", "group": "gn", "instance": "inorm", "layer": "ln"}

SEED_REPR = """SimpleCNN(
  (conv1): Conv2d(3, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (lrn1): LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)
  (relu1): ReLU()
  (pool1): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (conv2): Conv2d(32, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (lrn2): LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)
  (relu2): ReLU()
  (pool2): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (conv3): Conv2d(64, 128, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (lrn3): LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)
  (relu3): ReLU()
  (pool3): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (flatten): Flatten()
  (fc1): Linear(in_features=2048, out_features=256, bias=True)
  (relu4): ReLU()
  (fc2): Linear(in_features=256, out_features=10, bias=True)
)"""


def seed_module(norm: str = "lrn", image_size: int = 32):
    """Note 001's SimpleCNN as written there (LRN with k = 2); other norms swapped in under their names.

    ``image_size`` < 32 shrinks fc1 to match (the tests' smaller, faster inputs)."""
    side = image_size // 8
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch import nn as tnn

    class LocalResponseNorm(tnn.Module):
        def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
            super().__init__()
            self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

        def forward(self, input):
            return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def make(c):
        return {
            "lrn": lambda: LocalResponseNorm(size=5),
            "batch": lambda: tnn.BatchNorm2d(c),
            "group": lambda: tnn.GroupNorm(8, c),
            "instance": lambda: tnn.InstanceNorm2d(c, affine=True),
            "layer": lambda: tnn.GroupNorm(1, c),
            "none": lambda: tnn.Identity(),
        }[norm]()

    p = PREFIX.get(norm, "skip")

    class SimpleCNN(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_channels=3, out_channels=32, kernel_size=3, padding=1)
            setattr(self, f"{p}1", make(32))
            self.pool1 = tnn.MaxPool2d(kernel_size=2, stride=2)
            self.conv2 = tnn.Conv2d(in_channels=32, out_channels=64, kernel_size=3, padding=1)
            setattr(self, f"{p}2", make(64))
            self.pool2 = tnn.MaxPool2d(kernel_size=2, stride=2)
            self.conv3 = tnn.Conv2d(in_channels=64, out_channels=128, kernel_size=3, padding=1)
            setattr(self, f"{p}3", make(128))
            self.pool3 = tnn.MaxPool2d(kernel_size=2, stride=2)
            self.fc1 = tnn.Linear(128 * side * side, 256)
            self.fc2 = tnn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(F.relu(getattr(self, f"{p}1")(self.conv1(x))))
            x = self.pool2(F.relu(getattr(self, f"{p}2")(self.conv2(x))))
            x = self.pool3(F.relu(getattr(self, f"{p}3")(self.conv3(x))))
            x = x.view(-1, 128 * side * side)
            x = F.relu(self.fc1(x))
            return self.fc2(x)

    return torch, SimpleCNN()


def test_the_seed_model_prints_and_gives_1x10(backend, rng):
    model = simple_cnn()
    assert repr(model) == SEED_REPR
    out = model(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    assert tuple(out.shape) == (1, 10) and model.backend.is_array(out)
    assert [m.k for m in model if isinstance(m, nn.LocalResponseNorm)] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("norm", CNN_NORMS)
def test_every_norm_builds_and_runs(backend, rng, norm):
    model = simple_cnn(norm, image_size=16)
    kinds = [type(m).__name__ for m in model]
    expected = {
        "lrn": "LocalResponseNorm",
        "batch": "BatchNorm2d",
        "group": "GroupNorm",
        "instance": "InstanceNorm2d",
        "layer": "GroupNorm",
        None: None,
    }[norm]
    assert kinds.count("Conv2d") == 3 and kinds.count("MaxPool2d") == 3 and kinds.count("Linear") == 2
    assert (kinds.count(expected) if expected else len(kinds)) == (3 if expected else 13)
    if norm == "layer":
        assert all(m.num_groups == 1 for m in model if isinstance(m, nn.GroupNorm))
    out = model(rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    assert tuple(out.shape) == (2, 10)
    grad = model.backward(model.backend.asarray(np.ones((2, 10), np.float32)))
    assert tuple(grad.shape) == (2, 3, 16, 16)
    assert all(p.grad is not None for p in model.parameters())


def test_bad_arguments():
    with pytest.raises(InputError, match="unknown normalization 'rms' for a CNN; choose one of"):
        simple_cnn("rms")
    with pytest.raises(InputError, match="image_size must be divisible by 8"):
        simple_cnn(image_size=30)
    with pytest.raises(InputError, match="GroupNorm with 7 groups needs a channel count divisible"):
        simple_cnn("group", groups=7)


def _to_torch(torch, state):
    return {k: torch.from_numpy(np.array(dualnorm.to_numpy(v))) for k, v in state.items()}


@pytest.mark.torch
def test_the_seed_modules_weights_load_and_give_its_outputs(backend, rng):
    """The seed's own module, at its own 32x32: dualnorm -> torch -> same outputs, and torch -> dualnorm."""
    torch, tmodel = seed_module("lrn")
    model = simple_cnn()
    assert list(model.state_dict()) == list(tmodel.state_dict())
    tmodel.load_state_dict(_to_torch(torch, model.state_dict()))
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(
            dualnorm.to_numpy(model(x)), tmodel(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5
        )
    torch.manual_seed(1)
    _, fresh = seed_module("lrn")
    model.load_state_dict(fresh.state_dict())
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(dualnorm.to_numpy(model.state_dict()[key]), value.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("norm", ["batch", "group", "instance", "layer", "none"])
def test_state_dict_round_trips_for_every_norm(backend, rng, norm):
    torch, tmodel = seed_module(norm, image_size=16)
    model = simple_cnn(norm, image_size=16)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    model(x)  # a train-mode step moves the running statistics away from their defaults
    state = model.state_dict()
    assert list(state) == list(tmodel.state_dict())  # same keys, same order (buffers included)
    tmodel.load_state_dict(_to_torch(torch, state))
    model.eval()
    tmodel.eval()
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(dualnorm.to_numpy(model(x)), expected, rtol=1e-4, atol=1e-5)
    back = simple_cnn(norm, image_size=16)
    back.load_state_dict(tmodel.state_dict())
    for key, value in tmodel.state_dict().items():
        np.testing.assert_array_equal(dualnorm.to_numpy(back.state_dict()[key]), value.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("norm", ["lrn", "batch", "group"])
def test_one_training_step_matches_torch(backend, rng, norm):
    """Loss, input gradient and every parameter gradient of one train-mode step, against PyTorch."""
    torch, tmodel = seed_module(norm, image_size=16)
    model = simple_cnn(norm, image_size=16)
    tmodel.load_state_dict(_to_torch(torch, model.state_dict()))
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    y = np.array([1, 7, 3, 3])
    loss_fn = CrossEntropyLoss()
    loss = loss_fn(model(x), y)
    grad_x = model.backward(loss_fn.backward())
    tx = torch.from_numpy(x).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(tmodel(tx), torch.from_numpy(y))
    tloss.backward()
    assert float(loss.item()) == pytest.approx(tloss.item(), rel=1e-5)
    np.testing.assert_allclose(dualnorm.to_numpy(grad_x), tx.grad.numpy(), rtol=1e-3, atol=1e-6)
    tgrads = {k: p.grad.numpy() for k, p in tmodel.named_parameters()}
    for key, p in model.named_parameters():
        # a conv bias right before batch norm has a zero gradient: compare it at its weight's scale
        scale = np.abs(tgrads[key.replace(".bias", ".weight")]).max()
        np.testing.assert_allclose(dualnorm.to_numpy(p.grad), tgrads[key], rtol=1e-3, atol=1e-4 * scale)


def test_digits_cnn_reaches_1x1_before_the_last_norm(backend, rng):
    model = digits_cnn("batch")
    x = rng.uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    h = x
    shapes = {}
    for name, layer in model.named_children():
        h = layer(h)
        shapes[name] = tuple(h.shape)
    assert shapes["bn4"] == (3, 64, 1, 1)  # batch norm sees B values per channel here
    assert shapes["pool3"] == (3, 64, 2, 2) and shapes["fc"] == (3, 10)
    assert [type(m).__name__ for m in digits_cnn(None)].count("BatchNorm2d") == 0
    assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 8 for m in digits_cnn("group")) == 4


def test_example_prints_the_model_and_the_shape(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "simple_cnn.py"), "--backend", "numpy"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [*SEED_REPR.splitlines(), "(1, 10)"]


def test_example_main_on_each_backend(backend, capsys):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import simple_cnn as example
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert example.main(["--norm", "group"]) == (1, 10)
    assert "GroupNorm(8, 32" in capsys.readouterr().out
