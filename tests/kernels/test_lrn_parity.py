"""The LocalResponseNorm fast path (``local_response_norm`` / its backward in the kernel tables)
computes what the reference computes: outputs and input gradients, at every window size and beta
(the square-root path for beta 0.75 and 0.5, pow otherwise), windows wider than the channels."""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm.nn import functional as F

CASES = [
    ((2, 7, 5, 5), 5, 1e-4, 0.75, 2.0),  # the seeds' SimpleCNN LRN
    ((3, 4, 6), 3, 1e-2, 0.75, 1.0),  # 1-d input
    ((2, 6, 3, 4), 4, 0.5, 0.5, 1.0),  # even size: the window is not centred
    ((2, 5, 3, 3), 2, 2.0, 1.3, 0.5),  # general beta: pow
    ((1, 2, 4, 4), 7, 1.0, 0.75, 1.0),  # window wider than the channels
    ((1, 1, 2, 2), 1, 1.0, 0.75, 1.0),
    ((64, 32, 32, 32), 5, 1e-4, 0.75, 2.0),  # SimpleCNN's first LRN at batch 64
]


@pytest.mark.parametrize(("shape", "size", "alpha", "beta", "k"), CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lrn_kernel_matches_reference(backend, rng, shape, size, alpha, beta, k, dtype):
    B = dualnorm.get_backend()
    if "local_response_norm" not in B.kernels:
        pytest.skip(f"backend {B.name!r} has no fast path for local_response_norm")
    if dtype == "float64" and shape[0] == 64:
        pytest.skip("one large float32 case is enough")
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    xb, gb = B.asarray(x, B.dtype(dtype)), B.asarray(g, B.dtype(dtype))
    outs = []
    for fwd, bwd in (
        (B.kernels["local_response_norm"], B.kernels["local_response_norm_backward"]),
        (F.local_response_norm.reference, F.local_response_norm_backward.reference),
    ):
        y, ctx = fwd(B, xb, size, alpha, beta, k)
        dx = bwd(B, gb, ctx, size, alpha, beta)
        outs.append((np.asarray(dualnorm.to_numpy(y)), np.asarray(dualnorm.to_numpy(dx))))
        assert dualnorm.to_numpy(y).dtype == np.dtype(dtype) and dualnorm.to_numpy(dx).dtype == np.dtype(
            dtype
        )
    rtol = 2e-6 if dtype == "float32" else 1e-13
    (y1, dx1), (y0, dx0) = outs
    np.testing.assert_allclose(y1, y0, rtol=rtol, atol=rtol * np.abs(y0).max())
    np.testing.assert_allclose(dx1, dx0, rtol=10 * rtol, atol=10 * rtol * np.abs(dx0).max())
    np.testing.assert_array_equal(x, dualnorm.to_numpy(xb))  # the input is not written over
