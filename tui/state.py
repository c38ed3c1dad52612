"""The terminal UI's model: plain, testable Python with no Textual in it.

* :class:`RecordBuffer` — the thread-safe hand-over point between the training
  thread (which appends) and the UI timer (which drains).
* :class:`RunState` — everything the UI shows, folded from the stream of
  :class:`~dualnorm.records.StepRecord` objects; ``apply`` reports what changed so
  the widgets redraw only that.
* helpers: TensorBoard-style debiased EMA smoothing, min/max downsampling to a
  plot's pixel width, text sparklines and text histograms.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SPARK_CHARS = "▁▂▃▄▅▆▇█"
DEFAULT_SMOOTHING = 0.9


# --------------------------------------------------------------------------- buffer


class RecordBuffer:
    """A deque guarded by a lock. The producer appends, the consumer drains in bulk."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()

    def append(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)

    def drain(self, limit: int | None = None) -> list[Any]:
        """Remove and return up to ``limit`` items (all when ``None``), oldest first."""
        with self._lock:
            if limit is None or limit >= len(self._items):
                out = list(self._items)
                self._items.clear()
            else:
                out = [self._items.popleft() for _ in range(limit)]
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# --------------------------------------------------------------------------- numeric helpers


def ema_debiased(values: Sequence[float], weight: float = DEFAULT_SMOOTHING) -> list[float]:
    """TensorBoard's smoothing: an EMA started at 0 and divided by ``1 - weight**n``.

    Non-finite values are passed through unchanged and do not enter the average
    (so one NaN does not poison the rest of the curve).
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out: list[float] = []
    last = 0.0
    n = 0
    for v in values:
        v = float(v)
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1.0 - weight) * v
        n += 1
        out.append(last / (1.0 - weight**n))
    return out


def downsample_minmax(
    xs: Sequence[float], ys: Sequence[float], buckets: int, *, keep_nonfinite: bool = False
) -> tuple[list[float], list[float]]:
    """Reduce a curve to at most ``2 * buckets`` points, keeping each bucket's min and max.

    The points of a bucket keep their original order, so spikes survive and the
    line still runs left to right. Non-finite ``y`` values are dropped (a plot
    cannot draw them). Curves already short enough come back unchanged (minus
    non-finite points).
    """
    pts = [
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=False)
        if keep_nonfinite or math.isfinite(float(y))
    ]
    if buckets <= 0 or len(pts) <= 2 * buckets:
        return [p[0] for p in pts], [p[1] for p in pts]
    n = len(pts)
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        lo = b * n // buckets
        hi = (b + 1) * n // buckets
        if hi <= lo:
            continue
        chunk = pts[lo:hi]
        i_min = min(range(len(chunk)), key=lambda i: chunk[i][1])
        i_max = max(range(len(chunk)), key=lambda i: chunk[i][1])
        for i in sorted({i_min, i_max}):
            out_x.append(chunk[i][0])
            out_y.append(chunk[i][1])
    return out_x, out_y


def sparkline(values: Iterable[float | None], width: int = 12) -> str:
    """The last ``width`` values as ▁▂▃▄▅▆▇█ (space for missing/non-finite values)."""
    vals = list(values)[-width:]
    finite = [v for v in vals if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo
    chars = []
    for v in vals:
        if v is None or not math.isfinite(v):
            chars.append(" ")
        elif span <= 0:
            chars.append(SPARK_CHARS[len(SPARK_CHARS) // 2])
        else:
            idx = int((v - lo) / span * (len(SPARK_CHARS) - 1) + 0.5)
            chars.append(SPARK_CHARS[idx])
    return "".join(chars)


def resample_counts(counts: Sequence[float], width: int) -> list[float]:
    """Sum/spread histogram ``counts`` into ``width`` equal bins."""
    n = len(counts)
    if n == 0 or width <= 0:
        return []
    if n == width:
        return [float(c) for c in counts]
    out = [0.0] * width
    for i, c in enumerate(counts):
        # bin i covers [i/n, (i+1)/n); spread proportionally over output bins
        start = i * width / n
        end = (i + 1) * width / n
        j = int(start)
        while j < width and j < end:
            overlap = min(end, j + 1) - max(start, j)
            if overlap > 0:
                out[j] += float(c) * overlap / (end - start)
            j += 1
    return out


def text_histogram(counts: Sequence[float], width: int, height: int) -> list[str]:
    """Vertical bars drawn with block characters, ``height`` lines of ``width`` chars."""
    if width <= 0 or height <= 0:
        return []
    bins = resample_counts(counts, width)
    if not bins:
        return [" " * width for _ in range(height)]
    peak = max(bins) or 1.0
    levels = len(SPARK_CHARS)
    lines = []
    for row in range(height - 1, -1, -1):  # top line first
        chars = []
        for b in bins:
            filled = b / peak * height * levels  # in eighths of a line
            here = filled - row * levels
            if here >= levels:
                chars.append("█")
            elif here > 0.5 or (row == 0 and b > 0):
                chars.append(SPARK_CHARS[max(0, min(levels - 1, math.ceil(here) - 1))])
            else:
                chars.append(" ")
        lines.append("".join(chars))
    return lines


NUMBER_WIDTH = 9  # the widest number fmt() writes: "-7.31e-05", "-0.001234", "1.235e+04"


def fmt(value: float | None, digits: int = 4, width: int = NUMBER_WIDTH) -> str:
    """Compact number for a table cell, at most ``width`` characters; ``-`` for missing values.

    Precision is dropped to fit, never characters: a cell too narrow for a number would cut it
    (``-7.31e-05`` read as ``-7.31e-0``), so every column is at least ``width`` wide.
    """
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    v = float(value)
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        candidates = [f"{v:.{d}g}" for d in range(digits, 0, -1)]
    else:
        candidates = [f"{v:.{d}e}" for d in range(2, -1, -1)]
    for text in candidates:
        if len(text) <= width:
            return text
        short = _short_exponent(text)
        if len(short) <= width:
            return short
    return _short_exponent(candidates[-1])  # "-1e+308": 7 characters, the widest there is


def _short_exponent(text: str) -> str:
    """``1.2e+05`` -> ``1.2e5``, ``1.2e-05`` -> ``1.2e-5``: two characters back for a narrow cell."""
    mantissa, e, exponent = text.partition("e")
    if not e:
        return text
    sign = "-" if exponent.startswith("-") else ""
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def ellipsize(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters at the end, with an ellipsis when anything was cut."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}%"


# --------------------------------------------------------------------------- run state


@dataclass
class VariantState:
    name: str
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    acc_steps: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    last_step: int = 0
    last_loss: float = float("nan")
    status: str = "pending"
    message: str = ""
    diverged_at: int | None = None
    layers: list[Any] = field(default_factory=list)  # LayerStats of the latest record with layers
    layers_step: int = 0
    grad_history: dict[str, deque[float | None]] = field(default_factory=dict)
    probe: dict[str, Any] | None = None
    probe_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    seen: int = -1  # sequence number of the latest record of this variant

    RECENT_POINTS = 4_096  # the latest points of a curve, at full resolution
    MAX_POINTS = 8_192  # beyond this, the older part is halved (min/max per pair of buckets)

    def compact(self) -> None:
        """Keep the curves bounded: past MAX_POINTS, downsample all but the latest RECENT_POINTS."""
        for xs_name, ys_name in (("steps", "losses"), ("acc_steps", "accuracies")):
            xs, ys = getattr(self, xs_name), getattr(self, ys_name)
            if len(xs) <= self.MAX_POINTS:
                continue
            cut = len(xs) - self.RECENT_POINTS
            # the first point stays, so the plot's x range still starts where the run did
            old_x, old_y = downsample_minmax(xs[1:cut], ys[1:cut], max(1, cut // 4), keep_nonfinite=True)
            setattr(self, xs_name, [xs[0], *old_x, *xs[cut:]])
            setattr(self, ys_name, [ys[0], *old_y, *ys[cut:]])


@dataclass
class Changes:
    """What one ``RunState.apply`` call changed (the widgets redraw only these)."""

    curves: set[str] = field(default_factory=set)
    layers: set[str] = field(default_factory=set)
    hists: set[str] = field(default_factory=set)
    probe: set[str] = field(default_factory=set)
    sweep: set[int] = field(default_factory=set)
    status: bool = False

    def __bool__(self) -> bool:
        return bool(self.curves or self.layers or self.hists or self.probe or self.sweep or self.status)

    def merge(self, other: Changes) -> None:
        self.curves |= other.curves
        self.layers |= other.layers
        self.hists |= other.hists
        self.probe |= other.probe
        self.sweep |= other.sweep
        self.status = self.status or other.status


class RunState:
    """Everything the run screen shows, built up from step records.

    Memory stays bounded however long the run: ``records`` keeps the latest
    ``RECENT_RECORDS``, and each variant's curves keep the latest ``RECENT_POINTS`` points at
    full resolution plus a min/max-downsampled history (see :meth:`VariantState.compact`).
    """

    GRAD_HISTORY = 24
    RECENT_RECORDS = 5_000

    def __init__(self, variants: Sequence[str] = ()) -> None:
        self.variants: dict[str, VariantState] = {v: VariantState(v) for v in variants}
        self.records: deque[Any] = deque(maxlen=self.RECENT_RECORDS)  # the latest, for export
        self.records_seen = 0  # all records ever applied (records holds only the latest)
        self.focus: str | None = None  # the variant the layer table and histograms show; None: latest
        self.styles: dict[str, str] = {}  # variant -> line colour (set by a multi-run view)
        self.total_steps = 0
        self.backend = ""
        self.current_variant: str | None = None
        self.error: str | None = None
        self.finished = False
        self.sweep: dict[int, dict[str, Any]] = {}  # scale_index -> {"scale": s, "batchnorm": v, "none": v}
        self.sweep_cells: int | None = None  # how many cells the experiment's grid has, when it says
        self._rate_window: deque[tuple[float, int]] = deque()

    # -- folding records -------------------------------------------------------------------------

    def variant(self, name: str) -> VariantState:
        if name not in self.variants:
            self.variants[name] = VariantState(name)
        return self.variants[name]

    def apply(self, records: Iterable[Any], now: float | None = None) -> Changes:
        changes = Changes()
        n_before = self.total_steps
        for rec in records:
            self.records.append(rec)
            self.records_seen += 1
            v = self.variant(rec.variant)
            self.current_variant = rec.variant
            v.seen = self.records_seen
            if rec.backend:
                self.backend = rec.backend
            if rec.step > v.last_step:
                self.total_steps += rec.step - v.last_step
                v.last_step = rec.step
            loss = float(rec.loss)
            v.steps.append(rec.step)
            v.losses.append(loss)
            v.last_loss = loss
            changes.curves.add(v.name)
            if v.status != rec.status or rec.message != v.message:
                v.status = rec.status
                v.message = rec.message
                changes.status = True
            no_loss = bool(rec.extra and rec.extra.get("no_loss"))  # a tracked scalar-only step
            if (rec.status == "diverged" or not (math.isfinite(loss) or no_loss)) and v.diverged_at is None:
                v.diverged_at = rec.step
                if not v.message:
                    v.message = rec.message or f"loss became {loss} at step {rec.step}"
                changes.status = True
            if rec.accuracy is not None:
                v.acc_steps.append(float(rec.epoch if rec.epoch else rec.step))
                v.accuracies.append(float(rec.accuracy))
            v.compact()
            if rec.layers:
                v.layers = list(rec.layers)
                v.layers_step = rec.step
                changes.layers.add(v.name)
                for layer in rec.layers:
                    hist = v.grad_history.setdefault(layer.name, deque(maxlen=self.GRAD_HISTORY))
                    hist.append(layer.grad_norm)
                    if layer.hist_counts:
                        changes.hists.add(v.name)
            extra = rec.extra or {}
            if extra:
                v.extra = extra
            probe = extra.get("probe")
            if probe:
                v.probe = probe
                v.probe_step = rec.step
                changes.probe.add(v.name)
            if "scale_index" in extra:
                idx = int(extra["scale_index"])
                cell = self.sweep.setdefault(idx, {"scale": extra.get("scale")})
                if "grid_label" in extra:  # the experiment names its cells ("batch 2")
                    cell["label"] = str(extra["grid_label"])
                if "grid_cells" in extra:  # and says how many there are (init-sweep: 16 by default)
                    self.sweep_cells = int(extra["grid_cells"])
                norm = str(extra.get("normalization", rec.variant))
                cell[norm] = v.name
                changes.sweep.add(idx)
        if self.total_steps != n_before:
            changes.status = True
        t = time.perf_counter() if now is None else now
        self._rate_window.append((t, self.total_steps))
        while len(self._rate_window) > 2 and t - self._rate_window[0][0] > 3.0:
            self._rate_window.popleft()
        return changes

    def reset_rate(self) -> None:
        self._rate_window.clear()

    @property
    def steps_per_second(self) -> float | None:
        if len(self._rate_window) < 2:
            return None
        (t0, s0), (t1, s1) = self._rate_window[0], self._rate_window[-1]
        if t1 - t0 <= 0:
            return None
        return (s1 - s0) / (t1 - t0)

    # -- views ---------------------------------------------------------------------------------

    def diverged(self) -> list[VariantState]:
        return [v for v in self.variants.values() if v.diverged_at is not None]

    def curve(
        self,
        name: str,
        *,
        width: int,
        smoothing: float | None = None,
        log_y: bool = False,
        log_floor: float = 1e-12,
    ) -> tuple[list[float], list[float]]:
        """The loss curve of a variant as the plot should draw it (smoothed, log10, downsampled)."""
        v = self.variants.get(name)
        if v is None or not v.steps:
            return [], []
        ys: list[float] = ema_debiased(v.losses, smoothing) if smoothing else list(v.losses)
        if log_y:
            ys = [math.log10(max(y, log_floor)) if math.isfinite(y) else y for y in ys]
        return downsample_minmax(v.steps, ys, max(1, width))

    def layer_rows(self, max_variants: int = 2) -> list[tuple[str, Any, str]]:
        """(variant, LayerStats, grad sparkline) for the focused variant, else the most recent ``max_variants``."""
        with_layers = [v for v in self.variants.values() if v.layers]
        recent = self._focused(with_layers) or self._most_recent(with_layers, max_variants)
        rows = []
        for v in recent:
            for layer in v.layers:
                rows.append((v.name, layer, sparkline(v.grad_history.get(layer.name, ()), 10)))
        return rows

    def hist_variants(self, max_variants: int = 2) -> list[VariantState]:
        with_hist = [v for v in self.variants.values() if any(layer.hist_counts for layer in v.layers)]
        return self._focused(with_hist) or self._most_recent(with_hist, max_variants)

    def _focused(self, states: list[VariantState]) -> list[VariantState]:
        return [v for v in states if v.name == self.focus] if self.focus is not None else []

    def cycle_focus(self, step: int = 1) -> str | None:
        """Move the focus through the variants (and "latest", None) in display order; returns it."""
        choices: list[str | None] = [None, *self.variants]
        i = choices.index(self.focus) if self.focus in choices else 0
        self.focus = choices[(i + step) % len(choices)]
        return self.focus

    def plotted(self, limit: int, *, keep_first: bool = True) -> tuple[list[str], int]:
        """The variants the loss plot draws (at most ``limit``: the focus first, then the most recent)
        and how many curves there are in all."""
        names = [v.name for v in self.variants.values() if v.steps]
        if len(names) <= limit:
            return names, len(names)
        recent = sorted((self.variants[n] for n in names), key=lambda v: v.seen, reverse=True)
        chosen = [self.focus] if self.focus in names else []
        # the baseline (the first variant: "plain", "none") stays, as everything is read against it
        if keep_first and names[0] not in chosen and len(chosen) < limit:
            chosen.append(names[0])
        chosen += [v.name for v in recent if v.name not in chosen][: limit - len(chosen)]
        order = {name: i for i, name in enumerate(self.variants)}
        return sorted(chosen, key=order.__getitem__), len(names)

    def _most_recent(self, states: list[VariantState], k: int) -> list[VariantState]:
        if len(states) <= k:
            return states
        order = {name: i for i, name in enumerate(self.variants)}
        chosen = sorted(states, key=lambda v: v.seen)[-k:]
        return sorted(chosen, key=lambda v: order[v.name])
