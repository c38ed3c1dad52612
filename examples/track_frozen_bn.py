"""Fine-tuning with frozen batch norms, watched: the running statistics stop moving.

    python examples/track_frozen_bn.py                    # 200 steps training, then 200 frozen
    python examples/track_frozen_bn.py --steps 100 --freeze-affine --out runs/frozen

A small ResNet-style network in PyTorch (no torchvision): a stem (conv, BN, ReLU), two
basic blocks ``conv-BN-ReLU-conv-BN + identity -> ReLU`` with in-place ReLUs and the
in-place residual add, average pooling and a linear classifier, on the shipped 8x8 digits.
It trains normally for ``--steps`` steps, then every BatchNorm2d is put in eval mode (as
when fine-tuning a pretrained ResNet: the running mean and variance are kept as they are,
and the layers normalize with them) and training goes on for ``--steps`` more, at a tenth
of the learning rate.

``dualnorm.track(model)`` records each BN layer (``stem.1``, ``blocks.0.bn1`` ...) with its
gamma, beta, running mean and variance, and ``extra["num_batches_tracked"]``; this script
prints ``blocks.0.bn1``'s at every recorded step. The running statistics move until the
freeze, then stay exactly where they were, as ``num_batches_tracked`` does; gamma and beta
keep learning unless ``--freeze-affine`` freezes them too. The viewer (``dualnorm tui
runs/frozen``) shows the loss and each layer's gamma and beta; its export (``e``) writes
every recorded step's statistics, running mean and variance included, to ``layers.csv``.
Every record's ``extra["scalars"]["bn_frozen"]`` says which phase it is in.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import dualnorm
from dualnorm.data import load_digits


class BasicBlock(nn.Module):
    """ResNet's basic block, as torchvision writes it (in-place ReLU and residual add)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.blocks = nn.Sequential(BasicBlock(channels), BasicBlock(channels))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


def freeze_batch_norms(model: nn.Module, affine: bool = False) -> list[str]:
    """Every BatchNorm in eval mode (running statistics kept and used); gamma/beta too if ``affine``."""
    frozen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            if affine:
                module.weight.requires_grad_(False)
                module.bias.requires_grad_(False)
            frozen.append(name)
    return frozen


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps before the freeze, and as many after")
    parser.add_argument("--every", type=int, default=10, help="per-layer statistics every K steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--freeze-affine", action="store_true", help="freeze gamma and beta as well")
    parser.add_argument(
        "--out", default=None, help="run directory (default ./dualnorm-runs/frozen-bn-<time>)"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = load_digits()
    x_all = torch.from_numpy(data.x_train.reshape(-1, 1, 8, 8))
    y_all = torch.from_numpy(data.y_train)
    rng = np.random.default_rng(0)
    model = TinyResNet()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    model.train()
    frozen = False
    with dualnorm.track(model, name="frozen-bn", every=args.every, dir=args.out) as run:
        for step in range(1, 2 * args.steps + 1):
            if step == args.steps + 1:
                names = freeze_batch_norms(model, affine=args.freeze_affine)
                for group in opt.param_groups:  # fine-tuning steps the learning rate down
                    group["lr"] = args.lr * 0.1
                frozen = True
                print(f"step {step}: froze {len(names)} batch norms ({', '.join(names)})")
            idx = torch.from_numpy(rng.integers(0, len(y_all), args.batch))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
            record = run.log(step, loss=loss, bn_frozen=float(frozen))
            if record.layers:
                bn = next(layer for layer in record.layers if layer.name == "blocks.0.bn1")
                print(f"step {step:4d}  loss {record.loss:.4f}  blocks.0.bn1 running mean "
                      f"{bn.running_mean_mean:+.5f} var {bn.running_var_mean:.5f} "
                      f"gamma {bn.gamma_mean:.5f}", flush=True)  # fmt: skip
    print(f"run written to {run.dir}  (view it: dualnorm tui {run.dir})")
    return str(run.dir)


if __name__ == "__main__":
    main()
