"""Widgets of the run screen. They take data from :class:`tui.state.RunState` (attributes down)
and never touch the training thread."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.containers import Grid
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Static
from textual_plot import HiResMode, NumericAxisFormatter, PlotWidget

from tui.state import NUMBER_WIDTH, RunState, VariantState, ellipsize, fmt, pct, text_histogram

COLORS = ("red", "green", "dodger_blue1", "yellow", "magenta", "cyan", "orange1", "white")
MAX_CURVES = 8


def variant_color(name: str, index: int) -> str:
    if name == "plain" or name.endswith("plain") or name.endswith("none"):
        return "red"
    if "batchnorm" in name:
        return "green"
    return COLORS[(index + 2) % len(COLORS)]


class KeyFooter(Footer):
    """Textual's Footer, rebuilt at most once per refresh. A screen signals that its bindings changed
    about nine times as it mounts, and the stock footer rebuilds and restyles its ~16 keys for each
    signal: a third of the CPU of opening a screen (1.2 -> 0.73 s per app launch in the UI tests).
    The one rebuild reads the bindings as they are then, so no change is missed."""

    _rebuild_pending = False

    def bindings_changed(self, screen: Screen) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen and not self._rebuild_pending:
            self._rebuild_pending = True
            self.call_after_refresh(self._rebuild)

    async def _rebuild(self) -> None:
        self._rebuild_pending = False
        await self.recompose()


class LogAxisFormatter(NumericAxisFormatter):
    """Ticks for data already in log10: whole decades, labelled 1e-3, 1e0, 1e5 ..."""

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        lo, hi = math.ceil(min_), math.floor(max_)
        if hi - lo < 1:
            return super().get_ticks(min_, max_, max_ticks)
        stride = max(1, math.ceil((hi - lo + 1) / max(1, max_ticks)))
        return [float(k) for k in range(lo, hi + 1, stride)]

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        labels = []
        for t in ticks:
            if float(t).is_integer():
                labels.append(f"1e{int(t)}")
            else:
                labels.append(f"{10**t:.2g}")
        return labels


class StepAxisFormatter(NumericAxisFormatter):
    """x ticks whose centred label fits inside the plot (the last one would be cut at the right edge),
    at most one per 12 columns so the labels never run together."""

    def __init__(self, columns: int) -> None:
        self.columns = max(1, columns)

    def get_ticks_and_labels(self, min_: float, max_: float, max_ticks: int = 8) -> Any:
        ticks = self.get_ticks(min_, max_, max(2, min(max_ticks, self.columns // 12)))
        labels = self.get_labels_for_ticks(ticks)
        span = (max_ - min_) or 1.0
        kept = [
            (t, label)
            for t, label in zip(ticks, labels, strict=True)
            if (max_ - t) / span * self.columns >= len(label) / 2 + 1
        ]
        return [t for t, _ in kept], [label for _, label in kept]


class Plot(PlotWidget, can_focus=False):
    """A PlotWidget that never takes focus (its r/arrow bindings would shadow the app's keys)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_pan_and_zoom=False, **kwargs)


class StatusLine(Widget):
    """Two lines of run status. Renders its own text so an update repaints without a layout pass."""

    DEFAULT_CSS = "StatusLine { height: 2; padding: 0 1; background: $boost; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._text = Text()

    @property
    def text(self) -> Text:
        return self._text

    def set_text(self, text: Text) -> None:
        if text != self._text:
            self._text = text
            self.refresh()

    def render(self) -> Any:
        return self._text


class LossPlot(Plot):
    """Loss curves of the variants overlaid. The legend is the border subtitle (colored line keys):
    textual-plot's own legend is a Static whose every update forces a layout pass of the screen."""

    MIN_CURVE_ROWS = 8  # the layout keeps at least this many rows of curve (see app.tcss)

    def on_mount(self) -> None:
        super().on_mount()
        # one row for the y label, one for the x tick labels ("step" is in the border title):
        # at 80x24 every row goes to the curve
        self.margin_top = 1
        self.margin_bottom = 1
        self.set_xlabel("")
        self.legend_text = Text()

    def plot_width(self) -> int:
        return max(8, self.size.width - self.margin_left - 2)

    @property
    def curve_rows(self) -> int:
        """Rows of the canvas inside the axes: what the curves are drawn in."""
        return max(0, self._scale_rectangle.height)

    def fit_limits(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        """Axis limits a braille dot wider than the data on every side.

        textual-plot maps the data's minimum to the row just below the canvas and its maximum
        to the column just right of it, both off the canvas: a curve that settled at its minimum
        stopped being drawn there (dying-relu's batchnorm curve vanished at step ~5,500).
        """
        finite = [y for y in ys if math.isfinite(y)]
        if not xs or not finite:
            return
        x_lo, x_hi = min(xs), max(xs)
        y_lo, y_hi = min(finite), max(finite)
        rows = max(1, self.curve_rows or self.MIN_CURVE_ROWS)
        cols = max(1, self.plot_width())
        x_pad = (x_hi - x_lo) / (2 * cols) if x_hi > x_lo else 0.5
        # braille: four dots a row; a flat curve sits in the middle of a band around it
        y_pad = (y_hi - y_lo) / (4 * rows) if y_hi > y_lo else max(abs(y_hi), 1.0) * 0.1
        self.set_x_formatter(StepAxisFormatter(cols))
        self.set_xlimits(x_lo - x_pad, x_hi + x_pad)
        self.set_ylimits(y_lo - y_pad, y_hi + y_pad)

    def redraw(self, state: RunState, *, log_y: bool, smoothing: float | None) -> None:
        # init-sweep has 32 curves: draw the focus and the most recent, and say how many are hidden
        names, total = state.plotted(2, keep_first=False) if state.sweep else state.plotted(MAX_CURVES)
        width = self.plot_width() * 2  # braille: two dots per cell
        self.clear()
        self.set_y_formatter(LogAxisFormatter() if log_y else NumericAxisFormatter())
        self.set_ylabel("loss (log10)" if log_y else "loss")
        order = list(state.variants)
        legend = Text()
        all_x: list[float] = []
        all_y: list[float] = []
        for name in names:
            xs, ys = state.curve(name, width=width, smoothing=smoothing, log_y=log_y)
            all_x += xs
            all_y += ys
            if xs:
                color = state.styles.get(name) or variant_color(name, order.index(name))
                self.plot(xs, ys, line_style=color, hires_mode=HiResMode.BRAILLE, label=name)
                legend.append(" ━━ ", style=f"bold {color}").append(name)
        for v in state.diverged():
            if v.name in names:
                self.add_v_line(float(v.diverged_at or 0), "bold red", f"{v.name} diverged @{v.diverged_at}")
                legend.append(" │ ", style="bold red").append(f"{v.name} diverged @{v.diverged_at}")
        if total > len(names):
            legend.append(f"  (+{total - len(names)} more; v/V: focus one)", style="dim")
        diverged_x = [float(v.diverged_at or 0) for v in state.diverged() if v.name in names]
        self.fit_limits(all_x + diverged_x, all_y)
        if legend.plain and legend != self.legend_text:
            self.legend_text = legend
            self.border_subtitle = legend.markup + " "


# (key, label, fixed width): fixed widths keep cell updates from forcing a layout pass. Numbers get
# NUMBER_WIDTH (fmt never writes wider); names are ellipsized to theirs, the full name is in the
# table's subtitle for the row under the cursor.
LAYER_COLUMNS = (
    ("variant", "variant", 16),
    ("layer", "layer", 10),
    ("kind", "kind", 12),
    ("mean", "act μ", NUMBER_WIDTH),
    ("std", "act σ", NUMBER_WIDTH),
    ("sat", "sat %", 6),
    ("dead", "dead %", 6),
    ("grad", "grad ‖·‖", NUMBER_WIDTH),
    ("trend", "grad trend", 10),
    ("wnorm", "‖W‖", NUMBER_WIDTH),
    ("gamma", "γ", NUMBER_WIDTH),
    ("beta", "β", NUMBER_WIDTH),
)
NAME_WIDTHS = {key: width for key, _, width in LAYER_COLUMNS[:3]}


def layer_cells(variant: str, layer: Any, trend: str) -> tuple[str, ...]:
    return (
        ellipsize(variant, NAME_WIDTHS["variant"]),
        ellipsize(layer.name, NAME_WIDTHS["layer"]),
        ellipsize(layer.kind, NAME_WIDTHS["kind"]),
        fmt(layer.act_mean),
        fmt(layer.act_std),
        pct(layer.saturated_frac),
        pct(layer.dead_frac),
        fmt(layer.grad_norm, 3),
        trend,
        fmt(layer.weight_norm),
        fmt(layer.gamma_mean),
        fmt(layer.beta_mean),
    )


class LayerTable(DataTable):
    """Per-layer statistics of the latest recorded step (one row per variant and layer).

    It takes the focus when shown: ↑/↓/PgUp/PgDn move through the rows, ←/→ scroll the columns,
    and the subtitle names the highlighted row in full (variant, layer, kind, step)."""

    def on_mount(self) -> None:
        for key, label, width in LAYER_COLUMNS:
            self.add_column(label, key=key, width=width)
        self.cursor_type = "row"
        self.zebra_stripes = True
        self._row_keys: list[str] = []
        self._rows: list[tuple[str, Any, str]] = []
        self._steps: dict[str, int] = {}

    def row_detail(self) -> str:
        """The full names of the row under the cursor (cells ellipsize them)."""
        if not self._rows or not 0 <= self.cursor_row < len(self._rows):
            return ""
        variant, layer, _ = self._rows[self.cursor_row]
        return (
            f"row {self.cursor_row + 1}/{len(self._rows)}: {variant} · layer {layer.name} · {layer.kind}"
            f" · step {self._steps.get(variant, 0):,}"
        )

    def on_data_table_row_highlighted(self) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        detail = self.row_detail()
        if detail != self.border_subtitle:
            self.border_subtitle = detail

    def redraw(self, state: RunState) -> None:
        rows = state.layer_rows()
        self._rows = rows
        self._steps = {name: v.layers_step for name, v in state.variants.items()}
        keys = [f"{variant}/{layer.name}" for variant, layer, _ in rows]
        if keys != self._row_keys:
            row = self.cursor_row
            self.clear()
            for key, (variant, layer, trend) in zip(keys, rows, strict=False):
                self.add_row(*layer_cells(variant, layer, trend), key=key)
            self._row_keys = keys
            if rows:
                self.move_cursor(row=min(row, len(rows) - 1), animate=False, scroll=False)
        else:
            for key, (variant, layer, trend) in zip(keys, rows, strict=False):
                for (col, _, _), value in zip(
                    LAYER_COLUMNS, layer_cells(variant, layer, trend), strict=False
                ):
                    if self.get_cell(key, col) != value:
                        self.update_cell(key, col, value)
        self.show_detail()


ACTIVATION_KINDS = ("Sigmoid", "ReLU", "Tanh", "GELU", "SELU", "ELU", "LeakyReLU", "SiLU")


def hist_layers(layers: Sequence[Any]) -> list[Any]:
    """Layers with histograms; only the activation layers when there are any (the documents' figure)."""
    with_hist = [layer for layer in layers if layer.hist_counts]
    acts = [layer for layer in with_hist if layer.kind in ACTIVATION_KINDS]
    return acts or with_hist


class HistogramPanel(Static):
    """Per-layer activation histograms: one row per variant (plain vs batchnorm), one column per layer."""

    DEFAULT_CSS = "HistogramPanel { height: 1fr; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._variants: list[VariantState] = []

    def set_data(self, variants: list[VariantState]) -> None:
        self._variants = variants
        self.refresh()

    def render(self) -> Any:
        if not self._variants:
            return Text("waiting for per-layer histograms ...", style="dim")
        width, height = self.content_size.width, self.content_size.height
        shown = {v.name: hist_layers(v.layers) for v in self._variants}
        n_layers = max(len(layers) for layers in shown.values())
        col_w = max(4, (width - 12) // max(1, n_layers) - 1)
        rows = len(self._variants)
        bar_h = max(1, (height - 1) // max(1, rows) - 2)
        table = Table(box=None, pad_edge=False, padding=(0, 1), show_header=False, expand=False)
        table.add_column("variant", no_wrap=True, width=10)
        for _ in range(n_layers):
            table.add_column(no_wrap=True, width=col_w)
        for v in self._variants:
            label = f"{ellipsize(v.name, 10)}\n@{v.layers_step}"
            cells: list[Any] = [Text(label, style=variant_color(v.name, 0))]
            for layer in shown[v.name]:
                lines = text_histogram(layer.hist_counts, col_w, bar_h)
                lo = layer.hist_edges[0] if layer.hist_edges else layer.act_min
                hi = layer.hist_edges[-1] if layer.hist_edges else layer.act_max
                axis = f"{fmt(lo, 2)}".ljust(col_w // 2) + f"{fmt(hi, 2)}".rjust(col_w - col_w // 2)
                caption = f"{layer.name} μ{fmt(layer.act_mean, 2)} σ{fmt(layer.act_std, 2)}"
                cells.append(
                    Group(
                        Text(ellipsize(caption, col_w), style="bold"),
                        Text("\n".join(lines), style=variant_color(v.name, 0)),
                        Text(axis[:col_w], style="dim"),
                    )
                )
            table.add_row(*cells)
        return table


PROBE_STAGES = (("after_linear", "after Linear"), ("after_bn", "after BN"), ("after_relu", "after ReLU"))


class ProbeTable(DataTable):
    """dying-relu: the probe inputs 1..5 after Linear, after BN and after ReLU, per variant."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self._columns_for: int | None = None
        self._row_keys: list[str] = []

    def redraw(self, state: RunState) -> None:
        variants = [v for v in state.variants.values() if v.probe]
        if not variants:
            return
        inputs = variants[0].probe.get("input") or [1, 2, 3, 4, 5]
        if self._columns_for != len(inputs):
            self.clear(columns=True)
            self.add_column("variant", key="variant", width=12)
            self.add_column("step", key="step", width=7)
            self.add_column("stage", key="stage", width=12)
            for i, x in enumerate(inputs):
                self.add_column(f"x={fmt(float(x), 3)}", key=f"x{i}", width=NUMBER_WIDTH)
            self._columns_for = len(inputs)
            self._row_keys = []
        keys = [f"{v.name}/{stage}" for v in variants for stage, _ in PROBE_STAGES]
        if keys != self._row_keys:
            self.clear()
            for v in variants:
                for stage, label in PROBE_STAGES:
                    self.add_row(*self._cells(v, stage, label, len(inputs)), key=f"{v.name}/{stage}")
            self._row_keys = keys
            return
        for v in variants:
            for stage, label in PROBE_STAGES:
                key = f"{v.name}/{stage}"
                cols = ["variant", "step", "stage", *(f"x{i}" for i in range(len(inputs)))]
                for col, value in zip(cols, self._cells(v, stage, label, len(inputs)), strict=False):
                    if self.get_cell(key, col) != value:
                        self.update_cell(key, col, value)

    @staticmethod
    def _cells(v: VariantState, stage: str, label: str, n: int) -> list[str]:
        values = (v.probe or {}).get(stage)
        shown = [fmt(float(x), 4) for x in values] if values is not None else ["—"] * n
        return [ellipsize(v.name, 12), f"{v.probe_step:,}", label, *shown[:n], *([""] * (n - len(shown)))]


class SweepCell(Plot):
    """One weight scale of init-sweep: training accuracy, batchnorm (solid green) vs plain (dotted red).

    Solid against dotted, as the documents draw solid against dashed, so the two read apart
    without colour too."""

    DEFAULT_CSS = """
    SweepCell { border-top: solid $secondary; height: 1fr; width: 1fr; }
    SweepCell #legend { display: none; }
    """

    def on_mount(self) -> None:
        super().on_mount()
        self.margin_top = 0
        self.margin_bottom = 0  # no x ticks: every row to the curves (the title names the scale)
        self.margin_left = 4
        self.set_ylimits(0.0, 1.0)
        self.set_yticks([0.0, 0.5, 1.0])
        self.set_xticks([])
        self.border_title = "waiting"

    # how each normalization of a cell is drawn and named; any other is a solid line in its own colour
    NORM_STYLES: ClassVar[dict[str, tuple[str, str, bool]]] = {
        "none": ("red", "plain", False),
        "batchnorm": ("green", "BN", True),
        "groupnorm": ("dodger_blue1", "GN", True),
    }
    OTHER_COLORS = ("dodger_blue1", "yellow", "magenta", "cyan")

    def redraw(self, state: RunState, index: int) -> None:
        cell = state.sweep.get(index)
        if not cell:
            return
        scale = cell.get("scale")
        self.clear()
        norms = sorted(
            (k for k in cell if k not in ("scale", "label")), key=lambda n: (n != "none", n != "batchnorm", n)
        )
        parts = []
        for i, norm in enumerate(norms):
            color, label, solid = self.NORM_STYLES.get(
                norm, (self.OTHER_COLORS[i % len(self.OTHER_COLORS)], norm, True)
            )
            v = state.variants.get(cell[norm])
            if v is not None and v.accuracies:
                if solid:
                    self.plot(v.acc_steps, v.accuracies, line_style=color, hires_mode=HiResMode.BRAILLE)
                else:  # the baseline dotted, as the documents draw it dashed: apart without colour too
                    self.scatter(v.acc_steps, v.accuracies, marker="·", marker_style=color)
            if v is not None and v.diverged_at is not None:
                acc = "diverged"
            else:
                acc = f"{v.accuracies[-1]:.2f}" if v is not None and v.accuracies else "-"
            parts.append((label, acc))
        # the normalized runs first, the baseline last: "BN 0.93 / plain 0.10"
        parts = parts[1:] + parts[:1] if norms and norms[0] == "none" else parts
        self.border_subtitle = " / ".join(f"{label} {acc}" for label, acc in parts)
        # one border line, on top, holds both (a full border took two of a small cell's rows)
        if "label" in cell:
            scale_text = cell["label"]
        else:
            scale_text = f"{scale:.0e}" if isinstance(scale, (int, float)) else f"#{index}"
        self.border_title = f"{scale_text} {self.border_subtitle}"
        self.set_xticks([])


class SweepGrid(Grid):
    """A grid of accuracy plots, one per swept setting (init-sweep: 16 weight scales, 4x4), filling in
    as the runs progress. Records name their cell with ``extra["scale_index"]`` and their line with
    ``extra["normalization"]``; a sweep of more settings gets more cells, in a squarer grid."""

    DEFAULT_CSS = "SweepGrid { grid-size: 4 4; grid-gutter: 0; height: 1fr; }"
    MIN_CELLS = 16

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cells: list[SweepCell] = []
        self.dirty: set[int] = set()  # cells with new data not drawn yet (e.g. not mounted yet)

    def ensure_cells(self, count: int = 0, minimum: int | None = None) -> None:
        count = max(count, self.MIN_CELLS if minimum is None else minimum)
        if len(self.cells) >= count:
            return
        new = [SweepCell(id=f"sweep-{i}") for i in range(len(self.cells), count)]
        self.cells += new
        columns = math.ceil(math.sqrt(count))
        self.styles.grid_size_columns = columns
        self.styles.grid_size_rows = math.ceil(count / columns)
        self.mount(*new)

    def redraw(self, state: RunState, indices: set[int] | None = None) -> None:
        self.ensure_cells(max(state.sweep, default=-1) + 1, state.sweep_cells)
        self.dirty |= set(indices if indices is not None else state.sweep)
        for i in sorted(self.dirty):
            if not 0 <= i < len(self.cells):
                self.dirty.discard(i)
            elif self.cells[i].is_mounted:
                self.cells[i].redraw(state, i)
                self.dirty.discard(i)
