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
