"""Step records: the one stream every consumer reads.

An experiment yields :class:`StepRecord` objects while it trains. The CLI prints
them, the terminal UI plots them, tests assert on them and benchmarks time them.
Records hold plain Python floats and lists only (never backend arrays), so they can
cross threads, be written as JSON Lines, and be read back without NumPy or MLX.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dualnorm.errors import InputError


@dataclass
class LayerStats:
    """Statistics of one layer at one recorded step.

    ``act_*`` describe the layer's *output* activations on the recorded batch.
    Fields that do not apply to a layer kind are ``None`` (e.g. ``dead_frac`` is
    only measured after a ReLU, ``gamma_mean`` only for normalization layers).
    """

    name: str  # position in the model, PyTorch-style: "0", "1", "hidden.2" ...
    kind: str  # class name: "Linear", "BatchNorm1d", "ReLU", ...
    act_mean: float
    act_std: float
    act_min: float
    act_max: float
    hist_counts: list[int] = field(default_factory=list)
    hist_edges: list[float] = field(default_factory=list)
    saturated_frac: float | None = None  # sigmoid/tanh outputs in the flat ends
    dead_frac: float | None = None  # ReLU units that are zero for the whole batch
    grad_norm: float | None = None  # L2 norm of dLoss/d(output of this layer)
    param_grad_norm: float | None = None  # L2 norm of all parameter gradients
    weight_norm: float | None = None  # L2 norm of the layer's weight
    gamma_mean: float | None = None
    beta_mean: float | None = None
    running_mean_mean: float | None = None
    running_var_mean: float | None = None
    # Convolutional (N, C, *spatial) outputs only: per-channel statistics over the batch and positions.
    dead_channel_frac: float | None = None  # channels a ReLU zeroed at every sample and position
    channel_mean: list[float] | None = None
    channel_std: list[float] | None = None


@dataclass
class StepRecord:
    """One recorded training step of one variant of an experiment."""

    experiment: str
    variant: str
    step: int  # optimizer steps taken so far in this variant (1-based)
    epoch: int
    loss: float
    backend: str
    accuracy: float | None = None
    layers: list[LayerStats] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time since this variant started
    status: str = "running"  # "running" | "done" | "diverged"
    message: str = ""  # human-readable note, e.g. why a variant diverged
    extra: dict[str, Any] = field(default_factory=dict)
    device: str = ""  # "cpu" | "gpu" ("" in records written before devices were recorded)

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def to_dict(self) -> dict[str, Any]:
        # json_safe builds new containers at every level, so no deep copy first (dataclasses.asdict
        # made this 4x slower, and it is paid per tracked step)
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        data["layers"] = [vars(layer) for layer in self.layers]
        return json_safe(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        """A record from ``to_dict()``'s output (e.g. a parsed JSON line).

        Every field is checked: a missing or unknown key, or a value of the wrong JSON type
        (a string loss, a float step, a list where a number belongs ...), raises
        :class:`~dualnorm.errors.InputError` naming the field, so a damaged file cannot
        put a record in a consumer's hands that breaks it later.
        """
        if not isinstance(data, Mapping):
            raise InputError(f"a step record must be a JSON object, got {_kind(data)}", type_error=True)
        try:
            data = from_json_safe(dict(data))
        except RecursionError:
            raise InputError("step record is nested too deeply to be a step record") from None
        layers = data.pop("layers", [])
        if not isinstance(layers, list):
            raise InputError(
                f"step record field 'layers' must be a list, got {_kind(layers)}", type_error=True
            )
        stats = []
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict):
                raise InputError(
                    f"step record layers[{i}] must be a JSON object, got {_kind(layer)}", type_error=True
                )
            stats.append(LayerStats(**_checked(f"layers[{i}]", layer, _LAYER_SPEC)))
        return cls(layers=stats, **_checked("", data, _RECORD_SPEC))


def json_safe(value: Any) -> Any:
    """NaN/Inf are not JSON: write them as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if all(type(v) is int or (type(v) is float and v - v == 0.0) for v in value):
            return list(value)  # histograms: flat lists of finite numbers, copied without recursion
        return [json_safe(v) for v in value]
    return value


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(StepRecord))

#: the per-channel lists of a convolutional layer (one number per channel, or None)
CHANNEL_STATS = ("channel_mean", "channel_std")

#: the per-layer statistics, in LayerStats order: the four activation summaries, then the optional ones
LAYER_STATS = tuple(
    f.name
    for f in dataclasses.fields(LayerStats)
    if f.name not in ("name", "kind", "hist_counts", "hist_edges", *CHANNEL_STATS)
)

# Fields that hold text: a variant or layer called "inf" stays a string.
_TEXT_FIELDS = frozenset({"experiment", "variant", "backend", "device", "status", "message", "name", "kind"})


def from_json_safe(value: Any, key: str | None = None) -> Any:
    """Undo :func:`json_safe` at every depth (layer statistics and ``extra`` included)."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf") and key not in _TEXT_FIELDS:
        return float(value)
    if isinstance(value, dict):
        return {k: from_json_safe(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_safe(v) for v in value]
    return value


# --- validation of records read back (from_dict) --------------------------------------------------
# Field -> (kind, required). Kinds: "str", "int", "num", "num?" (number or null), "dict",
# "ints" / "nums" (lists of them). Numbers arrive as int or float (NaN/inf already decoded).
_RECORD_SPEC: dict[str, tuple[str, bool]] = {
    "experiment": ("str", True),
    "variant": ("str", True),
    "step": ("int", True),
    "epoch": ("int", True),
    "loss": ("num", True),
    "backend": ("str", True),
    "accuracy": ("num?", False),
    "elapsed_s": ("num", False),
    "status": ("str", False),
    "message": ("str", False),
    "extra": ("dict", False),
    "device": ("str", False),
}
_LAYER_SPEC: dict[str, tuple[str, bool]] = {
    "name": ("str", True),
    "kind": ("str", True),
    "act_mean": ("num", True),
    "act_std": ("num", True),
    "act_min": ("num", True),
    "act_max": ("num", True),
    "hist_counts": ("ints", False),
    "hist_edges": ("nums", False),
    **{name: ("num?", False) for name in LAYER_STATS[4:]},
    **{name: ("nums?", False) for name in CHANNEL_STATS},
}
# A field added to a dataclass must be added to its spec too, or records would lose it on reading.
if set(_RECORD_SPEC) != set(_RECORD_FIELDS) - {"layers"} or set(_LAYER_SPEC) != {
    f.name for f in dataclasses.fields(LayerStats)
}:
    raise RuntimeError("records.py: the StepRecord/LayerStats fields and their read specs differ")

_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "num": "a number",
    "num?": "a number or null",
    "dict": "a JSON object",
    "ints": "a list of integers",
    "nums": "a list of numbers",
    "nums?": "a list of numbers or null",
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {
        bool: "a boolean",
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _fits(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return _is_int(value)
    if kind == "num":
        return _is_num(value)
    if kind == "num?":
        return value is None or _is_num(value)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "ints":
        return isinstance(value, list) and all(_is_int(v) for v in value)
    if kind == "nums?" and value is None:
        return True
    return isinstance(value, list) and all(_is_num(v) for v in value)


def _checked(where: str, data: dict[str, Any], spec: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    """``data`` with numbers as floats, or an InputError naming the first bad field."""
    prefix = f"step record {where}".rstrip()
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise InputError(f"{prefix} has unknown keys {unknown[:8]}; expected a subset of {sorted(spec)}")
    missing = [name for name, (_, required) in spec.items() if required and name not in data]
    if missing:
        raise InputError(f"{prefix} is missing {missing}")
    out = {}
    for name, value in data.items():
        kind = spec[name][0]
        if not _fits(kind, value):
            raise InputError(
                f"{prefix} field {name!r} must be {_EXPECTED[kind]}, got {_kind(value)}", type_error=True
            )
        try:
            if kind in ("num", "num?") and value is not None:
                value = float(value)
            elif kind in ("nums", "nums?") and value is not None:
                value = [float(v) for v in value]
        except OverflowError:
            raise InputError(f"{prefix} field {name!r} holds an integer too large for a float") from None
        out[name] = value
    return out
