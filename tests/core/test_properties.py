"""Property-based tests: random shapes, eps, momentum and affine flags vs the float64 reference,
and NumPy/MLX agreement."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dualnorm
from dualnorm import nn
from tests.core._cases import (
    assert_close,
    host,
    ref_batchnorm,
    ref_groupnorm,
    ref_instancenorm,
    ref_layernorm,
    ref_rmsnorm,
    split_state,
)

BACKENDS = dualnorm.available_backends()
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

eps_st = st.sampled_from([1e-5, 1e-3, 0.1, 0.0])
momentum_st = st.one_of(st.none(), st.floats(0.0, 1.0))


def _run_everywhere(build, ref, inputs, scale):
    """Train on ``inputs`` then eval on the last one, on every backend; check each step vs ``ref``."""
    outputs = {}
    for name in BACKENDS:
        with dualnorm.use_backend(name):
            dualnorm.manual_seed(0)
            layer = build()
        params, state = split_state(layer)
        outs = []
        for i, x in enumerate(inputs):
            training = i < len(inputs) - 1
            layer.train(training)
            x32 = x.astype(np.float32).astype(np.float64)
            y = layer(x32)
            y_ref, state, _ = ref(np, x32, params, state, training, None)
            assert_close(y, y_ref, 1e-4 * scale, f"{name} step {i} output")
            _, got = split_state(layer)
            for key, value in state.items():
                assert_close(got[key], value, 1e-4, f"{name} step {i} {key}")
            outs.append(host(y))
        outputs[name] = outs
    if len(outputs) == 2:
        for a, b in zip(outputs["numpy"], outputs["mlx"], strict=True):
            assert_close(b, a, 1e-4 * scale, "numpy vs mlx")


def _inputs(draw, shape, steps=3):
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    loc = draw(st.sampled_from([0.0, 3.0, -50.0]))
    spread = draw(st.sampled_from([0.5, 1.0, 10.0]))
    return [rng.normal(loc, spread, shape) for _ in range(steps)]


@st.composite
def batchnorm_setup(draw):
    ndim = draw(st.sampled_from([2, 3, 4]))
    c = draw(st.integers(1, 4))
    n = draw(st.integers(2, 5))
    shape = (n, c, *draw(st.lists(st.integers(1, 3), min_size=ndim - 2, max_size=ndim - 2)))
    kwargs = {
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        "momentum": draw(momentum_st),
        "affine": draw(st.booleans()),
        "track_running_stats": draw(st.booleans()),
    }
    return shape, kwargs, _inputs(draw, shape)


@SETTINGS
@given(batchnorm_setup())
def test_batchnorm_property(setup):
    shape, kw, inputs = setup
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]

    def ref(xp, x, P, S, training, frozen):
        return ref_batchnorm(xp, x, P, S, training, frozen, eps=kw["eps"], momentum=kw["momentum"])

    if not kw["track_running_stats"] and np.prod(shape) // shape[1] == 1:
        return
    _run_everywhere(lambda: cls(shape[1], **kw), ref, inputs, scale=10.0)


@st.composite
def trailing_setup(draw):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    norm = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    if np.prod(norm) == 1:
        norm = (*norm[:-1], 2)
    return (
        lead + norm,
        norm,
        draw(eps_st),
        draw(st.booleans()),
        draw(st.booleans()),
        _inputs(draw, lead + norm, 2),
    )


@SETTINGS
@given(trailing_setup())
def test_layernorm_property(setup):
    _shape, norm, eps, affine, bias, inputs = setup

    def ref(xp, x, P, S, training, frozen):
        return ref_layernorm(xp, x, P, S, training, frozen, k=len(norm), eps=eps)

    arg = norm[0] if len(norm) == 1 else norm
    _run_everywhere(
        lambda: nn.LayerNorm(arg, eps=eps, elementwise_affine=affine, bias=bias), ref, inputs, 10.0
    )


@SETTINGS
@given(trailing_setup())
def test_rmsnorm_property(setup):
    _shape, norm, eps, affine, _, inputs = setup
    eps = eps or None
    ref_eps = float(np.finfo(np.float32).eps) if eps is None else eps

    def ref(xp, x, P, S, training, frozen):
        return ref_rmsnorm(xp, x, P, S, training, frozen, k=len(norm), eps=ref_eps)

    _run_everywhere(lambda: nn.RMSNorm(norm, eps=eps, elementwise_affine=affine), ref, inputs, 10.0)


@st.composite
def groupnorm_setup(draw):
    groups = draw(st.integers(1, 3))
    per = draw(st.integers(1, 3))
    shape = (
        draw(st.integers(1, 3)),
        groups * per,
        *draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)),
    )
    if per * int(np.prod(shape[2:])) == 1:
        shape = (*shape, 2)
    return groups, shape, draw(eps_st), draw(st.booleans()), _inputs(draw, shape, 2)


@SETTINGS
@given(groupnorm_setup())
def test_groupnorm_property(setup):
    groups, shape, eps, affine, inputs = setup

    def ref(xp, x, P, S, training, frozen):
        return ref_groupnorm(xp, x, P, S, training, frozen, groups=groups, eps=eps)

    _run_everywhere(lambda: nn.GroupNorm(groups, shape[1], eps=eps, affine=affine), ref, inputs, 10.0)


@st.composite
def instancenorm_setup(draw):
    spatial = draw(st.sampled_from([1, 2]))
    dims = tuple(draw(st.lists(st.integers(1, 3), min_size=spatial, max_size=spatial)))
    if np.prod(dims) == 1:
        dims = (*dims[:-1], 2)
    c = draw(st.integers(1, 3))
    batched = draw(st.booleans())
    shape = ((draw(st.integers(1, 3)),) if batched else ()) + (c, *dims)
    kw = {
        "eps": draw(st.sampled_from([1e-5, 1e-2])),
        "momentum": draw(momentum_st),
        "affine": draw(st.booleans()),
        "track_running_stats": draw(st.booleans()),
    }
    return spatial, shape, kw, _inputs(draw, shape)


@SETTINGS
@given(instancenorm_setup())
def test_instancenorm_property(setup):
    spatial, shape, kw, inputs = setup
    cls = nn.InstanceNorm1d if spatial == 1 else nn.InstanceNorm2d
    c = shape[-spatial - 1]

    def ref(xp, x, P, S, training, frozen):
        return ref_instancenorm(
            xp, x, P, S, training, frozen, spatial=spatial, eps=kw["eps"], momentum=kw["momentum"]
        )

    _run_everywhere(lambda: cls(c, **kw), ref, inputs, 10.0)


@SETTINGS
@given(st.integers(2, 6), st.integers(1, 4), st.floats(-3, 3), st.floats(0.1, 5))
def test_batchnorm_output_is_standardized(n, c, loc, spread):
    """Whatever the data, a training-mode BatchNorm output has mean 0 and (biased) variance ~1 per channel."""
    x = np.random.default_rng(n * 10 + c).normal(loc, spread, (n, c))
    # eps=1e-12, not 0: PyTorch (and dualnorm) refuse eps=0 when normalizing with batch statistics.
    y = host(nn.BatchNorm1d(c, eps=1e-12)(x)).astype(np.float64)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=0), 1.0, atol=1e-4)
