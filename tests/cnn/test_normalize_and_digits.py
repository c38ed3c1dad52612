"""Normalize against torchvision's formula (in torch tensor maths), on both backends; digits as images."""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm.data import CIFAR10_MEAN, CIFAR10_STD, Normalize, load_digits, normalize
from dualnorm.errors import InputError

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD


def _torchvision_formula(x, mean, std):
    """torchvision.transforms.functional.normalize, written out (torchvision is not installed here)."""
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.array(x))
    m = torch.as_tensor(mean, dtype=t.dtype)
    s = torch.as_tensor(std, dtype=t.dtype)
    if m.ndim == 1:
        m = m.view(-1, 1, 1)
    if s.ndim == 1:
        s = s.view(-1, 1, 1)
    return t.sub_(m).div_(s).numpy()


def _numpy_formula(x, mean, std):
    m = np.asarray(mean, np.float64).astype(x.dtype).reshape(-1, 1, 1)
    s = np.asarray(std, np.float64).astype(x.dtype).reshape(-1, 1, 1)
    return (x - m) / s


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (3, 7, 7), (2, 2, 3, 4, 4)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_the_formula_on_each_backend(backend, rng, shape, dtype):
    x = rng.uniform(0, 1, size=shape).astype(dtype)
    be = dualnorm.get_backend()
    out = Normalize(MEAN, STD)(be.asarray(x, be.dtype(dtype)))
    assert be.is_array(out) and str(be.numpy_dtype(out.dtype)) == dtype
    expected = _numpy_formula(x, MEAN, STD)
    if backend == "numpy":
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(be.to_numpy(out), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("mean", "std"),
    [(MEAN, STD), ((0.5,), (0.5,)), (0.5, 0.25), ([0.1, 0.2, 0.3], [1e-3, 2.0, 0.7])],
)
def test_matches_torchvision_in_torch(rng, mean, std):
    x = rng.uniform(0, 1, size=(5, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(normalize(x, mean, std), _torchvision_formula(x, mean, std))


def test_inplace_and_copy():
    x = np.full((1, 2, 2, 2), 1.0, np.float32)
    out = normalize(x, (0.5, 0.0), (0.5, 2.0))
    assert out is not x and x[0, 0, 0, 0] == 1.0
    assert out[0, :, 0, 0].tolist() == [1.0, 0.5]
    same = Normalize((0.5, 0.0), (0.5, 2.0), inplace=True)(x)
    assert same is x and x[0, :, 0, 0].tolist() == [1.0, 0.5]


@pytest.mark.parametrize(
    ("x", "mean", "std", "error", "match"),
    [
        (np.zeros((1, 3, 2, 2), np.uint8), MEAN, STD, TypeError, "should be a float array, got uint8"),
        (
            np.zeros((3, 4), np.float32),
            MEAN,
            STD,
            ValueError,
            "shape \\(..., C, H, W\\), got shape \\(3, 4\\)",
        ),
        (
            np.zeros((1, 3, 2, 2), np.float32),
            (0.5, 0.5),
            STD,
            ValueError,
            "mean has 2 values, but the input has 3",
        ),
        (np.zeros((1, 3, 2, 2), np.float32), MEAN, (1.0, 0.0, 1.0), ValueError, "std evaluated to zero"),
        # torchvision's check comes after the cast: 1e-50 is zero in float32
        (
            np.zeros((1, 3, 2, 2), np.float32),
            MEAN,
            (1e-50, 1.0, 1.0),
            ValueError,
            "after conversion to float32",
        ),
        (np.zeros((1, 3, 2, 2), np.float32), "abc", STD, TypeError, "mean must be a number"),
        ([[[0.0]]], MEAN, STD, TypeError, "takes an image array"),
    ],
)
def test_errors(x, mean, std, error, match):
    with pytest.raises(error, match=match) as info:
        normalize(x, mean, std)
    assert isinstance(info.value, InputError)


def test_float64_keeps_tiny_std():
    x = np.ones((1, 1, 1, 1), np.float64)
    assert normalize(x, 0.0, 1e-50)[0, 0, 0, 0] == pytest.approx(1e50)


def test_class_checks_zero_std_up_front_and_reprs():
    with pytest.raises(InputError, match="std must not contain zeros"):
        Normalize((0.5,), (0.0,))
    assert repr(Normalize(MEAN, STD)) == f"Normalize(mean={MEAN}, std={STD})"


def test_digits_as_images_are_the_same_pixels():
    flat, images = load_digits(), load_digits(images=True)
    assert images.x_train.shape == (1500, 1, 8, 8) and images.x_test.shape == (297, 1, 8, 8)
    assert images.image_shape == (1, 8, 8) and images.input_dim == 64 and flat.image_shape is None
    np.testing.assert_array_equal(images.x_train.reshape(1500, 64), flat.x_train)
    np.testing.assert_array_equal(images.y_test, flat.y_test)
    # row-major 8x8: pixel (r, c) of the image is feature 8*r + c
    assert images.x_test[5, 0, 3, 6] == flat.x_test[5, 8 * 3 + 6]
    raw = load_digits(normalize=False, images=True)
    assert float(raw.x_train.max()) == 16.0
