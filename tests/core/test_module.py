"""Module plumbing: parameter names, train/eval, zero_grad, Sequential, state_dict, dtypes."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from dualnorm import nn
from tests.core._cases import host


def _mlp():
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 1))


def test_named_parameters_use_torch_names(backend):
    model = _mlp()
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
    ]
    assert len(list(model.parameters())) == 6
    for _, p in model.named_parameters():
        assert p.grad is None and model.backend.is_array(p.data)
    assert [n for n, _ in model.named_buffers()] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert [n for n, _ in model.named_modules()] == ["", "0", "1", "2", "3"]


def test_state_dict_order_is_torchs(backend):
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2))
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "0.running_mean",
        "0.running_var",
        "0.num_batches_tracked",
        "1.weight",
        "1.bias",
    ]


def test_named_sequential(backend):
    model = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("norm", nn.LayerNorm(2))]))
    assert list(model.state_dict()) == ["fc.weight", "fc.bias", "norm.weight", "norm.bias"]
    assert isinstance(model[1], nn.LayerNorm) and len(model) == 2
    model.append(nn.Tanh())
    assert isinstance(list(model)[-1], nn.Tanh) and len(model) == 3


def test_train_eval_propagate(backend):
    model = _mlp()
    assert all(m.training for _, m in model.named_modules())
    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())
    wrapped = nn.Sequential(nn.utils.weight_norm(nn.Linear(2, 2)))
    wrapped.eval()
    assert not any(m.training for _, m in wrapped.named_modules())


def test_eval_does_not_update_running_stats(backend, rng):
    bn = nn.BatchNorm1d(2)
    bn(rng.normal(size=(4, 2)))
    before = {k: host(v).copy() for k, v in bn.state_dict().items()}
    bn.eval()
    bn(rng.normal(5, 3, size=(4, 2)))
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(host(v), before[k])


def test_sequential_backward_chains_and_zero_grad(backend, rng):
    model = _mlp()
    x = rng.normal(size=(5, 2))
    y = model(x)
    grad_x = model.backward(np.ones(tuple(y.shape)))
    assert tuple(grad_x.shape) == (5, 2)
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_parameter_accessors(backend):
    layer = nn.Linear(3, 2)
    assert layer.weight.shape == (2, 3)
    assert isinstance(layer.weight.numpy(), np.ndarray)
    assert "shape=(2, 3)" in repr(layer.weight)
    assert "in_features=3" in repr(layer)
    assert "(0): Linear" in repr(nn.Sequential(layer))
    no_bias = nn.Linear(3, 2, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]


def test_unknown_attribute_error(backend):
    with pytest.raises(AttributeError, match="running_std"):
        _ = nn.BatchNorm1d(2).running_std


def test_replacing_a_parameter_attribute_is_seen_by_forward(backend):
    layer = nn.LayerNorm(2)
    layer.weight = nn.Parameter(layer.backend.asarray(np.array([2.0, 2.0]), layer.dtype))
    y = host(layer(np.array([[0.0, 1.0]])))
    np.testing.assert_allclose(y, [[-2.0, 2.0]], atol=1e-3)


@pytest.mark.parametrize(
    "act", [nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.SELU, nn.Identity, nn.Flatten]
)
def test_parameter_free_layers_keep_float64(backend, act, rng):
    """A float64 model stays float64 through activations built without a dtype (as in PyTorch)."""
    model = nn.Sequential(nn.Linear(3, 3, dtype="float64"), act())
    y = model(rng.normal(size=(4, 3)))
    assert str(y.dtype).endswith("float64")
    grad = model.backward(np.ones(tuple(y.shape)))
    assert str(grad.dtype).endswith("float64")
    assert str(model[0].weight.grad.dtype).endswith("float64")
    y32 = act()(np.ones((2, 3), dtype=np.float32))
    assert str(y32.dtype).endswith("float32")
    assert str(act()(np.ones((2, 3), dtype=np.int64)).dtype).endswith("float32")
    assert str(act(dtype="float32")(np.ones((2, 3))).dtype).endswith("float32")


def test_activation_values(backend):
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    np.testing.assert_allclose(host(nn.ReLU()(x)), np.maximum(x, 0))
    np.testing.assert_allclose(host(nn.LeakyReLU()(x)), np.where(x > 0, x, 0.01 * x), rtol=1e-6)
    big = np.array([[-800.0, 800.0]])
    np.testing.assert_allclose(host(nn.Sigmoid()(big)), [[0.0, 1.0]])  # no overflow warnings or NaN


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: nn.Linear(3, 2), "bias"),
        (lambda: nn.Conv2d(1, 2, 3), "bias"),
        (lambda: nn.BatchNorm1d(3), "weight"),
        (lambda: nn.LayerNorm(3), "bias"),
    ],
    ids=["Linear", "Conv2d", "BatchNorm1d", "LayerNorm"],
)
def test_setting_a_parameter_to_none_drops_it_as_in_pytorch(make, name):
    layer = make()
    setattr(layer, name, None)
    assert getattr(layer, name) is None
    assert name not in dict(layer.named_parameters())  # no optimizer updates what is not used
    assert name not in layer.state_dict()


@pytest.mark.parametrize(
    ("features", "shape"), [((1, 3), (1,)), ((3, 1), (3,)), ((1, 1), (1,)), ((1, 2), (4, 1))]
)
def test_linear_one_feature_keeps_matmuls_shapes_and_values(backend, features, shape):
    # One input or output feature: the product over one term is computed as an outer product;
    # shapes and values are matmul's, a 1-D input included (its axis dropped, as in PyTorch).
    from dualnorm import manual_seed, to_numpy

    manual_seed(0)
    layer = nn.Linear(*features)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    g_shape = (*shape[:-1], features[1])
    g = np.random.default_rng(1).standard_normal(g_shape).astype(np.float32)
    w, b = to_numpy(layer.weight.data), to_numpy(layer.bias.data)
    y = to_numpy(layer(x))
    dx = to_numpy(layer.backward(g))
    assert y.shape == g_shape and dx.shape == shape
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, g @ w, rtol=1e-6, atol=1e-7)
