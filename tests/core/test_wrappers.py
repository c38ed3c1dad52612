"""Weight normalization, spectral normalization and batch renormalization beyond the shared cases."""

from __future__ import annotations

import numpy as np
import pytest

from dualnorm import nn
from tests.core._cases import host


@pytest.mark.parametrize("dim", [0, None])
def test_weight_norm_starts_as_the_plain_layer(backend, rng, dim):
    linear = nn.Linear(4, 3)
    x = rng.normal(size=(5, 4))
    plain = host(linear(x)).copy()
    weight = host(linear.weight.data).copy()
    wrapped = nn.utils.weight_norm(linear, dim=dim)
    np.testing.assert_allclose(host(wrapped(x)), plain, rtol=1e-5, atol=1e-6)
    g, v = host(wrapped.weight_g.data), host(wrapped.weight_v.data)
    np.testing.assert_array_equal(v, weight)
    expected_g = np.linalg.norm(weight) if dim is None else np.linalg.norm(weight, axis=1, keepdims=True)
    np.testing.assert_allclose(g, expected_g, rtol=1e-6)
    assert g.shape == (() if dim is None else (3, 1))
    assert sorted(n for n, _ in wrapped.named_parameters()) == ["bias", "weight_g", "weight_v"]


def test_weight_norm_length_is_g(backend, rng):
    wrapped = nn.utils.weight_norm(nn.Linear(3, 2), dim=0)
    wrapped.load_state_dict(
        {"weight_g": [[2.0], [0.5]], "weight_v": rng.normal(size=(2, 3)), "bias": [0.0, 0.0]}
    )
    wrapped(np.ones((1, 3)))
    effective = host(wrapped.module.weight.data)
    np.testing.assert_allclose(np.linalg.norm(effective, axis=1), [2.0, 0.5], rtol=1e-5)


def test_spectral_norm_converges_to_the_largest_singular_value(backend, rng):
    layer = nn.utils.spectral_norm(nn.Linear(5, 4), n_power_iterations=3)
    for _ in range(20):
        layer(rng.normal(size=(2, 5)))
    effective = host(layer.module.weight.data)
    np.testing.assert_allclose(np.linalg.svd(effective, compute_uv=False)[0], 1.0, rtol=1e-4)
    # torch lists the wrapped module's own "bias" first; the key set is what has to match.
    assert sorted(layer.state_dict()) == ["bias", "weight_orig", "weight_u", "weight_v"]


def test_spectral_norm_eval_keeps_u_and_v(backend, rng):
    layer = nn.utils.spectral_norm(nn.Linear(3, 3))
    layer(rng.normal(size=(2, 3)))
    layer.eval()
    before = {k: host(v).copy() for k, v in layer.state_dict().items()}
    first = host(layer(rng.normal(size=(2, 3)))).copy()
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(host(v), before[k])
    assert np.isfinite(first).all()


def test_wrappers_survive_load_state_dict_round_trip(backend, rng):
    a = nn.utils.spectral_norm(nn.Linear(3, 2))
    b = nn.utils.spectral_norm(nn.Linear(3, 2))
    a(rng.normal(size=(2, 3)))
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x = rng.normal(size=(4, 3))
    np.testing.assert_allclose(host(a(x)), host(b(x)), rtol=1e-6)


def test_batch_renorm_eval_uses_running_stats(backend, rng):
    layer = nn.BatchRenorm1d(2)
    for _ in range(3):
        layer(rng.normal(2, 3, size=(8, 2)))
    layer.eval()
    x = rng.normal(size=(1, 2))
    rm, rv = host(layer.running_mean), host(layer.running_var)
    np.testing.assert_allclose(host(layer(x)), (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-5)


def test_batch_renorm_rmax_dmax_can_be_scheduled(backend):
    layer = nn.BatchRenorm1d(1)
    assert (layer.rmax, layer.dmax) == (3.0, 5.0)
    layer.rmax, layer.dmax = 1.0, 0.0
    y = host(layer(np.arange(1.0, 7.0).reshape(6, 1))).ravel()
    np.testing.assert_allclose(y, [-1.4638, -0.8783, -0.2928, 0.2928, 0.8783, 1.4638], atol=5e-5)
