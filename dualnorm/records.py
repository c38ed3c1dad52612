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
from dataclasses import dataclass, field
from typing import Any


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
        data = from_json_safe(dict(data))
        layers = [LayerStats(**layer) for layer in data.pop("layers", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"step record has unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(layers=layers, **data)


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
