"""Forward pass and running buffers of every layer vs the float64 reference, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from tests.core._cases import (
    CASES,
    STATEFUL,
    assert_close,
    host,
    make_input,
    randomize,
    run_reference,
    split_state,
)

MODES = [pytest.param(True, id="train"), pytest.param(False, id="eval")]
DTYPES = [pytest.param("float32", id="f32"), pytest.param("float64", id="f64")]
TOL = {"float32": 1e-5, "float64": 1e-11}
# MLX computes exp in float32 precision even for float64 arrays (~1e-7 relative).
MLX_F64_EXP = {"sigmoid", "selu"}


def _tol(backend: str, case_id: str, dtype: str) -> float:
    if backend == "mlx" and dtype == "float64" and case_id in MLX_F64_EXP:
        return 1e-6
    return TOL[dtype]


def _as_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """The input as the layer will see it (rounded to float32 for a float32 layer)."""
    return x.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_reference(backend, case, training, dtype):
    layer = case.make(dtype)
    randomize(layer)
    layer.train(training)
    params, buffers = split_state(layer)
    x = _as_dtype(make_input(case), dtype)
    y = layer(x)
    assert layer.backend.is_array(y), f"{case.id} returned {type(y).__name__}, not a {backend} array"
    assert str(y.dtype).endswith(dtype)
    y_ref, buffers_ref, _ = run_reference(case, x, params, buffers, training, dtype)
    assert_close(y, y_ref, _tol(backend, case.id, dtype), f"{case.id} output")
    _, buffers_after = split_state(layer)
    assert buffers_after.keys() == buffers_ref.keys()
    for name, expected in buffers_ref.items():
        assert_close(buffers_after[name], expected, TOL[dtype], f"{case.id} buffer {name}")


@pytest.mark.parametrize("case", STATEFUL, ids=str)
def test_running_buffers_after_several_steps(backend, case):
    """Three training steps (forward + backward), then eval: buffers and eval output match the reference."""
    layer = case.make("float32")
    randomize(layer, seed=5)
    params, state = split_state(layer)
    for step in range(3):
        x = _as_dtype(make_input(case, seed=10 + step) * (1 + step), "float32")
        layer.train()
        y = layer(x)
        layer.backward(np.ones(tuple(y.shape)))
        _, state = run_reference(case, x, params, state, True)[:2]
        _, got = split_state(layer)
        for name, expected in state.items():
            assert_close(got[name], expected, 1e-5, f"{case.id} step {step} buffer {name}")
    layer.eval()
    x = _as_dtype(make_input(case, seed=99), "float32")
    y_ref, _, _ = run_reference(case, x, params, state, False)
    assert_close(layer(x), y_ref, 1e-5, f"{case.id} eval output after training")


# --- the documents' worked example and specific semantics ------------------------------------
def test_worked_example(backend):
    bn = nn.BatchNorm1d(1)
    assert host(bn.weight.data).tolist() == [1.0] and host(bn.bias.data).tolist() == [0.0]
    y = bn(np.arange(1.0, 7.0).reshape(6, 1))
    assert bn.backend.name == backend and bn.backend.is_array(y)
    np.testing.assert_allclose(
        host(y).ravel(), [-1.4638, -0.8783, -0.2928, 0.2928, 0.8783, 1.4638], atol=5e-5
    )
    np.testing.assert_allclose(host(bn.running_mean), [0.1 * 3.5], rtol=1e-6)
    np.testing.assert_allclose(host(bn.running_var), [0.9 + 0.1 * 3.5], rtol=1e-6)
    assert int(host(bn.num_batches_tracked)) == 1


@pytest.mark.parametrize("layer_cls", [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.BatchRenorm1d])
def test_fresh_batchnorm_state(backend, layer_cls):
    bn = layer_cls(4)
    state = {k: host(v) for k, v in bn.state_dict().items()}
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    np.testing.assert_array_equal(state["weight"], np.ones(4))
    np.testing.assert_array_equal(state["bias"], np.zeros(4))
    np.testing.assert_array_equal(state["running_mean"], np.zeros(4))
    np.testing.assert_array_equal(state["running_var"], np.ones(4))
    assert state["num_batches_tracked"].shape == () and int(state["num_batches_tracked"]) == 0
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (1e-5, 0.1, True, True)


def test_momentum_none_is_cumulative_average(backend, rng):
    bn = nn.BatchNorm1d(2, momentum=None)
    batches = [rng.normal(i, 1 + i, (6, 2)) for i in range(4)]
    for b in batches:
        bn(b)
    means = np.mean([b.mean(0) for b in batches], axis=0)
    unbiased = np.mean([b.var(0, ddof=1) for b in batches], axis=0)
    # The running variance starts at 1 and the first batch replaces it (factor 1/1).
    np.testing.assert_allclose(host(bn.running_mean), means, rtol=1e-5)
    np.testing.assert_allclose(host(bn.running_var), unbiased, rtol=1e-5)
    assert int(host(bn.num_batches_tracked)) == 4


def test_eval_batch_of_one_uses_running_stats(backend):
    bn = nn.BatchNorm1d(2)
    bn.load_state_dict(
        {
            "weight": [2.0, 1.0],
            "bias": [0.5, 0.0],
            "running_mean": [1.0, -1.0],
            "running_var": [4.0, 0.25],
            "num_batches_tracked": np.array(7),
        }
    )
    bn.eval()
    y = host(bn(np.array([[3.0, 0.0]])))
    expected = np.array([2.0 * 2.0 / np.sqrt(4 + 1e-5) + 0.5, 1.0 / np.sqrt(0.25 + 1e-5)])
    np.testing.assert_allclose(y, [expected], rtol=1e-5)
    assert int(host(bn.num_batches_tracked)) == 7


def test_instance_norm_defaults(backend):
    layer = nn.InstanceNorm2d(3)
    assert (layer.affine, layer.track_running_stats, layer.eps, layer.momentum) == (False, False, 1e-5, 0.1)
    assert list(layer.state_dict()) == []
    tracked = nn.InstanceNorm1d(3, affine=True, track_running_stats=True)
    assert list(tracked.state_dict()) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]


def test_instance_norm_momentum_none_leaves_running_stats(backend, rng):
    layer = nn.InstanceNorm1d(2, momentum=None, track_running_stats=True)
    layer(rng.normal(3, 2, (4, 2, 5)))
    np.testing.assert_array_equal(host(layer.running_mean), [0, 0])
    np.testing.assert_array_equal(host(layer.running_var), [1, 1])
    assert int(host(layer.num_batches_tracked)) == 0


def test_group_norm_groups_are_contiguous(backend):
    """Channels 0,1 form group 0 (PyTorch), not channels 0,2 (MLX's default interleaving)."""
    x = np.zeros((1, 4, 2))
    x[0, 0], x[0, 1] = [0.0, 2.0], [4.0, 6.0]  # group 0: values 0, 2, 4, 6
    x[0, 2], x[0, 3] = [10.0, 10.0], [20.0, 20.0]
    y = host(nn.GroupNorm(2, 4, eps=0.0)(x))
    g0 = (np.array([0.0, 2.0, 4.0, 6.0]) - 3.0) / np.sqrt(5.0)
    np.testing.assert_allclose(y[0, :2].ravel(), g0, rtol=1e-5)
    np.testing.assert_allclose(y[0, 2:].ravel(), [-1, -1, 1, 1], rtol=1e-5)


def test_group_norm_extremes_equal_layer_and_instance_norm(backend, rng):
    x = rng.normal(size=(3, 4, 5))
    gn1, ln = nn.GroupNorm(1, 4), nn.LayerNorm((4, 5), elementwise_affine=False)
    np.testing.assert_allclose(host(gn1(x)), host(ln(x)), atol=1e-5)
    gnc, inn = nn.GroupNorm(4, 4), nn.InstanceNorm1d(4)
    np.testing.assert_allclose(host(gnc(x)), host(inn(x)), atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rms_norm_default_eps_is_machine_epsilon(backend, dtype):
    layer = nn.RMSNorm(3, dtype=dtype)
    assert layer.eps is None
    x = np.zeros((1, 3))
    x[0, 0] = 1e-4  # mean square 3.3e-9: eps (1.2e-7 / 2.2e-16) decides the scale
    y = host(layer(x))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(y[0, 0], 1e-4 / np.sqrt(1e-8 / 3 + eps), rtol=1e-4)


def test_batch_renorm_with_rmax_1_dmax_0_is_batch_norm(backend, rng):
    renorm, bn = nn.BatchRenorm1d(3, rmax=1.0, dmax=0.0), nn.BatchNorm1d(3)
    renorm.load_state_dict(bn.state_dict())
    for step in range(3):
        x = rng.normal(step, 2.0, (6, 3))
        g = rng.normal(size=(6, 3))
        np.testing.assert_allclose(host(renorm(x)), host(bn(x)), atol=1e-6)
        np.testing.assert_allclose(host(renorm.backward(g)), host(bn.backward(g)), atol=1e-6)
    for (k, a), (_, b) in zip(renorm.state_dict().items(), bn.state_dict().items(), strict=True):
        np.testing.assert_allclose(host(a), host(b), atol=1e-6, err_msg=k)
    np.testing.assert_allclose(host(renorm.weight.grad), host(bn.weight.grad), atol=1e-5)


def test_batch_renorm_corrects_towards_running_stats(backend):
    """With running stats far from the batch's, r and d are active and clipped at rmax / dmax."""
    layer = nn.BatchRenorm1d(1, rmax=2.0, dmax=1.0)
    layer.load_state_dict(
        {
            **{k: host(v) for k, v in layer.state_dict().items()},
            "running_mean": [-10.0],
            "running_var": [100.0],
        }
    )
    x = np.arange(1.0, 7.0).reshape(6, 1)
    y = host(layer(x)).ravel()
    plain = (x.ravel() - 3.5) / np.sqrt(x.var() + 1e-5)
    # sigma_B / sigma = 1.7 / 10 -> clipped to 1/rmax; (mu - running_mean) / sigma = 1.35 -> clipped to dmax.
    np.testing.assert_allclose(y, plain * 0.5 + 1.0, rtol=1e-5)


def test_layers_accept_lists_numpy_and_backend_arrays(backend):
    layer = nn.LayerNorm(3)
    data = [[1.0, 2.0, 4.0], [0.0, -1.0, 5.0]]
    from_list = host(layer(data))
    from_numpy = host(layer(np.array(data, dtype=np.float32)))
    from_int = host(layer(np.array([[1, 2, 4], [0, -1, 5]])))
    native = layer.backend.asarray(np.array(data), layer.backend.float32)
    out = layer(native)
    assert layer.backend.is_array(out)
    for other in (from_numpy, from_int, host(out)):
        np.testing.assert_array_equal(from_list, other)


def test_nan_propagates(backend):
    x = np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]])
    for layer in (nn.BatchNorm1d(2), nn.LayerNorm(2), nn.GroupNorm(1, 2), nn.RMSNorm(2)):
        y = host(layer(x))
        assert np.isnan(y).any(), f"{type(layer).__name__} replaced NaN"
    bn = nn.BatchNorm1d(2)
    y = host(bn(x))
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, 0]).all()
    assert np.isnan(host(bn.running_mean)[1]) and np.isfinite(host(bn.running_mean)[0])


def test_float32_by_default_and_float64_on_request(backend):
    assert str(nn.BatchNorm1d(2).weight.data.dtype).endswith("float32")
    layer = nn.BatchNorm1d(2, dtype="float64")
    assert str(layer.weight.data.dtype).endswith("float64")
    assert str(layer.running_var.dtype).endswith("float64")
    assert str(layer(np.ones((3, 2), dtype=np.float32)).dtype).endswith("float64")


def test_to_numpy_of_outputs_is_numpy(backend):
    y = nn.Tanh()(np.ones((2, 2)))
    arr = dualnorm.to_numpy(y)
    assert isinstance(arr, np.ndarray)
    np.testing.assert_allclose(arr, np.tanh(np.ones((2, 2))), rtol=1e-6)
