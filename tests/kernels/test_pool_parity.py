"""The MaxPool2d fast paths (``max_pool2d`` / ``max_pool2d_backward`` in the kernel tables) compute
exactly what the reference computes: outputs, and gradients routed to the first of tied maxima.

Max pooling only selects, so the agreement is exact (no tolerance), ties, NaN and -inf included.
"""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm.nn import functional as F

GEOMETRIES = [
    ((2, 2), (2, 2), (0, 0), (1, 1)),  # the common MaxPool2d(2): the fast path
    ((3, 3), (2, 2), (1, 1), (1, 1)),  # anything else goes to the reference, whose ctx the backward must take
]
SHAPES = [(2, 3, 8, 8), (1, 2, 7, 9), (3, 1, 2, 2), (64, 8, 32, 32)]  # the last spans several threads


def _both(B, x, geometry, g_seed=1):
    kernel, stride, padding, dilation = geometry
    out = tuple(
        F.pool_output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], False)
        for a in (0, 1)
    )
    results = []
    g = None
    for fwd, bwd in (
        (B.kernels["max_pool2d"], B.kernels["max_pool2d_backward"]),
        (F.max_pool2d.reference, F.max_pool2d_backward.reference),
    ):
        y, _, ctx = fwd(
            B,
            B.asarray(x, x.dtype if x.dtype == np.float64 else None),
            kernel,
            stride,
            padding,
            dilation,
            out,
        )
        if g is None:
            g = np.random.default_rng(g_seed).standard_normal(tuple(y.shape)).astype(x.dtype)
        dx = bwd(B, B.asarray(g, B.float64 if x.dtype == np.float64 else B.float32), ctx)
        results.append((np.asarray(dualnorm.to_numpy(y)), np.asarray(dualnorm.to_numpy(dx))))
    return results


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["2x2", "3x3-s2-p1"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("values", ["normal", "ties", "nan", "minus_inf"])
def test_max_pool_matches_reference(backend, geometry, shape, values):
    B = dualnorm.get_backend()
    if "max_pool2d" not in B.kernels:
        pytest.skip(f"backend {B.name!r} has no fast path for max_pool2d")
    rng = np.random.default_rng(0)
    if values == "ties":
        x = rng.integers(0, 3, shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    if values == "nan":
        x.reshape(-1)[::7] = np.nan
    if values == "minus_inf":
        x[0, 0] = -np.inf
    (y, dx), (y_ref, dx_ref) = _both(B, x, geometry)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)


def test_max_pool_float64_and_indices(backend):
    B = dualnorm.get_backend()
    if "max_pool2d" not in B.kernels:
        pytest.skip(f"backend {B.name!r} has no fast path for max_pool2d")
    x = np.random.default_rng(2).integers(0, 4, (2, 3, 6, 6)).astype(np.float64)
    (y, dx), (y_ref, dx_ref) = _both(B, x, GEOMETRIES[0])
    assert y.dtype == dx.dtype == np.float64
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    args = (B.asarray(x, B.float64), (2, 2), (2, 2), (0, 0), (1, 1), (3, 3), True)
    np.testing.assert_array_equal(
        dualnorm.to_numpy(B.kernels["max_pool2d"](B, *args)[1]),
        dualnorm.to_numpy(F.max_pool2d.reference(B, *args)[1]),
    )
