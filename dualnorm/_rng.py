"""dualnorm's seeded random generator.

Initial weights are drawn with NumPy whatever the backend, so a model built after
``manual_seed(s)`` starts from the same numbers on NumPy and on MLX.
"""

from __future__ import annotations

import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed the generator used for layer initialization (as ``torch.manual_seed``)."""
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    return _rng


def seed_everything(*keys: int) -> np.random.Generator:
    """Seed the init generator from ``keys`` and return a data generator from the same keys."""
    seq = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])
    init_seed, data_seed = seq.generate_state(2)
    manual_seed(int(init_seed))
    return np.random.default_rng(int(data_seed))
