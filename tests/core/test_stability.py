"""Variance computed stably: float32 1e4 + N(0, 1e-2) normalizes to within 1e-2 of float64."""

from __future__ import annotations

import numpy as np
import pytest

from dualnorm import nn
from tests.core._cases import host


def _normalized64(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    x = x.astype(np.float64)
    mu = x.mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + 1e-5)


@pytest.mark.parametrize(
    ("make", "shape", "axes"),
    [
        (lambda: nn.BatchNorm1d(8), (1000, 8), (0,)),
        (lambda: nn.BatchNorm2d(4), (50, 4, 5, 4), (0, 2, 3)),
        (lambda: nn.LayerNorm(1000), (8, 1000), (1,)),
        (lambda: nn.GroupNorm(2, 8), (4, 8, 250), None),
        (lambda: nn.InstanceNorm1d(8), (4, 8, 1000), (2,)),
        (lambda: nn.BatchRenorm1d(8, rmax=1.0, dmax=0.0), (1000, 8), (0,)),
    ],
)
def test_large_mean_small_noise(backend, make, shape, axes):
    rng = np.random.default_rng(0)
    x = (1e4 + rng.normal(0.0, 1e-2, shape)).astype(np.float32)
    layer = make()
    y = host(layer(x))
    if axes is None:  # group norm: contiguous groups of 4 channels
        grouped = x.reshape(shape[0], 2, -1)
        expected = _normalized64(grouped, (2,)).reshape(shape)
    else:
        expected = _normalized64(x, axes)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, expected, atol=1e-2)
    assert np.abs(y).max() > 2  # really normalized: the noise is scaled up, not flattened to 0


def test_running_var_is_stable_too(backend):
    rng = np.random.default_rng(1)
    x = (1e4 + rng.normal(0.0, 1e-2, (1000, 8))).astype(np.float32)
    bn = nn.BatchNorm1d(8, momentum=1.0)
    bn(x)
    np.testing.assert_allclose(host(bn.running_var), x.astype(np.float64).var(axis=0, ddof=1), rtol=0.05)
    np.testing.assert_allclose(host(bn.running_mean), x.astype(np.float64).mean(axis=0), rtol=1e-6)
