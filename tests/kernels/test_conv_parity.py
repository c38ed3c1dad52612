"""The convolution kernels (NumPy: im2col + BLAS; MLX: mx.conv_general and its VJP) compute what the
reference :func:`dualnorm.nn.functional.conv2d` and its backward compute, on every kernel table."""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm.nn import functional as F

# (x shape, weight shape, stride, padding ((top, bottom), (left, right)), dilation, groups, bias)
CONV_CASES = [
    ((2, 3, 8, 8), (4, 3, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True),
    ((3, 4, 9, 7), (6, 2, 3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2), 2, False),
    ((2, 6, 7, 7), (6, 1, 3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 6, True),  # depthwise
    ((2, 3, 1, 17), (5, 3, 1, 4), (1, 3), ((0, 0), (2, 1)), (1, 2), 1, True),  # a 1-d conv as 2-d
    ((4, 32, 16, 16), (64, 32, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True),  # a SimpleCNN layer
    ((1, 2, 5, 5), (3, 2, 5, 5), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, True),  # one output pixel
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"{c[0]}-{c[1]}-g{c[5]}" for c in CONV_CASES])
def test_conv2d_kernel_matches_reference(backend, rng, case):
    B = dualnorm.get_backend()
    if "conv2d" not in B.kernels:
        pytest.skip(f"backend {B.name!r} has no fast path for conv2d")
    shape, wshape, stride, padding, dilation, groups, has_bias = case
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    b = rng.standard_normal(wshape[0]).astype(np.float32) if has_bias else None
    results = []
    for fwd, bwd in (
        (B.kernels["conv2d"], B.kernels["conv2d_backward"]),
        (F.conv2d.reference, F.conv2d_backward.reference),
    ):
        wa = B.asarray(w)
        y, ctx = fwd(
            B, B.asarray(x), wa, None if b is None else B.asarray(b), stride, padding, dilation, groups
        )
        g = np.random.default_rng(9).standard_normal(tuple(y.shape)).astype(np.float32)
        dx, dw, db = bwd(B, B.asarray(g), ctx, wa)
        results.append([np.asarray(dualnorm.to_numpy(a), np.float64) for a in (y, dx, dw, db)])
    for name, got, want in zip(("y", "dx", "dweight", "dbias"), *results, strict=True):
        assert got.shape == want.shape, name
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * scale, err_msg=name)
