"""The odd inputs people pass, as hypothesis strategies over a layer's valid shapes.

``draw_input(draw, kind, config)`` returns an :class:`OddInput`: what the caller passes
(an array, a view, a list ...), the array torch gets as the oracle, and the dtype the layer
is built with. Values are float32-representable so that float32 layers see exactly them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from tests.harness.layers import LayerConfig

# Every kind of odd input, and the shape symbol a kind needs in a template (None: any template).
KINDS: dict[str, str | None] = {
    "normal": None,
    "empty_batch": "N",
    "empty_spatial": "S",
    "batch_of_one": "N",
    "constant": None,
    "wrong_ndim": None,
    "wrong_channels": "CF",
    "zero_d": None,
    "int": None,
    "bool": None,
    "float16": None,
    "float64": None,
    "nan": None,
    "inf": None,
    "huge": None,
    "fortran": None,
    "strided": None,
    "negative_stride": None,
    "transposed": None,
    "broadcast": None,
    "list": None,
}


@dataclass
class OddInput:
    value: Any  # what the caller passes to the layer
    oracle: np.ndarray  # what torch gets (dualnorm's documented conversion of ``value``)
    dtype: str  # the layer's dtype
    finite: bool  # every value of the input is finite
    kind: str = ""

    def pristine(self) -> Any:
        """A deep copy to check afterwards that the caller's input was not changed."""
        if isinstance(self.value, list):
            return _deep_list_copy(self.value)
        return np.array(self.value, copy=True)


def _deep_list_copy(value: Any) -> Any:
    return [_deep_list_copy(v) for v in value] if isinstance(value, list) else value


def applicable(config: LayerConfig, kind: str) -> bool:
    need = KINDS[kind]
    if need is None:
        if kind in ("fortran", "transposed"):
            return any(len(t) >= 2 for t in config.templates)
        return True
    if need == "CF":
        return config.size > 0
    return any(need in t for t in config.templates)


def _sizes(draw: Any, template: tuple[str, ...], config: LayerConfig) -> list[int]:
    # Few distinct shapes on purpose: MLX's CPU build JIT-compiles (gcc) its fused kernels once
    # per shape, a second or more each; the kinds, not the sizes, are what this harness varies.
    sizes = []
    for symbol in template:
        if symbol == "N":
            sizes.append(3)
        elif symbol in ("C", "F"):
            sizes.append(config.size)
        else:
            sizes.append(2)
    return sizes


def _values(draw: Any, shape: tuple[int, ...]) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    loc = draw(st.sampled_from([0.0, 3.0, -50.0]))
    spread = draw(st.sampled_from([0.5, 1.0, 10.0]))
    rng = np.random.default_rng(seed)
    return rng.normal(loc, spread, shape).astype(np.float32)


def _axis(draw: Any, ndim: int) -> int:
    return draw(st.integers(0, ndim - 1))


def draw_input(draw: Any, kind: str, config: LayerConfig) -> OddInput:
    need = KINDS[kind]
    templates = [t for t in config.templates if need is None or need == "CF" or need in t]
    if kind in ("fortran", "transposed"):
        templates = [t for t in templates if len(t) >= 2]
    template = draw(st.sampled_from(templates))
    sizes = _sizes(draw, template, config)
    dtype = "float32"

    if kind == "empty_batch":
        sizes[template.index("N")] = 0
    elif kind == "empty_spatial":
        spatial = [i for i, s in enumerate(template) if s == "S"]
        sizes[draw(st.sampled_from(spatial))] = 0
    elif kind == "batch_of_one":
        sizes[template.index("N")] = 1
    elif kind == "wrong_channels":
        axis = next(i for i, s in enumerate(template) if s in ("C", "F"))
        sizes[axis] = draw(st.sampled_from([config.size + 1, max(1, config.size - 1)]))
    elif kind == "wrong_ndim":
        valid = {len(t) for t in config.templates}
        wanted = draw(st.sampled_from([n for n in range(1, 6) if n not in valid] or [1, 5]))
        sizes = (sizes + [2] * 5)[:wanted]
    shape = tuple(sizes)
    x = _values(draw, shape)

    if kind == "zero_d":
        x = np.array(x.reshape(-1)[0] if x.size else 1.5, dtype=np.float32)
    elif kind == "constant":
        if draw(st.booleans()) or x.ndim < 2:
            x = np.full(shape, draw(st.sampled_from([0.0, 1.5, -3.0, 1e4])), dtype=np.float32)
        else:  # constant rows: each sample holds one value everywhere
            per_row = x.reshape(shape[0], -1)[:, :1] if x.size else np.zeros((shape[0], 1), np.float32)
            x = np.broadcast_to(per_row.reshape((shape[0],) + (1,) * (x.ndim - 1)), shape).copy()
    elif kind in ("nan", "inf") and x.size:
        flat = x.reshape(-1)
        # NaN: 1-3 entries. inf: exactly one, so no channel holds both signs (inf - inf is NaN for
        # everyone) and the case is decided by the layer, not by where the draws landed.
        count = draw(st.integers(1, min(3, flat.size))) if kind == "nan" else 1
        where = draw(st.lists(st.integers(0, flat.size - 1), min_size=count, max_size=count))
        for i in where:
            flat[i] = np.nan if kind == "nan" else draw(st.sampled_from([np.inf, -np.inf]))
    elif kind == "huge":
        x = x * np.float32(1e30) / max(1.0, float(np.max(np.abs(x), initial=1.0)))

    value: Any = x
    oracle = x
    if kind == "int":
        int_dtype = draw(st.sampled_from(["int32", "int64", "uint8"]))
        low = 0 if int_dtype == "uint8" else -3
        value = np.random.default_rng(x.size).integers(low, 4, shape).astype(int_dtype)
        oracle = value.astype(np.float32)
    elif kind == "bool":
        value = np.random.default_rng(x.size).random(shape) < 0.5
        oracle = value  # torch refuses bool tensors; dualnorm must too
    elif kind == "float16":
        value = x.astype(np.float16)
        oracle = value.astype(np.float32)  # dualnorm computes float16 input in float32 (documented)
    elif kind == "float64":
        value = x.astype(np.float64) + np.random.default_rng(x.size).normal(0, 1e-9, shape)
        oracle = value
        dtype = "float64"
    elif kind == "fortran":
        value = np.asfortranarray(x)
    elif kind == "strided":
        axis = _axis(draw, x.ndim) if x.ndim else 0
        if x.ndim:
            big = np.repeat(x, 2, axis=axis)
            value = big[(slice(None),) * axis + (slice(None, None, 2),)]
    elif kind == "negative_stride" and x.ndim:
        axis = _axis(draw, x.ndim)
        base = np.flip(x, axis=axis).copy()
        value = np.flip(base, axis=axis)  # a view with a negative stride, equal to x
    elif kind == "transposed":
        value = np.ascontiguousarray(x.T).T
    elif kind == "broadcast" and x.ndim:
        axis = _axis(draw, x.ndim)
        value = np.broadcast_to(np.take(x, [0], axis=axis) if shape[axis] else x, shape)
        oracle = np.array(value)
    elif kind == "list":
        value = x.tolist()
        oracle = np.asarray(value, dtype=np.float32)
    finite = bool(np.all(np.isfinite(np.asarray(oracle, dtype=np.float64)))) if kind != "bool" else True
    return OddInput(value, np.asarray(oracle), dtype, finite, kind)
