"""NumPy and MLX agree: same seed, same init; same outputs, gradients and buffers (float32, ~1e-5)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import dualnorm
from dualnorm import nn
from tests.core._cases import CASES, assert_close, host, make_input, randomize

pytestmark = [
    pytest.mark.mlx,
    pytest.mark.skipif(importlib.util.find_spec("mlx") is None, reason="MLX is not installed"),
]


def _build(case, backend, seed=11):
    with dualnorm.use_backend(backend):
        dualnorm.manual_seed(seed)
        return case.make()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_same_seed_same_init(case):
    a, b = _build(case, "numpy"), _build(case, "mlx")
    assert a.backend.name == "numpy" and b.backend.name == "mlx"
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        np.testing.assert_array_equal(host(sa[key]), host(sb[key]), err_msg=key)
    for key, value in sb.items():
        expected = "int64" if key.endswith("num_batches_tracked") else "float32"
        assert str(value.dtype).endswith(expected), (key, value.dtype)


def test_different_seeds_differ():
    a = _build(CASES[[c.id for c in CASES].index("linear")], "numpy", seed=1)
    b = _build(CASES[[c.id for c in CASES].index("linear")], "numpy", seed=2)
    assert not np.array_equal(host(a.weight.data), host(b.weight.data))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_training_steps_agree_across_backends(case):
    layers = {name: _build(case, name) for name in ("numpy", "mlx")}
    for layer in layers.values():
        randomize(layer, seed=4)
    for step in range(4):
        training = step < 3
        x = (make_input(case, seed=30 + step) * (1 + step)).astype(np.float32)
        out, grads = {}, {}
        for name, layer in layers.items():
            layer.train(training)
            layer.zero_grad()
            out[name] = layer(x)
            G = np.random.default_rng(step).normal(size=tuple(out[name].shape)).astype(np.float32)
            grads[name] = layer.backward(G)
            assert layer.backend.is_array(out[name]) and layer.backend.is_array(grads[name])
        what = f"{case.id} step {step} ({'train' if training else 'eval'})"
        assert_close(out["mlx"], out["numpy"], 1e-5, f"{what} output")
        assert_close(grads["mlx"], grads["numpy"], 1e-5, f"{what} dL/dx")
        pa = dict(layers["numpy"].named_parameters())
        for n, p in layers["mlx"].named_parameters():
            assert_close(p.grad, pa[n].grad, 1e-5, f"{what} dL/d{n}")
        sa = layers["numpy"].state_dict()
        for key, value in layers["mlx"].state_dict().items():
            assert_close(value, sa[key], 1e-5, f"{what} {key}")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_module_to_moves_between_backends(case):
    layer = _build(case, "numpy")
    randomize(layer, seed=2)
    layer.eval()
    x = make_input(case).astype(np.float32)
    on_numpy = host(layer(x)).copy()
    layer.to("mlx")
    assert all(m.backend.name == "mlx" for _, m in layer.named_modules())
    y = layer(x)
    assert layer.backend.is_array(y) and type(y).__module__.startswith("mlx")
    assert_close(y, on_numpy, 1e-6, f"{case.id} after to('mlx')")
    for key, value in layer.state_dict().items():
        assert type(value).__module__.startswith("mlx"), key
    layer.to("numpy")
    y = layer(x)
    assert isinstance(y, np.ndarray)
    assert_close(y, on_numpy, 1e-6, f"{case.id} after to('numpy')")


def test_module_to_keeps_dtype_and_counter_type():
    with dualnorm.use_backend("numpy"):
        bn = nn.BatchNorm1d(2, dtype="float64")
    bn(np.random.default_rng(0).normal(size=(4, 2)))
    bn.to("mlx-cpu")  # float64: MLX has it on the CPU device only
    assert str(bn.weight.data.dtype).endswith("float64")
    assert str(bn.num_batches_tracked.dtype).endswith("int64")
    assert int(host(bn.num_batches_tracked)) == 1
