"""The dualnorm terminal app: ``python -m tui`` or ``dualnorm tui``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from tui.messages import BackToStart, OpenExperiment, OpenRuns, RestartRun, RunnerStarted, SetBackend
from tui.runner import ProcessTrainingRunner, TrainingRunner
from tui.screens import ErrorScreen, RunScreen, StartScreen, ViewScreen


def load_experiments() -> dict[str, Any]:
    """The library's registered experiments."""
    from dualnorm.experiments import EXPERIMENTS

    return dict(EXPERIMENTS)


def default_experiment_name() -> str:
    from dualnorm.experiments import DEFAULT_EXPERIMENT

    return DEFAULT_EXPERIMENT


def available_backends() -> list[str]:
    from dualnorm import available_backends as _available

    return list(_available())


def active_backend(backends: Sequence[str]) -> str:
    from dualnorm import get_backend

    return str(get_backend().name)


def make_config(**kwargs: Any) -> Any:
    from dualnorm.experiments.base import RunConfig

    return RunConfig(**kwargs)


class DualnormApp(App[None]):
    TITLE = "dualnorm"
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "interrupt", "Quit", show=False, priority=True)
    ]
    ENABLE_COMMAND_PALETTE = False  # its footer entry took the room of q and ?; ? lists every key
    EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a program ended by SIGINT

    def __init__(
        self,
        experiments: dict[str, Any] | None = None,
        *,
        experiment: str | None = None,
        backend: str | None = None,
        backends: Sequence[str] | None = None,
        steps: int | None = None,
        lr: float | None = None,
        seed: int = 0,
        start_paused: bool = False,
        export_dir: str | None = None,
        variants: Sequence[str] | None = None,
        runs: Sequence[Any] | None = None,
        runs_root: str | None = None,
        load_error: tuple[str, str] | None = None,
        compare: tuple[Any, float] | None = None,
    ) -> None:
        super().__init__()
        self.initial_compare = compare
        from dualnorm.tracking import DEFAULT_RUNS_DIR

        self.initial_runs = list(runs or [])
        self.runs_root = runs_root or DEFAULT_RUNS_DIR
        self.load_error = load_error
        self.experiments = dict(experiments) if experiments is not None else load_experiments()
        self.backends = list(backends) if backends is not None else available_backends()
        if backend is not None and backend not in self.backends:
            raise ValueError(
                f"backend {backend!r} is not installed; choose one of: {', '.join(self.backends)}"
            )
        self.backend = backend or active_backend(self.backends)
        if self.backend not in self.backends:
            self.backends.insert(0, self.backend)
        if experiment is not None and experiment not in self.experiments:
            raise ValueError(
                f"unknown experiment {experiment!r}; choose one of: {', '.join(self.experiments) or '(none)'}"
            )
        self.initial_experiment = experiment
        self.default_experiment = experiment or default_experiment_name()
        self.steps = steps
        self.lr = lr
        self.seed = seed
        self.start_paused = start_paused
        self.export_dir = export_dir
        self.variants = tuple(variants) if variants else None
        self._runners: list[TrainingRunner | ProcessTrainingRunner] = []

    def on_mount(self) -> None:
        self.push_screen(StartScreen())
        if self.initial_experiment:
            self.open_run(self.initial_experiment)
        if self.initial_runs:
            self.open_runs(self.initial_runs)
        if self.load_error:
            self.push_screen(ErrorScreen(*self.load_error))
        if self.initial_compare:
            from tui.compare import CompareScreen

            job, tol = self.initial_compare
            self.push_screen(CompareScreen(job, tol, paused=self.start_paused))

    def open_runs(self, paths: Sequence[Any], *, paused: bool = False) -> ViewScreen | None:
        """Show run directories / JSON Lines files, overlaid, followed while they are written."""
        from dualnorm.errors import DualnormError

        try:
            screen = ViewScreen(list(paths), paused=paused)
        except (DualnormError, OSError) as exc:
            self.notify(str(exc), title="cannot open run", severity="error", timeout=10)
            return None
        self.push_screen(screen)
        return screen

    # -- runs ------------------------------------------------------------------------------------

    def config_for(self, name: str) -> Any:
        exp = self.experiments[name]
        variants = self.variants if self.variants and set(self.variants) <= set(exp.variants) else None
        return make_config(
            backend=self.backend, steps=self.steps, seed=self.seed, lr=self.lr, variants=variants
        )

    def open_run(self, name: str) -> None:
        exp = self.experiments[name]
        self.push_screen(RunScreen(exp, self.config_for(name), paused=self.start_paused))

    def restart_run(self, screen: RunScreen, config: Any) -> None:
        """A fresh run of the screen's experiment with ``config``, running (a restart while paused
        would otherwise wait at step 0 with an empty plot), looked at the same way (log-y, ...).

        The backend is the session's (the start screen shows it and the next demo uses it); lr and
        seed changed with ``c`` stay with this demo's runs and are shown in its status line.
        """
        screen.runner.stop()
        self.backend = config.backend or self.backend
        fresh = RunScreen(screen.experiment, config, paused=False)
        fresh.carry_view_from(screen)
        self.switch_screen(fresh)

    def pop_to_start(self) -> None:
        if isinstance(self.screen, RunScreen):
            self.pop_screen()
        if not isinstance(self.screen, StartScreen):
            self.push_screen(StartScreen())

    def cycle_backend(self) -> str:
        if len(self.backends) > 1:
            i = self.backends.index(self.backend) if self.backend in self.backends else -1
            self.backend = self.backends[(i + 1) % len(self.backends)]
        return self.backend

    def register_runner(self, runner: TrainingRunner | ProcessTrainingRunner) -> None:
        self._runners = [r for r in self._runners if r.alive]
        self._runners.append(runner)

    def stop_all(self) -> None:
        for runner in self._runners:
            runner.stop()
        self._runners = [r for r in self._runners if r.alive]

    # -- what the screens ask for (tui/messages.py) -------------------------------------------------

    def on_open_experiment(self, message: OpenExperiment) -> None:
        self.open_run(message.name)

    def on_open_runs(self, message: OpenRuns) -> None:
        self.open_runs(message.paths)

    def on_restart_run(self, message: RestartRun) -> None:
        if message.screen is self.screen:
            self.restart_run(message.screen, message.config)

    def on_back_to_start(self, message: BackToStart) -> None:
        if isinstance(self.screen, (RunScreen, ViewScreen)):
            self.pop_to_start()

    def on_set_backend(self, message: SetBackend) -> None:
        self.backend = message.backend

    def on_runner_started(self, message: RunnerStarted) -> None:
        self.register_runner(message.runner)

    @property
    def run_screen(self) -> RunScreen | None:
        return self.screen if isinstance(self.screen, RunScreen) else None

    async def action_quit(self) -> None:
        self.stop_all()
        self.exit()

    async def action_interrupt(self) -> None:
        self.stop_all()
        self.exit(return_code=self.EXIT_INTERRUPTED)

    def on_unmount(self) -> None:
        self.stop_all()


def build_parser() -> argparse.ArgumentParser:
    from dualnorm.cli import positive_float, positive_int  # the checks `dualnorm run` makes

    parser = argparse.ArgumentParser(
        prog="dualnorm tui", description="Watch normalization layers train, live."
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="run directories or JSON Lines files to show (followed live)"
    )
    parser.add_argument(
        "--experiment",
        "-x",
        default=None,
        help="open this experiment directly: a demo's name, path/to/file.py:ClassName, or an entry point",
    )
    parser.add_argument(
        "--runs-dir", default=None, help="where the start screen looks for runs (./dualnorm-runs)"
    )
    parser.add_argument("--backend", "-b", default=None, help="array backend: numpy or mlx")
    parser.add_argument("--device", default=None, help="MLX device: gpu or cpu (default: the GPU if any)")
    parser.add_argument("--steps", type=positive_int, default=None, help="optimizer steps per variant")
    parser.add_argument("--lr", type=positive_float, default=None, help="learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paused", action="store_true", help="start paused (step with n)")
    parser.add_argument(
        "--export-dir", default=None, help="where `e` writes exports (default ./dualnorm-runs)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dualnorm.backends import use_device_everywhere
    from dualnorm.errors import BackendError

    try:  # also sets DUALNORM_DEVICE for the runner's child
        use_device_everywhere(args.backend, args.device)
    except BackendError as exc:
        print(f"dualnorm tui: {exc}")
        return 2
    experiments = load_experiments()
    load_error = None
    if args.experiment is not None and args.experiment not in experiments:
        from dualnorm.experiments.loading import ExperimentLoadError, is_file_spec, load_experiment

        try:
            exp = load_experiment(args.experiment)
            experiments[exp.name] = exp
            args.experiment = exp.name
        except ExperimentLoadError as exc:
            if not (exc.details or is_file_spec(args.experiment)):
                print(f"dualnorm tui: {exc}")
                return 2
            load_error = (str(exc), exc.details or str(exc))  # shown in the UI, which stays up
            args.experiment = None
    problem = check_paths(args.paths, args.export_dir)
    if problem:
        print(f"dualnorm tui: {problem}")
        return 2
    try:
        app = DualnormApp(
            experiments,
            runs=args.paths,
            runs_root=args.runs_dir,
            load_error=load_error,
            experiment=args.experiment,
            backend=args.backend,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            start_paused=args.paused,
            export_dir=args.export_dir,
        )
    except ValueError as exc:
        print(f"dualnorm tui: {exc}")
        return 2
    try:
        app.run()
    finally:
        app.stop_all()
    return app.return_code or 0


def run_compare(job: Any, *, tol: float) -> int | None:
    """``dualnorm compare`` without ``--no-tui``: the job's runs live, with the comparison panel.

    None when the user left with ``q``/``esc`` (the caller prints the tables and exits with the
    comparison's code); 130 after Ctrl-C."""
    app = DualnormApp(compare=(job, tol))
    try:
        app.run()
    finally:
        app.stop_all()
    return app.return_code or None


def check_paths(paths: Sequence[str], export_dir: str | None) -> str | None:
    """Every run to open is a run, and the export directory is writable: one line naming the path, or None."""
    from dualnorm.cli import check_run_paths
    from dualnorm.errors import DualnormError
    from dualnorm.tracking import check_output_dir

    problem = check_run_paths(paths)
    if problem:
        return problem
    try:
        if export_dir:
            check_output_dir(export_dir)
    except DualnormError as exc:
        return str(exc)
    return None
