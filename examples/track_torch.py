"""The notes' dying ReLU in PyTorch, tracked by dualnorm: watch batch norm rescue it.

    python examples/track_torch.py                        # both variants, 10 000 epochs as in the notes
    python examples/track_torch.py --steps 500 --out runs/torch-relu

``Linear(1, 1, bias=False)`` with its weight set to -10, then ReLU (``plain``), or with
``BatchNorm1d(1)`` between them (``batchnorm``); ``X = linspace(1, 1000, 10000)``, target
``y = X``, MSE, SGD lr 0.001, full batch. ``dualnorm.track(model)`` hooks the PyTorch
modules for the recording steps only; each variant gets a run directory. Watch them live,
overlaid, from a second terminal:

    dualnorm tui runs/torch-relu/plain runs/torch-relu/batchnorm

The plain net's ReLU is dead from the first step (``dead_frac`` 1, the Linear's gradient
0, the loss stuck at mean(y^2) ~ 3.34e5); with batch norm the loss falls towards 0 and the
eval-mode model maps the probe inputs [1, 2, 3, 4, 5] to about themselves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import dualnorm


def build(variant: str) -> nn.Sequential:
    linear = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        linear.weight.fill_(-10.0)
    if variant == "batchnorm":
        return nn.Sequential(linear, nn.BatchNorm1d(1), nn.ReLU())
    return nn.Sequential(linear, nn.ReLU())


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="epochs (full-batch steps)")
    parser.add_argument("--every", type=int, default=50, help="per-layer statistics every K steps")
    parser.add_argument("--out", default=None, help="a directory for the runs (default ./dualnorm-runs/...)")
    parser.add_argument("--variants", default="plain,batchnorm")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x = torch.linspace(1.0, 1000.0, 10_000).reshape(-1, 1)
    y = x.clone()
    probe = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    dirs = {}
    for variant in args.variants.split(","):
        model = build(variant)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        run_dir = None if args.out is None else Path(args.out) / variant
        with dualnorm.track(model, name=f"torch-dying-relu-{variant}", every=args.every, dir=run_dir,
                            experiment="dying-relu", variant=variant) as run:  # fmt: skip
            for step in range(1, args.steps + 1):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                run.log(step, loss=loss, epoch=step)
        model.eval()
        with torch.no_grad():
            mapped = [round(v, 3) for v in model(probe).reshape(-1).tolist()]
        print(f"{variant:9s} final loss {loss.item():12.4f}   probe [1..5] -> {mapped}")
        dirs[variant] = str(run.dir)
    print(f"runs written; view them: dualnorm tui {' '.join(dirs.values())}")
    return dirs


if __name__ == "__main__":
    main()
