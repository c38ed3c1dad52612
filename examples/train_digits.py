"""Train a small model of your own on the shipped digits and track it with dualnorm.

    python examples/train_digits.py                      # 300 steps on the active backend
    python examples/train_digits.py --steps 50 --backend mlx --out runs/mine

Watch it live from a second terminal while it trains:

    dualnorm tui dualnorm-runs/digits-mlp-*/            # or the --out directory

and reopen it (or overlay it with another run) once it has finished:

    dualnorm tui runs/mine dualnorm-runs/digits-mlp-20260101-120000
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import dualnorm
from dualnorm import nn
from dualnorm.data import load_digits
from dualnorm.losses import CrossEntropyLoss
from dualnorm.optim import SGD


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--backend", default=None, help="numpy or mlx (default: the active backend)")
    parser.add_argument(
        "--out", default=None, help="run directory (default ./dualnorm-runs/digits-mlp-<time>)"
    )
    parser.add_argument("--every", type=int, default=10, help="per-layer statistics every K steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--delay", type=float, default=0.0, help="sleep per step (to watch a short run live)")
    parser.add_argument("--no-bn", action="store_true", help="leave out the BatchNorm layers")
    args = parser.parse_args(argv)

    if args.backend:
        dualnorm.set_backend(args.backend)
    dualnorm.manual_seed(0)
    data = load_digits()
    norm = (lambda n: nn.Identity()) if args.no_bn else (lambda n: nn.BatchNorm1d(n))
    model = nn.Sequential(
        nn.Linear(64, 64), norm(64), nn.ReLU(),
        nn.Linear(64, 32), norm(32), nn.ReLU(),
        nn.Linear(32, 10),
    )  # fmt: skip
    loss_fn = CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=args.lr)
    backend = model.backend
    rng = np.random.default_rng(0)
    x_test, y_test = backend.asarray(data.x_test), data.y_test

    name = "digits-mlp" + ("-plain" if args.no_bn else "")
    with dualnorm.track(model, name=name, every=args.every, dir=args.out) as run:
        for step in range(1, args.steps + 1):
            accuracy = None
            if step % 50 == 0 or step == args.steps:
                # before this step's forward, so the tracked activations are the training batch's
                model.eval()
                pred = np.argmax(dualnorm.to_numpy(model(x_test)), axis=1)
                accuracy = float(np.mean(pred == y_test))
                model.train()
            idx = rng.integers(0, len(data.y_train), args.batch)
            x, y = backend.asarray(data.x_train[idx]), backend.asarray(data.y_train[idx], backend.int64)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            epoch = (step - 1) * args.batch // len(data.y_train) + 1  # batches drawn with replacement
            record = run.log(step, loss=loss, accuracy=accuracy, epoch=epoch, lr=args.lr)
            if accuracy is not None:
                print(f"step {step:4d}  loss {record.loss:.4f}  test accuracy {accuracy:.3f}", flush=True)
            if args.delay:
                time.sleep(args.delay)
    print(f"run written to {run.dir}  (view it: dualnorm tui {run.dir})")
    return str(run.dir)


if __name__ == "__main__":
    try:
        main()
    except dualnorm.DualnormError as exc:  # e.g. --out already holds a run: one line, not a traceback
        sys.exit(f"train_digits: error: {exc}")
