"""Every layer against its torch.nn equivalent with the same parameters (skipped without PyTorch)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.core._cases import CASES, assert_close, host, make_input, randomize

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch
TORCH_CASES = [c for c in CASES if c.torch is not None]
# float64 on NumPy and MLX is compared tightly; float32 at ~1e-5 of the array's scale.
TOL = {"float32": 2e-5, "float64": 1e-10}
DTYPES = [pytest.param("float32", id="f32"), pytest.param("float64", id="f64")]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: waking torch's thread pool costs more than the math."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _torch_module(case, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        module = case.torch()
    return module.to(getattr(torch, dtype))


def _pair(case, dtype):
    layer = case.make(dtype)
    randomize(layer)
    ref = _torch_module(case, dtype)
    state = {k: torch.tensor(host(v)) for k, v in layer.state_dict().items()}
    ref.load_state_dict(state, strict=True)  # our keys load into torch as they are
    return layer, ref


def _torch_step(ref, x, G, dtype):
    tx = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
    ref.zero_grad()
    y = ref(tx)
    (y * torch.tensor(G, dtype=y.dtype)).sum().backward()
    return y.detach().numpy(), tx.grad.numpy(), {n: p.grad.numpy() for n, p in ref.named_parameters()}


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_state_dict_keys_match_torch(backend, case):
    layer = case.make()
    ref = _torch_module(case, "float32")
    ours, theirs = list(layer.state_dict()), list(ref.state_dict())
    if case.id.startswith(("weight_norm", "spectral_norm")):
        # torch re-registers the reparametrized weight after the module's other parameters.
        assert sorted(ours) == sorted(theirs)
    else:
        assert ours == theirs
    for key, value in ref.state_dict().items():
        assert tuple(layer.state_dict()[key].shape) == tuple(value.shape), key
    assert [n for n, _ in layer.named_parameters()] == [
        n for n, _ in ref.named_parameters()
    ] or case.id.startswith(("weight_norm", "spectral_norm"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_train_steps_match_torch(backend, case, dtype):
    """Three training steps then eval: outputs, input and parameter gradients, running buffers."""
    layer, ref = _pair(case, dtype)
    tol = TOL[dtype]
    if backend == "mlx" and dtype == "float64" and case.id in ("sigmoid", "selu"):
        tol = 1e-6  # MLX evaluates exp in float32 precision even for float64 arrays
    rng = np.random.default_rng(3)
    layer.train()
    ref.train()
    for step in range(3):
        x = (make_input(case, seed=20 + step) * (1 + step)).astype(dtype)
        layer.zero_grad()
        y = layer(x)
        G = rng.normal(size=tuple(y.shape)).astype(dtype)
        ty, tgx, tgp = _torch_step(ref, x, G, dtype)
        gx = layer.backward(G)
        assert_close(y, ty, tol, f"{case.id} step {step} output")
        assert_close(gx, tgx, tol, f"{case.id} step {step} dL/dx")
        ours = {n: p.grad for n, p in layer.named_parameters()}
        assert ours.keys() == tgp.keys()
        for name, g in tgp.items():
            assert_close(ours[name], g, tol, f"{case.id} step {step} dL/d{name}")
        theirs = ref.state_dict()
        for key, value in layer.state_dict().items():
            assert_close(value, theirs[key].numpy(), tol, f"{case.id} step {step} {key}")
    layer.eval()
    ref.eval()
    x = make_input(case, seed=50).astype(dtype)
    layer.zero_grad()
    y = layer(x)
    G = rng.normal(size=tuple(y.shape)).astype(dtype)
    ty, tgx, tgp = _torch_step(ref, x, G, dtype)
    assert_close(y, ty, tol, f"{case.id} eval output")
    assert_close(layer.backward(G), tgx, tol, f"{case.id} eval dL/dx")
    for name, p in layer.named_parameters():
        assert_close(p.grad, tgp[name], tol, f"{case.id} eval dL/d{name}")


def test_batchnorm_single_value_per_channel_message_like_torch(backend):
    from dualnorm import nn

    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as theirs:
        torch.nn.BatchNorm1d(3)(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"(?i)expected more than 1 value per channel when training") as ours:
        nn.BatchNorm1d(3)(np.ones((1, 3)))
    assert "(1, 3)" in str(ours.value) and theirs.value is not None


def test_weight_norm_init_matches_torch(backend):
    from dualnorm import nn

    for dim in (0, None):
        linear = nn.Linear(4, 3)
        weight = host(linear.weight.data).copy()
        t_linear = torch.nn.Linear(4, 3)
        with torch.no_grad():
            t_linear.weight.copy_(torch.tensor(weight))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_wn = torch.nn.utils.weight_norm(t_linear, dim=dim)
        wn = nn.utils.weight_norm(linear, dim=dim)
        for key in ("weight_g", "weight_v"):
            np.testing.assert_allclose(host(wn.state_dict()[key]), t_wn.state_dict()[key].numpy(), rtol=1e-6)
