"""The functional pairs the batch norm layers call, and the shared numerics, checked directly."""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm.backends import get_backend
from dualnorm.nn import functional as F

FAST_PATHS = {
    "batch_norm_train",
    "batch_norm_train_backward",
    "layer_norm",
    "layer_norm_backward",
    "group_norm",
    "group_norm_backward",
}
EXTRA_FAST_PATHS = {"kernels_numpy": {"max_pool2d", "max_pool2d_backward"}}  # the MaxPool2d(2) fast path


def test_kernels_in_keeps_only_callables_named_as_overridables():
    def batch_norm_train():
        pass

    def _helper():
        pass

    table = F.kernels_in({"batch_norm_train": batch_norm_train, "_helper": _helper, "layer_norm": 3})
    assert table == {"batch_norm_train": batch_norm_train}


@pytest.mark.parametrize("module", ["kernels_numpy", "kernels_mlx"])
def test_kernel_modules_still_register_every_fast_path(module):
    kernels = pytest.importorskip(f"dualnorm.backends.{module}")
    assert set(kernels.KERNELS) == FAST_PATHS | EXTRA_FAST_PATHS.get(module, set())


def test_two_pass_moments_far_from_zero(backend, rng):
    B = get_backend()
    x32 = (1e4 + rng.normal(0, 1e-2, size=(256, 3))).astype(np.float32)
    mean0, correction, var, centred = F.two_pass_moments(B, B.asarray(x32, B.float32), (0,))
    x64 = x32.astype(np.float64)
    np.testing.assert_allclose(B.to_numpy(var).ravel(), x64.var(axis=0), rtol=1e-3)
    mean = B.to_numpy(mean0).astype(np.float64) + B.to_numpy(correction).astype(np.float64)
    np.testing.assert_allclose(mean.ravel(), x64.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(B.to_numpy(centred), x64 - B.to_numpy(mean0).astype(np.float64), atol=1e-6)


def _inputs(rng):
    B = get_backend()
    x = B.asarray(rng.normal(2.0, 3.0, size=(6, 3, 4)), B.float64)
    w = B.asarray(rng.normal(size=3), B.float64)
    b = B.asarray(rng.normal(size=3), B.float64)
    g = B.asarray(rng.normal(size=(6, 3, 4)), B.float64)
    return B, x, w, b, g


def _assert_same(got, want):
    for a, e in zip(got, want, strict=True):
        np.testing.assert_allclose(
            get_backend().to_numpy(a), get_backend().to_numpy(e), rtol=1e-10, atol=1e-12
        )


def test_batch_renorm_with_rmax_1_dmax_0_is_batch_norm(backend, rng):
    B, x, w, b, g = _inputs(rng)
    rm, rv = B.asarray(np.full(3, 5.0), B.float64), B.asarray(np.full(3, 0.1), B.float64)
    y, mean, var, ctx = F.batch_renorm_train(B, x, w, b, rm, rv, 1e-5, 1.0, 0.0)
    y0, mean0, var0, ctx0 = F.batch_norm_train.reference(B, x, w, b, 1e-5)
    _assert_same((y, mean, var), (y0, mean0, var0))
    _assert_same(
        F.batch_renorm_train_backward(B, g, ctx, w), F.batch_norm_train_backward.reference(B, g, ctx0, w)
    )


def test_batch_renorm_corrects_towards_the_running_statistics(backend, rng):
    B, x, *_ = _inputs(rng)
    rm, rv = B.asarray(np.zeros(3), B.float64), B.asarray(np.ones(3), B.float64)
    y, _, _, _ = F.batch_renorm_train(B, x, None, None, rm, rv, 0.0, 1e9, 1e9)
    # Unclipped, r and d undo the batch normalization: x_hat = (x - running_mean) / sqrt(running_var).
    np.testing.assert_allclose(B.to_numpy(y), B.to_numpy(x), rtol=1e-10, atol=1e-10)


def test_sync_batch_norm_on_one_process_is_batch_norm(backend, rng):
    from dualnorm.distributed import get_default_group

    group = get_default_group()
    assert group.size == 1
    B, x, w, b, g = _inputs(rng)
    y, mean, var, n, ctx = F.sync_batch_norm_train(B, x, w, b, 1e-5, group)
    y0, mean0, var0, ctx0 = F.batch_norm_train.reference(B, x, w, b, 1e-5)
    assert n == 6 * 4
    _assert_same((y, mean, var), (y0, mean0, var0))
    _assert_same(
        F.sync_batch_norm_train_backward(B, g, ctx, w), F.batch_norm_train_backward.reference(B, g, ctx0, w)
    )


def test_sync_batch_norm_refuses_one_value_per_channel(backend):
    from dualnorm.distributed import get_default_group

    B = get_backend()
    with pytest.raises(dualnorm.InputError, match="more than 1 value per channel"):
        F.sync_batch_norm_train(
            B, B.asarray(np.ones((1, 3)), B.float64), None, None, 1e-5, get_default_group()
        )
