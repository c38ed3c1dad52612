"""One call of a layer on an odd input, on dualnorm and on torch, and the properties that must hold.

``check_case`` returns a list of problems (empty when every property holds):

Always (with or without torch):
- an exception is a ``DualnormError`` (never one from inside NumPy/MLX), and its message names
  the layer;
- no warning is emitted (every warning is recorded and counts as a problem);
- after an error, parameters and buffers are exactly as before the call;
- the caller's input (and grad_output) are unchanged.

With torch as the oracle, the same call on ``torch.nn`` (same state, input converted the way
dualnorm documents: to the layer's dtype):
- torch raises -> dualnorm raises;  torch returns -> dualnorm returns the same output, input
  gradient, parameter gradients and buffers, within the parity tolerances. Where the float32
  result differs, the float64 torch result is accepted too (dualnorm may be *more* accurate,
  e.g. a finite LayerNorm at 1e30 where torch's float32 overflows).
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dualnorm
from dualnorm.errors import DualnormError
from tests.harness.inputs import OddInput
from tests.harness.layers import LayerConfig

try:  # the oracle is optional: without torch only the torch-free properties run
    if os.environ.get("DUALNORM_HARNESS_NO_TORCH"):
        raise ImportError
    import torch

    torch.set_num_threads(1)
except ImportError:
    torch = None

TOL = {"float32": 2e-5, "float64": 1e-10}

# Where torch raises from a bug of its own (not a check of the input), dualnorm returning the
# natural result is right: (configuration, kind, mode) -> why.
# torch 2.13's affine instance norm indexes its (empty) batch; dualnorm returns the empty output,
# as torch does for every other layer on an empty batch.
TORCH_BUGS = {
    ("InstanceNorm1d-tracked", "empty_batch", "eval"): "torch: IndexError from select() on an empty batch",
    ("InstanceNorm1d-tracked", "empty_batch", "train"): "torch: IndexError from select() on an empty batch",
    ("InstanceNorm3d", "empty_batch", "train"): "torch: IndexError from select() on an empty batch",
}

# Where dualnorm differs from torch on purpose (documented in the README): not compared.
DOCUMENTED_DIFFERENCES = {
    ("GroupNorm", "empty_spatial"): "an empty input gives zero parameter gradients; torch 2.13 gives NaN "
    "(0/0) for GroupNorm over an empty spatial dim, and torch 2.14 raises",
}


@dataclass
class Outcome:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # y, grad_x, grad.<p>, state.<b>
    error: BaseException | None = None
    stage: str = ""  # where the error came: "forward" or "backward"
    warned: list[str] = field(default_factory=list)  # the library's own warnings about the call

    @property
    def raised(self) -> bool:
        return self.error is not None


def _host(value: Any) -> np.ndarray:
    return np.array(dualnorm.to_numpy(value), copy=True)


def snapshot(layer: Any) -> dict[str, np.ndarray]:
    return {k: _host(v) for k, v in layer.state_dict().items()}


def grad_like(shape: tuple[int, ...]) -> np.ndarray:
    """The upstream gradient both sides get for an output of ``shape``."""
    return np.random.default_rng(7).normal(size=shape).astype(np.float32)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{os.path.relpath(last.filename)}:{last.lineno}"


def _warm(layer: Any, config: LayerConfig, dtype: str) -> None:
    """One ordinary training batch, so eval mode sees running statistics that are not the defaults."""
    template = config.templates[0]
    shape = tuple(4 if s == "N" else config.size if s in ("C", "F") else 2 for s in template)
    layer.train()
    layer(np.random.default_rng(11).normal(1.0, 2.0, shape).astype(dtype))
    layer.zero_grad()


def build(config: LayerConfig, backend: str, dtype: str, training: bool) -> Any:
    with dualnorm.use_backend(backend):
        dualnorm.manual_seed(0)
        layer = config.make(None if dtype == "float32" else dtype)
        if not training:
            _warm(layer, config, dtype)
        layer.train(training)
    return layer


def has_buffers(layer: Any) -> bool:
    return any(True for _ in layer.named_buffers())


def run_dualnorm(layer: Any, backend: str, odd: OddInput, problems: list[str], label: str) -> Outcome:
    out = Outcome()
    names = {type(m).__name__ for _, m in layer.named_modules()}
    pristine = odd.pristine()
    before = snapshot(layer)
    with dualnorm.use_backend(backend), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out.stage = "forward"
            y = _host(layer(odd.value))
            out.arrays["y"] = y
            G = grad_like(y.shape)
            G_copy = G.copy()
            mid = snapshot(layer)
            out.stage = "backward"
            layer.zero_grad()
            out.arrays["grad_x"] = _host(layer.backward(G))
            for name, p in layer.named_parameters():
                if p.grad is not None:
                    out.arrays[f"grad.{name}"] = _host(p.grad)
            if not _same(G, G_copy):
                problems.append(f"{label}: backward changed the caller's grad_output")
            out.stage = ""
        except Exception as exc:
            out.error = exc
    for w in caught:
        text = f"{label}: warning {w.category.__name__} from {os.path.relpath(w.filename)}: {w.message}"
        if w.category is UserWarning and "dualnorm" in w.filename:
            out.warned.append(text)  # deliberate, as torch's: judged against torch in check_case
        else:
            problems.append(text)
    if out.raised:
        exc = out.error
        if not isinstance(exc, DualnormError):
            problems.append(
                f"{label}: foreign {type(exc).__name__} in {out.stage} from {_where(exc)}: {str(exc)[:160]}"
            )
        elif not any(n in str(exc) for n in names):
            problems.append(f"{label}: {type(exc).__name__} does not name the layer ({names}): {exc}")
        reference = before if out.stage == "forward" else mid
        after = snapshot(layer)
        changed = [k for k in reference if not _same(reference[k], after.get(k))]
        if changed or reference.keys() != after.keys():
            problems.append(f"{label}: state changed by a failed {out.stage}: {changed}")
    if not _same(odd.value, pristine):
        problems.append(f"{label}: the caller's input was changed")
    for key, value in snapshot(layer).items():
        out.arrays[f"state.{key}"] = value
    return out


def run_torch(config: LayerConfig, odd: OddInput, start: dict[str, np.ndarray], training: bool, dtype: str):
    tdtype = getattr(torch, dtype)
    module = config.torch().to(tdtype)
    module.load_state_dict({k: torch.tensor(v) for k, v in start.items()}, strict=True)
    module.train(training)
    out = Outcome()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out.stage = "forward"
            if odd.oracle.dtype == np.bool_:
                x = torch.from_numpy(odd.oracle.copy())
            else:
                x = torch.tensor(odd.oracle.astype(dtype), requires_grad=True)
            y = module(x)
            out.arrays["y"] = y.detach().numpy().copy()
            out.stage = "backward"
            (y * torch.tensor(grad_like(tuple(y.shape)), dtype=y.dtype)).sum().backward()
            out.arrays["grad_x"] = x.grad.numpy().copy() if x.grad is not None else np.zeros(x.shape)
            for name, p in module.named_parameters():
                if p.grad is not None:
                    out.arrays[f"grad.{name}"] = p.grad.numpy().copy()
            out.stage = ""
        except Exception as exc:
            out.error = exc
    # torch.nn.utils.weight_norm's deprecation is torch's own business; dropout2d's warning about the
    # input's rank is about the input (dualnorm gives the same one).
    out.warned = [
        str(w.message) for w in caught if "deprecated" not in str(w.message) or "dropout2d" in str(w.message)
    ]
    for key, value in module.state_dict().items():
        out.arrays[f"state.{key}"] = value.detach().numpy().copy()
    return out


def mismatch(actual: np.ndarray, expected: np.ndarray, tol: float) -> str | None:
    """None when equal within ``tol`` of the scale, with NaN and +-inf in the same places."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return f"shape {a.shape} != torch {e.shape}"
    for test, what in ((np.isnan, "NaN"), (np.isposinf, "+inf"), (np.isneginf, "-inf")):
        if not np.array_equal(test(a), test(e)):
            return f"{what} at {int(test(a).sum())} places, torch at {int(test(e).sum())}"
    finite = np.isfinite(e)
    if not finite.any():
        return None
    scale = max(1.0, float(np.max(np.abs(e[finite]))))
    err = float(np.max(np.abs(a[finite] - e[finite])))
    return None if err <= tol * scale else f"max error {err:.3g} > {tol:g} * {scale:.3g}"


def _no_worse_than_torch(ours: np.ndarray, torch32: np.ndarray, exact: np.ndarray) -> bool:
    """Both finite in the same places, and dualnorm's error vs the float64 result at most twice torch's.

    On ill-conditioned batches (mean -50, spread 0.5; zero variance) float32 gradients carry
    rounding errors above the 2e-5 parity tolerance in torch as well; there the property is
    "as accurate as torch", not a fixed tolerance.
    """
    a, t, e = (np.asarray(v, dtype=np.float64) for v in (ours, torch32, exact))
    if a.shape != e.shape or t.shape != e.shape:
        return False
    finite = np.isfinite(a) & np.isfinite(t) & np.isfinite(e)
    if not np.array_equal(np.isfinite(a), np.isfinite(e)) or not finite.any():
        return False
    ours_err = float(np.max(np.abs(a[finite] - e[finite])))
    torch_err = float(np.max(np.abs(t[finite] - e[finite])))
    return ours_err <= 2.0 * torch_err


def compare(
    ours: Outcome, theirs: Outcome, exact: Callable[[], Outcome | None], tol: float, label: str
) -> list[str]:
    problems = []
    if theirs.raised and not ours.raised:
        return [
            f"{label}: no error where torch raises {type(theirs.error).__name__}: {str(theirs.error)[:120]}"
        ]
    if ours.raised and not theirs.raised and theirs.warned and isinstance(ours.error, DualnormError):
        return problems  # torch warns that the input is wrong and goes on; dualnorm refuses it (stricter)
    if ours.raised and not theirs.raised and theirs.stage == "" and ours.stage == "forward":
        return [f"{label}: raised where torch returns: {type(ours.error).__name__}: {str(ours.error)[:160]}"]
    if ours.raised or theirs.raised:
        return problems  # both raised (the error itself was checked by run_dualnorm)
    for key, value in theirs.arrays.items():
        if key not in ours.arrays:
            problems.append(f"{label}: {key} missing (torch has it)")
            continue
        why = mismatch(ours.arrays[key], value, tol)
        if why:
            reference = exact()
            if reference is not None and not reference.raised and key in reference.arrays:
                exact_value = reference.arrays[key]
                if mismatch(ours.arrays[key], exact_value, tol) is None:
                    why = None  # dualnorm is right where torch's float32 is not
                elif _no_worse_than_torch(ours.arrays[key], value, exact_value):
                    why = None  # an ill-conditioned input: torch's own float32 error is as large
        if why:
            problems.append(f"{label}: {key} differs from torch: {why}")
    return problems


def _lazy_exact(config: LayerConfig, odd: OddInput, start: dict[str, np.ndarray], training: bool):
    """The float64 torch result on the same float32 values, computed at most once and only when needed."""
    cache: list[Outcome | None] = []

    def get() -> Outcome | None:
        if not cache:
            if odd.dtype != "float32" or odd.oracle.dtype == np.bool_:
                cache.append(None)
            else:
                wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in start.items()}
                cache.append(run_torch(config, odd, wide, training, "float64"))
        return cache[0]

    return get


def check_case(config: LayerConfig, backend: str, odd: OddInput) -> list[str]:
    problems: list[str] = []
    layer = build(config, backend, odd.dtype, True)
    modes = [True, False] if has_buffers(layer) else [True]
    for training in modes:
        label = "train" if training else "eval"
        if not training:
            layer = build(config, backend, odd.dtype, False)
        start = snapshot(layer)
        ours = run_dualnorm(layer, backend, odd, problems, label)
        if torch is None or config.torch_expr is None:
            continue
        theirs = run_torch(config, odd, start, training, odd.dtype)
        if ours.warned and not theirs.warned:
            problems.extend(w + " (torch does not warn here)" for w in ours.warned)
        exact = _lazy_exact(config, odd, start, training)
        tol = TOL[odd.dtype]
        if backend == "mlx" and odd.dtype == "float64" and config.id in ("Sigmoid", "SELU"):
            tol = 1e-6  # MLX evaluates exp in float32 precision even for float64 arrays (as the parity tests)
        if (config.id, odd.kind, label) in TORCH_BUGS and theirs.raised and not ours.raised:
            continue
        if (config.id, odd.kind) in DOCUMENTED_DIFFERENCES:
            continue
        problems.extend(compare(ours, theirs, exact, tol, label))
    return problems
