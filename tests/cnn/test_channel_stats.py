"""Per-channel layer statistics for (N, C, H, W) outputs: means, stds, dead channels, round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from dualnorm.records import CHANNEL_STATS, LAYER_STATS, StepRecord
from dualnorm.training import layer_stats, record_layers


def _bn_relu(channels=4):
    model = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())
    bias = np.zeros(channels, np.float32)
    bias[2] = -100.0  # channel 2 is pushed below zero everywhere: the ReLU kills it
    model[0].bias.data = model.backend.asarray(bias)
    return model


def test_channel_moments_and_dead_channels(backend, rng):
    model = _bn_relu()
    be = model.backend
    x = be.asarray(rng.normal(2.0, 3.0, size=(6, 4, 5, 5)).astype(np.float32))
    h = model[0](x)
    out = model[1](h)
    bn, relu = (
        layer_stats(be, str(i), m, o, None) for i, (m, o) in enumerate([(model[0], h), (model[1], out)])
    )
    host = be.to_numpy(h).astype(np.float64)
    np.testing.assert_allclose(bn.channel_mean, host.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bn.channel_std, host.std(axis=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    assert bn.channel_mean[2] == pytest.approx(-100.0, abs=1e-3)  # BN output: beta per channel
    assert bn.dead_channel_frac is None  # only measured after a ReLU
    assert relu.dead_channel_frac == 0.25
    assert relu.channel_mean[2] == 0.0 and relu.channel_std[2] == 0.0
    units_dead = (be.to_numpy(out).reshape(6, -1).max(axis=0) <= 0).mean()  # the (C*H*W) units view
    assert relu.dead_frac == pytest.approx(units_dead) and relu.dead_frac >= 0.25
    assert bn.gamma_mean == 1.0 and bn.beta_mean == pytest.approx(-25.0)


def test_flat_outputs_have_no_channel_stats(backend, rng):
    lin = nn.Linear(3, 5)
    out = lin(lin.backend.asarray(rng.normal(size=(4, 3)).astype(np.float32)))
    stats = layer_stats(lin.backend, "0", lin, out, None)
    assert stats.channel_mean is None and stats.channel_std is None and stats.dead_channel_frac is None


def test_channel_stats_survive_json_and_stay_out_of_the_scalar_list(rng):
    with dualnorm.use_backend("numpy"):
        model = _bn_relu()
    x = rng.normal(size=(3, 4, 2, 2)).astype(np.float32)
    outs = [model[0](x)]
    outs.append(model[1](outs[0]))
    layers = record_layers(model.backend, ["0", "1"], list(model), outs, None)
    record = StepRecord("e", "v", 1, 1, 0.5, "numpy", layers=layers)
    back = StepRecord.from_dict(json.loads(record.to_json()))
    assert back.layers[1].channel_std == pytest.approx(layers[1].channel_std)
    assert back.layers[1].dead_channel_frac == 0.25
    assert "dead_channel_frac" in LAYER_STATS and not set(CHANNEL_STATS) & set(LAYER_STATS)
    bad = record.to_dict()
    bad["layers"][0]["channel_mean"] = "nope"
    with pytest.raises(dualnorm.InputError, match="channel_mean' must be a list of numbers or null"):
        StepRecord.from_dict(bad)
