"""Screens: the experiment list, the live run view, the help panel and the lr/seed dialog."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Markdown, OptionList, Static
from textual.widgets.option_list import Option

from tui.export import default_export_dir, export_run
from tui.follow import RunFollower
from tui.messages import (
    BackToStart,
    OpenExperiment,
    OpenRuns,
    RestartRun,
    RunnerStarted,
    SetBackend,
    next_backend,
)
from tui.runner import make_runner
from tui.state import DEFAULT_SMOOTHING, Changes, RecordBuffer, RunState, ellipsize, fmt
from tui.widgets import HistogramPanel, KeyFooter, LayerTable, LossPlot, ProbeTable, StatusLine, SweepGrid

HELP_TEXT = """\
# What you are looking at

**Batch normalization** (Ioffe & Szegedy, Algorithm 1), per feature over the mini-batch B:

```
mu_B     = 1/m * sum_i x_i
sigma2_B = 1/m * sum_i (x_i - mu_B)^2          (biased variance)
x_hat_i  = (x_i - mu_B) / sqrt(sigma2_B + eps)
y_i      = gamma * x_hat_i + beta              (gamma, beta learned)
```

Training keeps running estimates `new = (1 - momentum) * old + momentum * batch`
(the running variance uses the unbiased estimate); eval mode normalizes with them.

## Loss plot
Loss per step of each variant, overlaid, over the whole run. `l` switches the y axis to log10
(zero losses are clipped at 1e-12), `s` smooths with TensorBoard's debiased EMA (weight 0.9).
A red vertical line marks the step where a variant diverged (NaN/inf loss).

## Panels (they take turns under the plot)
The bar under the plot names them with their keys: `2` layers, `3` histograms, `4` probe,
`5` sweep grid, `6` compare, `7` error; `tab` / `shift+tab` go to the next / previous one.
`1` shows the plot alone. On a terminal under 28 rows the plot is a panel too (`1`).
A table takes the keyboard when shown: ↑/↓, PgUp/PgDn move through its rows, ←/→ scroll its
columns; the table's subtitle names the highlighted row in full.

## Layer table (latest recorded step)
| column | meaning |
|---|---|
| act μ / act σ | mean and standard deviation of the layer's output activations on the batch |
| sat % | sigmoid/tanh outputs in the flat ends (below 0.01 or above 0.99): gradients vanish there |
| dead % | ReLU units that output 0 for the whole batch: they pass no gradient |
| grad ‖·‖ | L2 norm of dLoss/d(layer output); the trend column shows its recent history |
| ‖W‖ | L2 norm of the layer's weight |
| γ / β | mean of the normalization layer's learned scale and shift |

## Histograms
Distribution of each layer's activations, one row per variant: without BN a deep
sigmoid net piles up at 0 and 1; with BN every layer centres on 0.5.

## Probe (dying-relu)
Inputs 1..5 after Linear, after BN and after ReLU. Without BN every value after
Linear is negative, ReLU outputs 0 and nothing learns.

## Sweep grid (init-sweep)
Training accuracy per epoch for 16 initial weight scales; solid green = with BN, dotted red = without.

## Settings
The backend (`b`, here or on the start screen) is kept for every demo and shown on the start
screen. `c` changes the learning rate and seed of this demo's run only (kept by `r`); the status
line marks a value that differs from the demo's default.

## Keys
q quit · ? help · esc back · space pause/resume · n or . one step · r restart (running) ·
c change lr/seed · b switch backend · l log-y · s smoothing · v/V focus a variant ·
1-7, tab panels · e export (CSV, JSON Lines, SVG screenshot; `dualnorm tui DIR` reopens it) ·
Ctrl-C quit (exit code 130)
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_help", "Close"),
        Binding("question_mark", "dismiss_help", "Close", show=False),
        Binding("q", "dismiss_help", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-panel"):
            yield Markdown(HELP_TEXT)
        yield KeyFooter()

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class ErrorScreen(ModalScreen[None]):
    """A traceback (a user experiment that failed to import or raised), shown; the app stays up."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("enter", "close", "Close", show=False),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, title: str, details: str) -> None:
        super().__init__()
        self.title_text = title
        self.details = details

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="error-panel"):
            yield Static(Text(self.title_text, style="bold red"), id="error-title")
            yield Static(Text(self.details), id="error-details")
        yield KeyFooter()

    def action_close(self) -> None:
        self.dismiss(None)


class ConfigModal(ModalScreen[dict[str, Any] | None]):
    """Change the learning rate and seed, then restart."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, lr: float, seed: int) -> None:
        super().__init__()
        self._lr = lr
        self._seed = seed

    def compose(self) -> ComposeResult:
        with Vertical(id="config-dialog"):
            yield Label("Learning rate")
            yield Input(value=repr(self._lr), id="lr")
            yield Label("Seed")
            yield Input(value=str(self._seed), id="seed", type="integer")
            yield Label("", id="config-error")  # wraps: a message is never cut
            with Horizontal(id="config-buttons"):
                yield Button("Restart", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#lr", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def submit(self) -> None:
        problem = None
        lr_text = self.query_one("#lr", Input).value.strip()
        seed_text = self.query_one("#seed", Input).value.strip()
        try:
            lr = float(lr_text)
        except ValueError:
            problem = f"learning rate: {lr_text[:20]!r} is not a number; type one like 0.01 or 1e-3"
        else:
            if not (lr > 0 and lr != float("inf")):
                problem = f"learning rate: {lr_text[:20]} must be a number > 0, like 0.01"
        try:
            seed = int(seed_text)
        except ValueError:
            problem = problem or f"seed: {seed_text[:20]!r} is not a whole number; type one like 0 or 7"
        if problem:
            self.query_one("#config-error", Label).update(Text(problem, style="bold red"))
            return
        self.dismiss({"lr": lr, "seed": seed})

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class StartScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "app.quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("enter", "start", "Start", priority=True),
        Binding("b", "backend", "Switch backend"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(Text("dualnorm — watch normalization train", style="bold"), id="title")
        yield Static(id="backend-line")
        yield OptionList(id="experiments")
        yield Static(id="summary")
        yield Static(id="runs-title")
        yield OptionList(id="runs")
        yield Static(
            Text(
                "Enter: run the highlighted demo / open the highlighted run · tab: demos ⇄ runs · "
                "↑/↓ choose · b: switch backend · q: quit",
                style="dim",
            ),
            id="start-hint",
        )
        yield KeyFooter()

    def on_mount(self) -> None:
        options = self.query_one("#experiments", OptionList)
        exps = self.app.experiments
        if not exps:
            options.add_option(
                Option(Text("no experiments registered (is dualnorm installed?)", style="red"))
            )
        for name, exp in exps.items():  # one line each; the highlighted one's summary is below
            prompt = Text.assemble(
                (f"{name:<15}", "bold"), (f"{exp.title}", "cyan"), no_wrap=True, overflow="ellipsis"
            )
            options.add_option(Option(prompt, id=name))
        default = self.app.default_experiment
        if default in exps:
            options.highlighted = list(exps).index(default)
        elif exps:
            options.highlighted = 0
        options.focus()
        self.update_backend_line()
        self.list_runs()

    def on_screen_resume(self) -> None:
        # back from a run: its b may have changed the session's backend, and it may have left a run
        self.update_backend_line()
        self.list_runs()

    @on(OptionList.OptionHighlighted, "#experiments")
    def show_summary(self, event: OptionList.OptionHighlighted) -> None:
        exp = self.app.experiments.get(event.option.id or "")
        if exp is None:
            return
        steps = getattr(exp, "default_steps", None)
        defaults = f"  (defaults: {steps:,} steps, lr {exp.default_lr:g})" if steps else ""
        self.query_one("#summary", Static).update(Text.assemble(exp.summary, (defaults, "dim")))

    def list_runs(self) -> None:
        """The recent runs under the runs directory (name, experiment, backend, steps, status, date)."""
        from dualnorm.tracking import list_runs

        root = self.app.runs_root
        runs = list_runs(root)
        self.query_one("#runs-title", Static).update(
            Text.assemble(
                ("recent runs", "bold"), (f"  in {root}", "dim"), ("  (none yet)" if not runs else "", "dim")
            )
        )
        options = self.query_one("#runs", OptionList)
        options.clear_options()
        colors = {"finished": "green", "running": "yellow", "failed": "red", "interrupted": "red"}
        for meta in runs:
            date = str(meta.get("started_at", ""))[:16].replace("T", " ")
            prompt = Text.assemble(
                (f"{ellipsize(Path(meta['path']).name, 33):<34}", "bold"),
                (f"{str(meta.get('experiment', '?'))[:17]:<18}", "cyan"),
                f"{meta.get('backend', '?'):<7}",
                f"{meta.get('steps', 0):>8,} steps  ",
                (f"{meta['status']:<12}", colors.get(meta["status"], "")),
                (date, "dim"),
            )
            options.add_option(Option(prompt, id=f"run:{meta['path']}"))
        options.display = bool(runs)
        if runs:
            options.highlighted = 0

    def update_backend_line(self, backend: str | None = None) -> None:
        """The settings the next demo runs with: where each comes from is said, never implied.

        The backend is the session's (b here or on a run); lr, seed and steps are each demo's
        defaults unless given on the command line (``c`` on a run changes them for that run only).
        """
        app = self.app
        backends = app.backends
        others = "  (b: switch; installed: " + ", ".join(backends) + ")" if len(backends) > 1 else ""
        text = Text.assemble(
            "backend: ", (backend or app.backend, "bold green"), " for every demo", (others, "dim"), "\n"
        )
        given = [
            f"{name} {value:g}" if isinstance(value, float) else f"{name} {value:,}"
            for name, value in (("lr", app.lr), ("steps", app.steps), ("seed", app.seed or None))
            if value is not None
        ]
        if given:
            text.append("settings: ")
            text.append(", ".join(given), style="bold yellow")
            text.append(" from the command line, for every demo", style="dim")
        else:
            text.append("lr, seed, steps: each demo's defaults", style="dim")
            text.append("  (c on a run changes lr and seed for that run)", style="dim")
        self.query_one("#backend-line", Static).update(text)

    def action_backend(self) -> None:
        backend = next_backend(self.app.backends, self.app.backend)
        self.post_message(SetBackend(backend))
        self.update_backend_line(backend)

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def action_start(self) -> None:
        runs = self.query_one("#runs", OptionList)
        options = runs if runs.has_focus else self.query_one("#experiments", OptionList)
        if options.highlighted is None:
            return
        self._open(options.get_option_at_index(options.highlighted).id)

    @on(OptionList.OptionSelected)
    def selected(self, event: OptionList.OptionSelected) -> None:
        self._open(event.option.id)

    def _open(self, option_id: str | None) -> None:
        if not option_id:
            return
        if option_id.startswith("run:"):
            self.post_message(OpenRuns([option_id[4:]]))
        else:
            self.post_message(OpenExperiment(option_id))


# The panels under the loss plot take turns: one shows at a time, picked with its number key.
# (id, tab label); the number key of a panel is its position here + 2 ("1" is the loss plot).
PANELS = (
    ("layers", "layers"),
    ("hist", "histograms"),
    ("probe", "probe"),
    ("sweep", "sweep grid"),
    ("compare-panel", "compare"),
    ("traceback-panel", "error"),
)
# the panel shown first, when it has something to show and the user has not picked one
PANEL_PRIORITY = ("traceback-panel", "compare-panel", "sweep", "layers", "hist", "probe")
# Below this height the plot (at least LossPlot.MIN_CURVE_ROWS rows of curve) and a panel no longer
# both fit: they take turns too, the plot being panel "1".
TALL_HEIGHT = 28
# init-sweep's 4x4 grid: below this height it takes turns with the plot too (cells of 7+ curve rows)
SWEEP_TALL_HEIGHT = 50


class PanelBar(Static):
    """One line naming the panels and their keys, the shown one highlighted."""

    DEFAULT_CSS = "PanelBar { height: 1; padding: 0 1; background: $boost; }"

    def show(self, items: list[tuple[str, str, bool]], hint: str) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        for key, label, active in items:
            style = "bold reverse" if active else ""
            text.append(f" {key} {label} ", style=style)
            text.append(" ")
        text.append(hint, style="dim")
        self.update(text)


class RunScreen(Screen[None]):
    """The live view of one experiment run."""

    # q and ? first: the footer shows bindings in this order and cuts what does not fit
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "app.quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("escape", "back", "Back"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("tab", "next_panel", "Panel", show=False),  # the panel bar says so
        Binding("shift+tab", "prev_panel", "Panel", show=False),
        *(Binding(str(k), f"show_panel({k})", f"panel {k}", show=False) for k in range(1, 8)),
        Binding("n", "step", "Step"),
        Binding("full_stop", "step", "Step", show=False),
        Binding("r", "restart", "Restart"),
        Binding("c", "configure", "LR/seed"),
        Binding("b", "switch_backend", "Backend"),
        Binding("l", "toggle_log", "Log y"),
        Binding("s", "toggle_smooth", "Smooth"),
        Binding("v", "focus_next", "Variant"),
        Binding("V", "focus_prev", "Variant", show=False),
        Binding("e", "export", "Export"),
    ]

    AUTO_FOCUS = None  # apply_layout gives the focus to the shown panel (each move rebuilds the footer)

    # Training shares the GIL with the UI, so every millisecond spent rendering is taken from a
    # pure-Python training step: drain often, but redraw only as often as the eye needs.
    POLL_INTERVAL = 0.25
    PLOT_INTERVAL = 0.5  # redraw the (expensive) plots at most this often
    TABLE_INTERVAL = 0.5  # the status line, the layer table and the probe table, together

    def __init__(self, experiment: Any, config: Any, *, paused: bool = False) -> None:
        super().__init__()
        self.experiment = experiment
        self.config = config
        self.state = RunState(experiment.variants)
        self.buffer = RecordBuffer()
        self.runner = self.make_runner(paused)
        self.log_y = False
        self.smoothing = False
        self.compact = False  # plot and panels take turns (a short terminal)
        self.chosen_panel: str | None = None  # what the user picked with a number key or tab
        self.available: set[str] = set()  # panels with something to show
        self._bar_items: list[tuple[str, str, bool]] = []
        self._pending = Changes()
        self._last_plot = 0.0
        self._last_table = 0.0
        self._leaving = False
        self._going_back = False
        self._error_shown = False
        self._notices_shown = 0
        self._paused_since: float | None = time.perf_counter() if paused else None
        self._paused_s = 0.0  # time spent paused, left out of the final average rate
        self.last_export: Path | None = None

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield LossPlot(id="loss")
        yield PanelBar(id="panel-bar")
        with Vertical(id="panels"):
            yield LayerTable(id="layers")
            yield HistogramPanel(id="hist")
            yield ProbeTable(id="probe")
            yield SweepGrid(id="sweep")
            with VerticalScroll(id="traceback-panel"):
                yield Static(id="traceback")
        yield KeyFooter()

    def panel_widgets(self) -> dict[str, Widget]:
        return {child.id: child for child in self.query_one("#panels").children if child.id}

    def panel_keys(self) -> list[tuple[str, str]]:
        """(key, id) of what can be shown now: the loss plot ("1") and the panels with content."""
        keys = [("1", "loss")]
        for i, (pid, _) in enumerate(PANELS):
            if pid in self.available:
                keys.append((str(i + 2), pid))
        return keys

    @property
    def view(self) -> str:
        """What the lower part shows: a panel's id, or "loss" for the plot alone."""
        shown = [pid for _, pid in self.panel_keys()]
        if self.chosen_panel in shown:
            return self.chosen_panel
        if self.compact:
            return "loss"
        return next((pid for pid in PANEL_PRIORITY if pid in self.available), "loss")

    def apply_layout(self) -> None:
        """Show the plot and the chosen panel as the terminal's height allows."""
        view = self.view
        self.query_one("#loss").display = view == "loss" or not self.alone(view)
        self.query_one("#panels").display = view != "loss"
        for pid, widget in self.panel_widgets().items():
            widget.display = pid == view
        labels = dict(PANELS, loss="loss plot" if self.compact else "plot only")
        items = [(key, labels[pid], pid == view) for key, pid in self.panel_keys()]
        if items != self._bar_items:
            self._bar_items = items
            self.query_one(PanelBar).show(items, "tab: next" if len(items) > 1 else "")
        if self.is_attached and self.app.screen is self:
            self._focus_view(view)

    def alone(self, view: str) -> bool:
        """Whether ``view`` is shown instead of the plot rather than under it."""
        return self.compact or (view == "sweep" and self.size.height < SWEEP_TALL_HEIGHT)

    def _focus_view(self, view: str) -> None:
        """Arrow keys scroll what is shown: its table or scroll area takes the focus."""
        target = self.panel_widgets().get(view)
        target = target if target is not None and target.can_focus else None
        if self.focused is not target:  # a focus change rebuilds the footer: only when it moves
            self.set_focus(target)

    def on_resize(self) -> None:
        compact = self.size.height < TALL_HEIGHT
        if compact != self.compact:
            self.compact = compact
            self.set_class(compact, "-compact")
        self.apply_layout()

    def on_screen_resume(self) -> None:
        self.apply_layout()

    def make_available(self, panel: str) -> None:
        if panel not in self.available:
            self.available.add(panel)
            self.apply_layout()

    def action_show_panel(self, key: int) -> None:
        for k, pid in self.panel_keys():
            if k == str(key):
                self.chosen_panel = pid
                self.apply_layout()
                return

    def action_next_panel(self, step: int = 1) -> None:
        ids = [pid for _, pid in self.panel_keys()]
        i = ids.index(self.view) if self.view in ids else 0
        self.chosen_panel = ids[(i + step) % len(ids)]
        self.apply_layout()

    def action_prev_panel(self) -> None:
        self.action_next_panel(-1)

    def make_runner(self, paused: bool) -> Any:
        return make_runner(self.experiment, self.config, self.buffer, paused=paused)

    def on_mount(self) -> None:
        self.query_one("#loss").border_title = f"loss vs step — {self.experiment.title}"
        self.update_layer_title()
        self.query_one("#probe").border_title = "probe inputs 1..5 through the network"
        grid_title = getattr(self.experiment, "grid_title", None)
        self.query_one("#sweep").border_title = grid_title or "accuracy per setting"
        if self.state.sweep or grid_title:
            self.add_class("sweep")
        self.on_resize()
        self.post_message(RunnerStarted(self.runner))
        self.runner.start()
        self.set_interval(self.POLL_INTERVAL, self.poll)
        self.update_status()

    def on_unmount(self) -> None:
        self.runner.stop()

    # -- the UI timer: drain the buffer, redraw what changed ---------------------------------------

    def poll(self, force: bool = False) -> None:
        feed = getattr(self.runner, "poll", None)  # a runner without a thread (a followed file) reads here
        if feed is not None:
            feed()
        records = self.buffer.drain()
        if records:
            self._pending.merge(self.state.apply(records))
        elif not self.runner.paused:
            self.state.apply((), now=None)
        now = time.perf_counter()
        p = self._pending
        # the status line and both tables are drawn on the same tick, so they name the same step
        if force or now - self._last_table >= self.TABLE_INTERVAL:
            if p.layers:
                self.make_available("layers")
                self.query_one(LayerTable).redraw(self.state)
                self.update_layer_title()
                p.layers.clear()
            if p.probe:
                self.make_available("probe")
                self.query_one(ProbeTable).redraw(self.state)
                p.probe.clear()
            if p.status or records or self.runner.finished.is_set() or force:
                self.update_status()
                p.status = False
            self._last_table = now
        if force or now - self._last_plot >= self.PLOT_INTERVAL:
            if p.curves:
                self.redraw_loss()
                p.curves.clear()
            if p.hists and not self.state.sweep:
                self.make_available("hist")
                self.query_one(HistogramPanel).set_data(self.state.hist_variants())
                p.hists.clear()
            grid = self.query_one(SweepGrid)
            if p.sweep or grid.dirty:
                if "sweep" not in self.available:
                    self.add_class("sweep")
                    self.make_available("sweep")
                grid.redraw(self.state, set(p.sweep))
                p.sweep.clear()
            self._last_plot = now

    def redraw_loss(self) -> None:
        self.query_one(LossPlot).redraw(
            self.state, log_y=self.log_y, smoothing=DEFAULT_SMOOTHING if self.smoothing else None
        )

    # -- the status line -------------------------------------------------------------------------

    def variant_names(self) -> tuple[str, ...]:
        return tuple(
            getattr(self.config, "variants", None) or self.experiment.variants or self.state.variants
        )

    def steps_per_variant(self) -> int | None:
        steps = getattr(self.config, "steps", None)
        return int(steps) if steps else getattr(self.experiment, "default_steps", None)

    def rate_text(self) -> str:
        """Steps per second: live while running, the whole run's average once it has finished."""
        runner, st = self.runner, self.state
        if runner.finished.is_set() and runner.started_at is not None and runner.finished_at is not None:
            seconds = runner.finished_at - runner.started_at - self._paused_s
            return f"avg {st.total_steps / seconds:,.0f} steps/s" if seconds > 0 and st.total_steps else ""
        rate = st.steps_per_second
        return "— steps/s" if runner.paused or rate is None else f"{rate:,.0f} steps/s"

    def state_word(self) -> tuple[str, str]:
        runner = self.runner
        if runner.error:
            return ("error", "bold red")
        if runner.finished.is_set() and not len(self.buffer):
            return ("finished", "bold green")
        if runner.paused:
            return ("paused", "bold yellow")
        return ("running", "bold green")

    def progress_text(self) -> Text:
        """``variant 2/2 batchnorm · step 7,750 / 10,000``: where the run is, per variant."""
        st = self.state
        names = self.variant_names()
        current = st.current_variant
        cur = st.variants.get(current) if current else None
        text = Text()
        if current is None:
            return text.append("waiting for the first step", style="dim")
        index = f"{names.index(current) + 1}/{len(names)} " if current in names else ""
        text.append("variant ", style="dim").append(f"{index}{current}", style="bold")
        total = self.steps_per_variant()
        text.append(" · step ", style="dim").append(f"{cur.last_step if cur else 0:,}")
        if total:
            text.append(f" / {total:,}")
        return text

    def settings_text(self) -> Text:
        """Backend, lr and seed of this run; a value changed from the demo's default says so."""
        st, config = self.state, self.config
        backend = config.backend or st.backend or self.app.backend
        default_lr = self.experiment.default_lr
        lr = config.lr if config.lr is not None else default_lr
        text = Text.assemble(("backend ", "dim"), (backend, "bold cyan"), ("  lr ", "dim"), f"{lr:g}")
        if config.lr is not None and config.lr != default_lr:
            text.append(f" (default {default_lr:g})", style="yellow")
        text.append("  seed ", style="dim").append(str(config.seed))
        if config.seed:
            text.append(" (default 0)", style="yellow")
        steps = getattr(config, "steps", None)
        default_steps = getattr(self.experiment, "default_steps", None)
        if steps and steps != default_steps:
            text.append("  steps ", style="dim").append(f"{steps:,}").append(
                f" (default {default_steps:,})" if default_steps else "", style="yellow"
            )
        return text

    def view_flags(self) -> Text:
        text = Text()
        if self.state.focus:
            text.append(f"  showing {self.state.focus}", style="bold magenta")
        if self.log_y:
            text.append("  log-y", style="magenta")
        if self.smoothing:
            text.append("  smoothed", style="magenta")
        return text

    def status_text(self) -> Text:
        st = self.state
        current = st.current_variant
        cur = st.variants.get(current) if current else None
        line1 = Text.assemble(
            self.state_word(),
            ("  ", ""),
            self.progress_text(),
            ("  ", ""),
            self.rate_text(),
            ("  loss ", "dim"),
            fmt(cur.last_loss) if cur else "-",
            self.view_flags(),
        )
        notes = []
        for v in st.diverged():
            note = Text(f"⚠ {v.name} diverged at step {v.diverged_at}", style="bold red")
            if v.message:
                note.append(f": {v.message}", style="red")
            notes.append(note)
        if self.runner.error:
            notes.append(Text(f"✖ experiment failed: {self.runner.error}", style="bold red"))
        line2 = Text.assemble(self.settings_text(), ("  ", ""), Text("  ").join(notes))
        if not notes:
            line2.append(self.experiment.summary, style="dim")
        return Text("\n", no_wrap=True, overflow="ellipsis").join([line1, line2])

    def update_status(self) -> None:
        self.query_one(StatusLine).set_text(self.status_text())
        notices = getattr(self.runner, "notices", ())
        for message in notices[self._notices_shown :]:
            self.notify(message, title="training", timeout=8)
        self._notices_shown = len(notices)
        if self.runner.error and not self._error_shown:
            self._error_shown = True
            self.notify(self.runner.error, title="experiment failed", severity="error", timeout=10)
            details = getattr(self.runner, "traceback", None)
            if details:  # e.g. a user experiment that raised: its traceback, on this screen
                panel = self.query_one("#traceback-panel")
                self.query_one("#traceback", Static).update(Text(details, style="red"))
                panel.border_title = f"{self.experiment.name} raised (the records before it are shown)"
                self.make_available("traceback-panel")

    def update_layer_title(self) -> None:
        focus = self.state.focus
        n = len(self.state.variants)
        shown = f"showing {focus}" if focus else "latest variant(s)"
        layers = self.query_one(LayerTable)
        titles = {
            layers: f"per-layer statistics — {shown}",
            self.query_one("#hist"): f"activation histograms per layer — {shown}",
        }
        for widget, title in titles.items():  # a title set to itself still repaints: only on change
            if widget.border_title != title:
                widget.border_title = title
        subtitle = layers.row_detail() or (f"v/V: focus one of {n} variants" if n > 1 else "")
        if layers.border_subtitle != subtitle:
            layers.border_subtitle = subtitle

    def action_focus_next(self, step: int = 1) -> None:
        self.state.cycle_focus(step)  # said in the status line and the panel titles, not a pile of toasts
        self.update_layer_title()
        self.query_one(LayerTable).redraw(self.state)
        hist = self.query_one(HistogramPanel)
        if "hist" in self.available:
            hist.set_data(self.state.hist_variants())
        self.redraw_loss()
        self.update_status()

    def action_focus_prev(self) -> None:
        self.action_focus_next(-1)

    # -- actions -----------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        if self.runner.paused:
            self.state.reset_rate()
            self.runner.resume()
            if self._paused_since is not None:
                self._paused_s += time.perf_counter() - self._paused_since
                self._paused_since = None
        else:
            self.runner.pause()
            self._paused_since = time.perf_counter()
        self.update_status()

    def action_step(self) -> None:
        if not self.runner.paused:
            self._paused_since = time.perf_counter()
        self.runner.step(1)
        self.update_status()

    def carry_view_from(self, other: RunScreen) -> None:
        """A restart keeps how the run is looked at: log-y, smoothing, the focus, the panel."""
        self.log_y, self.smoothing = other.log_y, other.smoothing
        self.state.focus = other.state.focus
        self.chosen_panel = other.chosen_panel

    def _restart(self, **changes: Any) -> None:
        if self._leaving:
            return
        self._leaving = True
        self.post_message(RestartRun(self, self.config.with_changes(**changes) if changes else self.config))

    def action_restart(self) -> None:
        self._restart()

    def action_switch_backend(self) -> None:
        if self._leaving:
            return
        backend = next_backend(self.app.backends, self.config.backend or self.app.backend)
        self.notify(f"backend: {backend} for this and the next demos (restarting)", timeout=4)
        self._restart(backend=backend)

    def action_configure(self) -> None:
        if self._leaving:
            return
        lr = self.config.lr if self.config.lr is not None else self.experiment.default_lr

        def done(result: dict[str, Any] | None) -> None:
            if result:
                self._restart(lr=result["lr"], seed=result["seed"])

        self.app.push_screen(ConfigModal(lr, self.config.seed), done)

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.redraw_loss()
        self.update_status()

    def action_toggle_smooth(self) -> None:
        self.smoothing = not self.smoothing
        self.redraw_loss()
        self.update_status()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def action_back(self) -> None:
        # also while a restart is pending: the app handles both in order, so esc still wins
        if self._going_back:
            return
        self._going_back = self._leaving = True
        self.runner.stop()
        self.post_message(BackToStart())

    def action_export(self) -> None:
        directory = Path(self.app.export_dir) if self.app.export_dir else None
        target = directory / f"{self.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}" if directory else None
        target = target or default_export_dir(self.experiment.name)
        from dualnorm.tracking import OutputPathError, check_output_dir

        try:  # before the screenshot and the records are taken: one line naming the path and why
            check_output_dir(target)
        except OutputPathError as exc:
            self.notify(str(exc), title="cannot export", severity="error", timeout=10)
            return
        records = list(self.state.records)  # the latest RunState.RECENT_RECORDS
        svg = self.app.export_screenshot(title=f"dualnorm {self.experiment.name}")
        meta = {
            "experiment": self.experiment.name,
            "config": {
                "backend": self.config.backend,
                "steps": self.config.steps,
                "seed": self.config.seed,
                "lr": self.config.lr,
                "record_every": self.config.record_every,
            },
            "records": len(records),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.run_worker(lambda: self._write_export(target, records, svg, meta), thread=True, group="export")

    def _write_export(self, target: Path, records: list[Any], svg: str, meta: dict[str, Any]) -> None:
        try:
            export_run(target, records, svg, meta)
        except OSError as exc:
            self.app.call_from_thread(self.notify, f"export failed: {exc}", severity="error")
            return
        self.last_export = target
        self.app.call_from_thread(
            self.notify, f"{len(records)} records → {target}", title="exported", timeout=8
        )


class ViewedRuns:
    """What a :class:`ViewScreen` shows in place of an experiment: runs read from files."""

    default_lr = float("nan")

    def __init__(self, follower: RunFollower) -> None:
        metas = [src.meta or {} for src in follower.sources]
        experiments = sorted({str(m.get("experiment", "")) for m in metas if m.get("experiment")})
        self.name = ", ".join(src.label for src in follower.sources)
        self.title = f"{len(follower.sources)} runs overlaid" if follower.multi else f"run {self.name}"
        self.summary = follower.describe()
        self.experiments = experiments
        self.variants: tuple[str, ...] = ()


class ViewScreen(RunScreen, inherit_bindings=False):
    """Runs read from run directories or JSON Lines files: shown whole, followed while written."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "app.quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("escape", "back", "Back"),
        Binding("space", "toggle_pause", "Freeze"),
        Binding("tab", "next_panel", "Panel", show=False),  # the panel bar says so
        Binding("shift+tab", "prev_panel", "Panel", show=False),
        *(Binding(str(k), f"show_panel({k})", f"panel {k}", show=False) for k in range(1, 8)),
        Binding("n", "step", "Step", show=False),
        Binding("l", "toggle_log", "Log y"),
        Binding("s", "toggle_smooth", "Smooth"),
        Binding("v", "focus_next", "Variant"),
        Binding("V", "focus_prev", "Variant", show=False),
        Binding("e", "export", "Export"),
    ]

    POLL_INTERVAL = 0.2  # new records on screen well within a second

    def __init__(self, sources: Any, *, paused: bool = False) -> None:
        self._sources = sources
        from dualnorm.experiments.base import RunConfig

        super().__init__(_Pending(), RunConfig(), paused=paused)
        self.experiment = ViewedRuns(self.runner)
        self.state.styles = self.runner.styles  # per-run line colours, filled in as records arrive
        self._warned = 0

    def make_runner(self, paused: bool) -> Any:
        return RunFollower(self._sources, self.buffer, paused=paused)

    def poll(self, force: bool = False) -> None:
        super().poll(force)
        for message in self.runner.warnings[self._warned :]:
            self.notify(message, title="run file", severity="warning", timeout=8)
        self._warned = len(self.runner.warnings)

    def variant_names(self) -> tuple[str, ...]:
        return tuple(self.state.variants)

    def steps_per_variant(self) -> int | None:
        return None  # a followed run may still grow

    def status_text(self) -> Text:
        st, runner = self.state, self.runner
        if runner.error:
            word = ("error", "bold red")
        elif runner.paused:
            word = ("frozen", "bold yellow")
        elif runner.live:
            word = ("following", "bold green")
        else:
            word = ("finished", "bold green")
        current = st.current_variant
        cur = st.variants.get(current) if current else None
        line1 = Text.assemble(
            word,
            ("  ", ""),
            self.progress_text(),
            ("  records ", "dim"),
            f"{st.records_seen:,}",
            ("  loss ", "dim"),
            fmt(cur.last_loss) if cur else "-",
            self.view_flags(),
        )
        if runner.error:
            line2 = Text(f"✖ {runner.error}", style="bold red")
        else:
            line2 = Text(runner.describe(), style="dim")
        return Text("\n", no_wrap=True, overflow="ellipsis").join([line1, line2])


class _Pending:
    """Placeholder experiment while a ViewScreen is being built (replaced in __init__)."""

    name = title = summary = "runs"
    variants: tuple[str, ...] = ()
    default_lr = float("nan")
