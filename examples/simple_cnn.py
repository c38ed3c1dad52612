"""The seeds' SimpleCNN (note 001) in dualnorm: print the model and the output shape for one image.

    python examples/simple_cnn.py                    # the seed's LRN network on the active backend
    python examples/simple_cnn.py --norm batch --backend mlx

The note's PyTorch code builds three Conv2d -> LocalResponseNorm(5, k=2) -> ReLU -> MaxPool2d(2, 2)
blocks and two Linear layers, prints the model, and prints ``torch.Size([1, 10])`` for a random
3x32x32 image. Here the same network is ``dualnorm.models.simple_cnn()``; its weights load into
the note's PyTorch module (``model.state_dict()`` has the same keys) and back. To train it on
CIFAR-10: ``dualnorm run simple-cnn --cifar10 PATH``.
"""

from __future__ import annotations

import argparse

import numpy as np

import dualnorm
from dualnorm.models import CNN_NORMS, simple_cnn


def main(argv: list[str] | None = None) -> tuple[int, ...]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="numpy or mlx (default: the active backend)")
    parser.add_argument(
        "--norm",
        default="lrn",
        choices=[n or "none" for n in CNN_NORMS],
        help="the normalization (default lrn)",
    )
    args = parser.parse_args(argv)
    if args.backend:
        dualnorm.set_backend(args.backend)
    dualnorm.manual_seed(0)

    model = simple_cnn(args.norm)
    print(model)

    input_data = (
        np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    )  # 1 image, 3x32x32
    output_data = model(input_data)
    shape = tuple(output_data.shape)
    print(shape)
    return shape


if __name__ == "__main__":
    main()
