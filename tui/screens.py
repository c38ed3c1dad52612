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
from textual.widgets import Button, Footer, Input, Label, Markdown, OptionList, Static
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
from tui.state import DEFAULT_SMOOTHING, Changes, RecordBuffer, RunState, fmt
from tui.widgets import HistogramPanel, LayerTable, LossPlot, ProbeTable, StatusLine, SweepGrid

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
Loss per step of each variant, overlaid. `l` switches the y axis to log10 (zero
losses are clipped at 1e-12), `s` smooths with TensorBoard's debiased EMA
(weight 0.9). A red vertical line marks the step where a variant diverged (NaN/inf loss).

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

## Keys
space pause/resume · n or . one step · r restart · c change lr/seed · b switch backend ·
l log-y · s smoothing · e export (CSV, JSON Lines, SVG screenshot) · ? help · esc experiments · q quit
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
        yield Footer()

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
        yield Footer()

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
            yield Label("", id="config-error")
            with Horizontal(id="config-buttons"):
                yield Button("Restart", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#lr", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def submit(self) -> None:
        try:
            lr = float(self.query_one("#lr", Input).value)
            seed = int(self.query_one("#seed", Input).value)
            if not lr > 0:
                raise ValueError("the learning rate must be > 0")
        except ValueError as exc:
            self.query_one("#config-error", Label).update(Text(f"invalid: {exc}", style="bold red"))
            return
        self.dismiss({"lr": lr, "seed": seed})

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class StartScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "start", "Start", priority=True),
        Binding("b", "backend", "Switch backend"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(Text("dualnorm — watch normalization train", style="bold"), id="title")
        yield Static(id="backend-line")
        yield OptionList(id="experiments")
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
        yield Footer()

    def on_mount(self) -> None:
        options = self.query_one("#experiments", OptionList)
        exps = self.app.experiments
        if not exps:
            options.add_option(
                Option(Text("no experiments registered (is dualnorm installed?)", style="red"))
            )
        for name, exp in exps.items():
            prompt = Text.assemble(
                (f"{name:<15}", "bold"), (f"{exp.title}", "cyan"), ("  —  ", "dim"), exp.summary
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
                (f"{Path(meta['path']).name:<34}", "bold"),
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
        backends = self.app.backends
        others = "  (b: switch; installed: " + ", ".join(backends) + ")" if len(backends) > 1 else ""
        self.query_one("#backend-line", Static).update(
            Text.assemble("backend: ", (backend or self.app.backend, "bold green"), (others, "dim"))
        )

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


class RunScreen(Screen[None]):
    """The live view of one experiment run."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_pause", "Pause/Resume"),
        Binding("n", "step", "Step"),
        Binding("full_stop", "step", "Step", show=False),
        Binding("r", "restart", "Restart"),
        Binding("c", "configure", "LR/seed"),
        Binding("b", "switch_backend", "Backend"),
        Binding("l", "toggle_log", "Log y"),
        Binding("s", "toggle_smooth", "Smooth"),
        Binding("e", "export", "Export"),
        Binding("v", "focus_next", "Focus variant"),
        Binding("V", "focus_prev", "Focus variant", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("escape", "back", "Experiments"),
        Binding("q", "app.quit", "Quit"),
    ]

    # Training shares the GIL with the UI, so every millisecond spent rendering is taken from a
    # pure-Python training step: drain often, but redraw only as often as the eye needs.
    POLL_INTERVAL = 0.25
    PLOT_INTERVAL = 0.5  # redraw the (expensive) plots at most this often
    TABLE_INTERVAL = 0.5
    STATUS_INTERVAL = 0.25

    def __init__(self, experiment: Any, config: Any, *, paused: bool = False) -> None:
        super().__init__()
        self.experiment = experiment
        self.config = config
        self.state = RunState(experiment.variants)
        self.buffer = RecordBuffer()
        self.runner = self.make_runner(paused)
        self.log_y = False
        self.smoothing = False
        self._pending = Changes()
        self._last_plot = 0.0
        self._last_table = 0.0
        self._last_status = 0.0
        self._leaving = False
        self._going_back = False
        self._error_shown = False
        self._notices_shown = 0
        self._started = time.perf_counter()
        self.last_export: Path | None = None

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Horizontal(id="top"):
            yield LossPlot(id="loss")
            yield ProbeTable(id="probe")
        with VerticalScroll(id="traceback-panel"):
            yield Static(id="traceback")
        yield LayerTable(id="layers")
        with Horizontal(id="detail"):
            yield HistogramPanel(id="hist")
            yield SweepGrid(id="sweep")
        yield Footer()

    def make_runner(self, paused: bool) -> Any:
        return make_runner(self.experiment, self.config, self.buffer, paused=paused)

    def on_mount(self) -> None:
        self.query_one("#loss").border_title = f"loss — {self.experiment.title}"
        self.update_layer_title()
        self.query_one("#hist").border_title = "activation histograms per layer"
        self.query_one("#probe").border_title = "probe inputs 1..5 through the network"
        self.query_one(
            "#sweep"
        ).border_title = "init-sweep: training accuracy, BN (solid green) vs plain (dotted red)"
        self.query_one("#probe").display = False
        self.query_one("#traceback-panel").display = False
        self.query_one("#sweep").display = False
        self.query_one("#detail").display = False
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
        if p.layers and (force or now - self._last_table >= self.TABLE_INTERVAL):
            self.query_one(LayerTable).redraw(self.state)
            p.layers.clear()
            self._last_table = now
        if p.probe and (force or now - self._last_table >= self.TABLE_INTERVAL or not p.layers):
            probe = self.query_one(ProbeTable)
            probe.display = True
            probe.redraw(self.state)
            p.probe.clear()
        if force or now - self._last_plot >= self.PLOT_INTERVAL:
            if p.curves:
                self.redraw_loss()
                p.curves.clear()
            if p.hists and not self.state.sweep:
                self.query_one("#detail").display = True
                self.query_one(HistogramPanel).set_data(self.state.hist_variants())
                p.hists.clear()
            grid = self.query_one(SweepGrid)
            if p.sweep or grid.dirty:
                if not grid.display:
                    self.add_class("sweep")
                    grid.display = True
                    self.query_one("#detail").display = True
                    self.query_one(HistogramPanel).display = False
                grid.redraw(self.state, set(p.sweep))
                p.sweep.clear()
            self._last_plot = now
        status_due = force or p.status or now - self._last_status >= self.STATUS_INTERVAL
        if status_due and (p.status or records or self.runner.finished.is_set()):
            self.update_status()
            p.status = False
            self._last_status = now

    def redraw_loss(self) -> None:
        self.query_one(LossPlot).redraw(
            self.state, log_y=self.log_y, smoothing=DEFAULT_SMOOTHING if self.smoothing else None
        )

    def status_text(self) -> Text:
        st = self.state
        runner = self.runner
        if runner.error:
            state_word = ("error", "bold red")
        elif runner.finished.is_set() and not len(self.buffer):
            state_word = ("finished", "bold green")
        elif runner.paused:
            state_word = ("paused", "bold yellow")
        else:
            state_word = ("running", "bold green")
        rate = st.steps_per_second
        rate_s = "— steps/s" if runner.paused or rate is None else f"{rate:,.0f} steps/s"
        backend = self.config.backend or st.backend or self.app.backend
        lr = self.config.lr if self.config.lr is not None else self.experiment.default_lr
        current = st.current_variant or "-"
        cur = st.variants.get(current)
        loss = fmt(cur.last_loss) if cur else "-"
        text = Text.assemble(
            state_word,
            f"  {self.experiment.name}",
            ("  step ", "dim"),
            f"{st.total_steps:,}",
            ("  ", "dim"),
            rate_s,
            ("  backend ", "dim"),
            (backend, "bold cyan"),
            ("  lr ", "dim"),
            f"{lr:g}",
            ("  seed ", "dim"),
            str(self.config.seed),
            ("  variant ", "dim"),
            current,
            ("  loss ", "dim"),
            loss,
            ("  log-y" if self.log_y else "", "magenta"),
            ("  smoothed" if self.smoothing else "", "magenta"),
        )
        notes = []
        for v in st.diverged():
            note = Text(f"⚠ {v.name} diverged at step {v.diverged_at}", style="bold red")
            if v.message:
                note.append(f": {v.message}", style="red")
            notes.append(note)
        if runner.error:
            notes.append(Text(f"✖ experiment failed: {runner.error}", style="bold red"))
        if not notes:
            notes.append(Text(self.experiment.summary, style="dim"))
        text.append("\n")
        text.append(Text("  ").join(notes))
        return text

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
                panel.display = True

    def update_layer_title(self) -> None:
        focus = self.state.focus
        n = len(self.state.variants)
        shown = f"showing {focus}" if focus else "showing the latest variant(s)"
        self.query_one("#layers").border_title = f"per-layer statistics (latest step) — {shown}"
        self.query_one("#layers").border_subtitle = f"v/V: focus one of {n} variants" if n > 1 else ""
        self.query_one("#hist").border_title = f"activation histograms per layer — {shown}"

    def action_focus_next(self, step: int = 1) -> None:
        focus = self.state.cycle_focus(step)
        self.update_layer_title()
        self.notify(f"showing {focus or 'the latest variant(s)'}", timeout=2)
        self.query_one(LayerTable).redraw(self.state)
        hist = self.query_one(HistogramPanel)
        if hist.display:
            hist.set_data(self.state.hist_variants())
        self.redraw_loss()

    def action_focus_prev(self) -> None:
        self.action_focus_next(-1)

    # -- actions -----------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        if self.runner.paused:
            self.state.reset_rate()
            self.runner.resume()
        else:
            self.runner.pause()
        self.update_status()

    def action_step(self) -> None:
        self.runner.step(1)
        self.update_status()

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
        self.notify(f"backend: {backend} (restarting)")
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
        Binding("space", "toggle_pause", "Freeze/Follow"),
        Binding("n", "step", "Step", show=False),
        Binding("l", "toggle_log", "Log y"),
        Binding("s", "toggle_smooth", "Smooth"),
        Binding("v", "focus_next", "Focus variant"),
        Binding("V", "focus_prev", "Focus variant", show=False),
        Binding("e", "export", "Export"),
        Binding("question_mark", "help", "Help"),
        Binding("escape", "back", "Back"),
        Binding("q", "app.quit", "Quit"),
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
        current = st.current_variant or "-"
        cur = st.variants.get(current)
        text = Text.assemble(
            word,
            f"  {self.experiment.title}",
            ("  records ", "dim"),
            f"{st.records_seen:,}",
            ("  variant ", "dim"),
            current,
            ("  loss ", "dim"),
            fmt(cur.last_loss) if cur else "-",
            ("  focus ", "dim"),
            st.focus or "latest",
            ("  log-y" if self.log_y else "", "magenta"),
            ("  smoothed" if self.smoothing else "", "magenta"),
        )
        text.append("\n")
        if runner.error:
            text.append(f"✖ {runner.error}", style="bold red")
        else:
            text.append(runner.describe(), style="dim")
        return text


class _Pending:
    """Placeholder experiment while a ViewScreen is being built (replaced in __init__)."""

    name = title = summary = "runs"
    variants: tuple[str, ...] = ()
    default_lr = float("nan")
