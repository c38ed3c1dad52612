"""The notes' dying ReLU in mlx.nn, tracked by dualnorm: watch batch norm rescue it.

    python examples/track_mlx.py                          # both variants, 10 000 epochs as in the notes
    python examples/track_mlx.py --steps 500 --out runs/mlx-relu

The same net as examples/track_torch.py, written in ``mlx.nn``: ``Linear(1, 1,
bias=False)`` with weight -10, then ReLU, or with ``BatchNorm(1)`` between them. MLX has
no hooks, so the run wraps the modules' calls for the recording steps, and the gradients
come from the tree ``nn.value_and_grad`` returns::

    loss, grads = loss_and_grad(model, x, y)
    optimizer.update(model, grads)
    mx.eval(model.parameters(), optimizer.state)
    run.log(step, loss=loss, grads=grads)

View the runs live, overlaid: ``dualnorm tui runs/mlx-relu/plain runs/mlx-relu/batchnorm``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from mlx import nn

import dualnorm


def build(variant: str) -> nn.Sequential:
    linear = nn.Linear(1, 1, bias=False)
    linear.weight = mx.full((1, 1), -10.0)
    if variant == "batchnorm":
        return nn.Sequential(linear, nn.BatchNorm(1), nn.ReLU())
    return nn.Sequential(linear, nn.ReLU())


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="epochs (full-batch steps)")
    parser.add_argument("--every", type=int, default=50, help="per-layer statistics every K steps")
    parser.add_argument("--out", default=None, help="a directory for the runs (default ./dualnorm-runs/...)")
    parser.add_argument("--variants", default="plain,batchnorm")
    args = parser.parse_args(argv)

    x = mx.linspace(1.0, 1000.0, 10_000).reshape(-1, 1)
    y = x
    probe = mx.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    dirs = {}
    for variant in args.variants.split(","):
        model = build(variant)
        opt = optim.SGD(learning_rate=1e-3)
        loss_and_grad = nn.value_and_grad(model, lambda m, x, y: nn.losses.mse_loss(m(x), y))
        run_dir = None if args.out is None else Path(args.out) / variant
        with dualnorm.track(model, name=f"mlx-dying-relu-{variant}", every=args.every, dir=run_dir,
                            experiment="dying-relu", variant=variant) as run:  # fmt: skip
            for step in range(1, args.steps + 1):
                loss, grads = loss_and_grad(model, x, y)
                opt.update(model, grads)
                mx.eval(loss, model.parameters(), opt.state)
                run.log(step, loss=loss, grads=grads, epoch=step)
        model.eval()
        mapped = [round(v, 3) for v in model(probe).reshape(-1).tolist()]
        print(f"{variant:9s} final loss {loss.item():12.4f}   probe [1..5] -> {mapped}")
        dirs[variant] = str(run.dir)
    print(f"runs written; view them: dualnorm tui {' '.join(dirs.values())}")
    return dirs


if __name__ == "__main__":
    main()
