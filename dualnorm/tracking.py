"""Track your own training: a run directory written record by record, read back live.

>>> import tempfile, os, dualnorm
>>> d = os.path.join(tempfile.mkdtemp(), "demo")
>>> with dualnorm.track(name="demo", dir=d) as run:
...     for step in range(1, 4):
...         _ = run.log(step, loss=1.0 / step, lr=0.1)
>>> records, meta = dualnorm.read_run(d)
>>> [r.step for r in records], meta["status"]
([1, 2, 3], 'finished')

``track(model)`` also takes a ``torch.nn.Module`` or an ``mlx.nn.Module``: the same run
directory and records, with layers named by module path (see :mod:`dualnorm.watch`).

A run directory holds

* ``records.jsonl``: one :class:`~dualnorm.records.StepRecord` JSON object per line, appended
  and flushed record by record (a crash leaves every complete line readable);
* ``meta.json``: name, experiment, variants, backend and device, versions, the model's
  repr, the command line, start time, pid and host, and the status: "running", "finished",
  "failed" or "interrupted" (written atomically). A run whose meta says "running" but whose
  writer process is gone (same host) reads as "interrupted";
* ``lock``: held while a writer is open, so a second writer into the same directory is
  refused instead of overwriting anything.

Reading (:class:`RunReader`, :func:`read_run`) skips a torn last line with a warning and stops
at a corrupt line in the middle with a :class:`RunFileError` naming the file and line; the
records before it stay available (``error.records``). The same reader reads a folder the
terminal UI's export (``e``) wrote (``records.jsonl`` and ``run.json``), its header-less
``records.jsonl`` alone, and the files ``dualnorm.save_run`` and ``dualnorm run --json`` write.
A path that is none of these raises :class:`RunDirError` (no such path, a folder that is not a
run) or :class:`RunFileError` (a file whose first line is not a record, a corrupt ``meta.json``)
when the reader is opened, before any record is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from dualnorm._paths import check_output_dir, check_output_path
from dualnorm.checkpoint import CheckpointError, atomic_write
from dualnorm.errors import DualnormError, InputError, OutputPathError
from dualnorm.records import StepRecord

__all__ = [
    "DEFAULT_RUNS_DIR",
    "OutputPathError",
    "Run",
    "RunData",
    "RunDirError",
    "RunFileError",
    "RunReader",
    "RunWriter",
    "check_output_dir",
    "check_output_file",
    "list_runs",
    "read_meta",
    "read_run",
    "track",
]

DEFAULT_RUNS_DIR = "dualnorm-runs"
"""Where runs are written and listed unless told otherwise (relative to the working directory)."""
RECORDS, META, LOCK = "records.jsonl", "meta.json", "lock"
EXPORT_META = "run.json"  # what the terminal UI's export writes beside records.jsonl
META_FORMAT, META_VERSION = "dualnorm-run-dir", 1
STATUSES = ("running", "finished", "failed", "interrupted")


class RunDirError(DualnormError, ValueError):
    """A path is not a run, or a run directory is already taken by another writer."""


class RunFileError(CheckpointError):
    """A file of a run is damaged or is not a run file: a corrupt line in a records file, or an
    unreadable ``meta.json``. ``path`` names the file, ``line`` the line (None for ``meta.json``),
    ``records`` holds the records read before the bad line.

    Also a :class:`~dualnorm.checkpoint.CheckpointError` (what code reading saved files catches).
    """

    def __init__(
        self, path: Path, line: int | None, problem: str, records: list[StepRecord] | None = None
    ) -> None:
        super().__init__(path, problem if line is None else f"line {line}: {problem}")
        self.line = line
        self.records = [] if records is None else records


# --------------------------------------------------------------------------- output paths


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Make sure a file can be written at ``path`` (its directory is created). Raises OutputPathError."""
    return check_output_path(path, "output file", create_parent=True, atomic=False)


# --------------------------------------------------------------------------- meta


def _versions() -> dict[str, str]:
    from dualnorm import __version__

    out = {"dualnorm": __version__, "python": platform.python_version()}
    for name in ("numpy", "mlx"):
        mod = sys.modules.get(name)
        if mod is None and name == "numpy":
            import numpy as mod
        if name == "mlx":
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                out["mlx"] = version("mlx")
            continue
        out[name] = str(getattr(mod, "__version__", "?"))
    return out


def _device(backend: str) -> str:
    if backend == "mlx":
        with contextlib.suppress(Exception):
            import mlx.core as mx

            return str(mx.default_device())
    return f"cpu ({platform.machine() or '?'})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def effective_status(meta: dict[str, Any]) -> str:
    """The meta's status, with "running" turned into "interrupted" when its writer (here) is gone."""
    status = str(meta.get("status", "interrupted"))
    if status == "running" and meta.get("host") == socket.gethostname():
        pid = meta.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return "interrupted"
    return status


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta.json`` of a run directory, with ``status`` made effective (see :func:`effective_status`)."""
    path = Path(os.fspath(run_dir)) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path.parent}: not a run directory: it has no {META}") from None
    except (OSError, ValueError) as exc:
        raise RunFileError(path, None, f"unreadable run metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise RunFileError(path, None, f"run metadata is a JSON {type(meta).__name__}, expected an object")
    meta["status"] = effective_status(meta)
    return meta


def read_export_meta(export_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` of a UI export, as run metadata: ``status`` is "exported"."""
    path = Path(os.fspath(export_dir)) / EXPORT_META
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFileError(path, None, f"unreadable export metadata ({exc})") from None
    if not isinstance(data, dict):
        raise RunFileError(path, None, f"export metadata is a JSON {type(data).__name__}, expected an object")
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    return {
        **data,
        "name": path.parent.name,
        "experiment": data.get("experiment", path.parent.name),
        "backend": config.get("backend") or "?",
        "config": config,
        "status": "exported",
    }


# --------------------------------------------------------------------------- writing


class RunWriter:
    """A run directory opened for writing: lock, ``meta.json`` and an append-only ``records.jsonl``.

    Refuses (:class:`RunDirError`) a directory that already holds a run or another writer's
    lock, so nothing is ever overwritten.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str,
        experiment: str | None = None,
        variants: list[str] | tuple[str, ...] = (),
        backend: str | None = None,
        model: Any = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.dir = check_output_dir(directory)
        self.lock_path = self.dir / LOCK
        try:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise RunDirError(self._taken_message()) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        if (self.dir / RECORDS).exists() or (self.dir / META).exists():
            self.lock_path.unlink()
            raise RunDirError(
                f"{self.dir}: already holds a run (records.jsonl / meta.json); nothing was overwritten. "
                "Choose a new directory (another name, or none for a fresh one)"
            )
        if backend is None:
            from dualnorm.backends import get_backend

            backend = get_backend().name
        self.meta: dict[str, Any] = {
            "format": META_FORMAT,
            "format_version": META_VERSION,
            "name": name,
            "experiment": experiment or name,
            "variants": list(variants),
            "backend": backend,
            "device": _device(backend),
            "versions": _versions(),
            "model": None if model is None else repr(model),
            "argv": list(sys.argv),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "started_unix": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "status": "running",
            "records": 0,
            "last_step": 0,
            "config": config,
        }
        self._write_meta()
        self.fh = open(self.dir / RECORDS, "a", encoding="utf-8")  # noqa: SIM115 (closed in finish)
        self.closed = False

    def _taken_message(self) -> str:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(self.lock_path.read_text())
            holder = f" by pid {info.get('pid')} on {info.get('host')}"
        return (
            f"{self.dir}: another writer holds this run directory (lock file {self.lock_path.name}{holder}); "
            "nothing was overwritten. Track into another directory; if no writer is running, "
            f"delete {self.lock_path}"
        )

    def _write_meta(self) -> None:
        atomic_write(self.dir / META, (json.dumps(self.meta, indent=1, default=str) + "\n").encode())

    def write(self, record: StepRecord) -> None:
        """Append ``record`` as one JSON line and flush it."""
        self.fh.write(record.to_json() + "\n")
        self.fh.flush()
        self.meta["records"] += 1
        self.meta["last_step"] = record.step
        if record.variant not in self.meta["variants"]:
            self.meta["variants"].append(record.variant)

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """Close the records file and write the final status ("finished", "failed" or "interrupted") to ``meta.json``."""
        if self.closed:
            return
        if status not in STATUSES:
            raise InputError(f"run status must be one of {', '.join(STATUSES)}, got {status!r}")
        self.closed = True
        self.fh.close()
        self.meta["status"] = status
        self.meta["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if error:
            self.meta["error"] = error
        try:
            self._write_meta()
        finally:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()


def default_run_dir(name: str, root: str | os.PathLike[str] = DEFAULT_RUNS_DIR) -> Path:
    """``root/<name>-<YYYYmmdd-HHMMSS>`` (with a numeric suffix if that exists)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "run"
    base = Path(os.fspath(root)) / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


# --------------------------------------------------------------------------- the tracker


class _Capture:
    """Keeps a reference to each child's latest output and grad_output (no copies, no host work)."""

    def __init__(self, model: Any) -> None:
        from dualnorm.training import _children

        self.names, self.children = _children(model)
        self.outputs: list[Any] = [None] * len(self.children)
        self.grads: list[Any] = [None] * len(self.children)
        for i, child in enumerate(self.children):
            self._wrap(i, child)

    def _wrap(self, i: int, child: Any) -> None:
        forward, backward = child.forward, child.backward

        def fwd(x: Any) -> Any:
            out = forward(x)
            self.outputs[i] = out
            return out

        def bwd(g: Any) -> Any:
            self.grads[i] = g
            return backward(g)

        object.__setattr__(child, "forward", fwd)
        object.__setattr__(child, "backward", bwd)

    def release(self) -> None:
        for child in self.children:
            child.__dict__.pop("forward", None)
            child.__dict__.pop("backward", None)
        self.outputs = [None] * len(self.children)
        self.grads = [None] * len(self.children)


class Run:
    """A tracked run; make one with :func:`track`. ``log`` writes one record, ``finish`` ends the run."""

    def __init__(
        self,
        model: Any = None,
        *,
        name: str | None = None,
        every: int = 10,
        dir: str | os.PathLike[str] | None = None,
        experiment: str | None = None,
        variant: str = "main",
        root: str | os.PathLike[str] = DEFAULT_RUNS_DIR,
        bins: int | None = None,
    ) -> None:
        from dualnorm.training import HIST_BINS
        from dualnorm.watch import framework_of, watcher_for

        framework = None if model is None else framework_of(model)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InputError(
                f"track(every=...) must be a positive integer (record layers every K steps), got {every!r}"
            )
        name = name or Path(sys.argv[0] or "run").stem or "run"
        self.model = model
        self.every = every
        self.variant = variant
        self.bins = HIST_BINS if bins is None else bins
        # a torch.nn / mlx.nn model is watched by its framework's adapter (dualnorm.watch)
        self._watcher = (
            watcher_for(model, self.bins) if model is not None and framework != "dualnorm" else None
        )
        self._layers_pending = False  # a recording step found nothing captured: record at the next log
        self.backend = model.backend if framework == "dualnorm" else None
        backend_name = self._watcher.backend_name if self._watcher else self.backend and self.backend.name
        directory = Path(os.fspath(dir)) if dir is not None else default_run_dir(name, root)
        self.writer = RunWriter(
            directory,
            name=name,
            experiment=experiment,
            variants=[variant],
            backend=backend_name,
            model=model,
            config={"every": every},
        )
        self.dir = self.writer.dir
        self.backend_name = self.writer.meta["backend"]
        self.device = _record_device(self.backend, self.backend_name)
        self.epoch = 0  # the epoch the next record is in: the last one given to log()
        self._capture = _Capture(model) if framework == "dualnorm" else None
        if self._watcher is not None:
            self.writer.meta["device"] = self._watcher.device
            self.writer._write_meta()
            # records name the device kind as the experiments do ("cpu", "gpu")
            accel = any(k in str(self._watcher.device).lower() for k in ("gpu", "cuda", "mps"))
            self.device = "gpu" if accel else "cpu"
            self._watcher.arm()  # the first log records layers
        self._start = time.perf_counter()
        self._logged = 0
        self._last_step = 0

    def log(
        self,
        step: int,
        loss: float | None = None,
        *,
        accuracy: float | None = None,
        epoch: int | None = None,
        layers: bool | None = None,
        grads: Any = None,
        **scalars: float,
    ) -> StepRecord:
        """Write one record for ``step``; per-layer statistics on step 1 and every ``every`` steps.

        ``epoch``: the epoch this step is in; kept for the following calls until another is
        given (0 until the first). ``layers=True/False`` forces or skips the layer statistics
        for this call. Extra keyword scalars go to ``record.extra["scalars"]``. ``grads``: for an
        mlx.nn model, the gradient tree of this step (from ``nn.value_and_grad``), read at
        recording steps.
        """
        if self.writer.closed:
            raise InputError(
                "run.log() after run.finish(): this run is closed; start a new one with dualnorm.track()"
            )
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InputError(f"run.log: step must be a non-negative integer, got {step!r}")
        if epoch is not None:
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise InputError(f"run.log: epoch must be a non-negative integer, got {epoch!r}")
            self.epoch = epoch
        values = {"loss": loss, "accuracy": accuracy, **scalars}
        clean: dict[str, float | None] = {}
        for key, value in values.items():
            if value is None:
                clean[key] = None
                continue
            try:
                clean[key] = float(value.item() if hasattr(value, "item") else value)
            except (TypeError, ValueError):
                raise InputError(
                    f"run.log: {key} must be a number (a float or a 0-d array), got {type(value).__name__}",
                    type_error=True,
                ) from None
        want_layers = layers if layers is not None else (self._logged == 0 or step % self.every == 0)
        extra: dict[str, Any] = {}
        if self._watcher is not None:
            stats = self._watched_stats(step, want_layers or self._layers_pending, grads, extra)
        else:
            stats = self._layer_stats() if want_layers and self._capture is not None else []
        if scalars:
            extra["scalars"] = {k: clean[k] for k in scalars}
        if loss is None:
            extra["no_loss"] = True
        record = StepRecord(
            experiment=self.writer.meta["experiment"],
            variant=self.variant,
            step=step,
            epoch=self.epoch,
            loss=float("nan") if clean["loss"] is None else clean["loss"],
            backend=self.backend_name,
            accuracy=clean["accuracy"],
            layers=stats,
            elapsed_s=time.perf_counter() - self._start,
            extra=extra,
            device=self.device,
        )
        self.writer.write(record)
        self._logged += 1
        self._last_step = step
        return record

    def _layer_stats(self) -> list[Any]:
        from dualnorm.training import record_layers

        cap = self._capture
        assert cap is not None
        if any(out is None for out in cap.outputs):
            return []  # no forward yet
        grads = cap.grads if all(g is not None for g in cap.grads) else None
        import numpy as np

        with np.errstate(all="ignore"):
            return record_layers(self.backend, cap.names, cap.children, cap.outputs, grads, self.bins)

    def _watched_stats(self, step: int, want: bool, grads: Any, extra: dict[str, Any]) -> list[Any]:
        """A torch.nn / mlx.nn model's layer statistics, and the arming for the next step.

        The watcher captures only while armed: from the log before a recording step to that
        step's log. The next step is guessed from the stride between logs (steps logged one
        by one: step + 1); when the guess misses, the record is taken at the following log.
        """
        watcher = self._watcher
        assert watcher is not None
        stats: list[Any] = []
        if want:
            found = watcher.layer_stats(grads)
            self._layers_pending = found is None
            if found is not None:
                stats = found
                extra.update(watcher.extra())
        stride = max(1, step - self._last_step) if self._logged else 1
        if self._layers_pending or (step + stride) % self.every == 0:
            watcher.arm()
        else:
            watcher.disarm()
        return stats

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """Close the run with a final status ("finished", "failed" or "interrupted")."""
        if self._capture is not None:
            self._capture.release()
        if self._watcher is not None:
            self._watcher.disarm()
        self.writer.finish(status, error)

    @property
    def status(self) -> str:
        """The run's status: "running" until ``finish``, then the final one."""
        return "running" if not self.writer.closed else str(self.writer.meta["status"])

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}")

    def __del__(self) -> None:
        # A run dropped without finish() (e.g. the script ended) is closed as interrupted.
        with contextlib.suppress(Exception):
            if not self.writer.closed:
                self.finish("interrupted")


def _record_device(backend: Any, backend_name: str) -> str:
    """The device a record names ("cpu", "gpu"), as the experiments' records do."""
    if backend is None:
        from dualnorm.backends import get_backend

        with contextlib.suppress(Exception):
            backend = get_backend(backend_name)
    return str(getattr(backend, "device", "") or "")


def track(
    model: Any = None,
    *,
    name: str | None = None,
    every: int = 10,
    dir: str | os.PathLike[str] | None = None,
    experiment: str | None = None,
    variant: str = "main",
    root: str | os.PathLike[str] = DEFAULT_RUNS_DIR,
) -> Run:
    """Start tracking a training run into a run directory (see the module doc).

    ``model``: a dualnorm model, a ``torch.nn.Module`` or an ``mlx.nn.Module`` whose
    per-layer statistics (the same as the built-in experiments record) are taken from its
    latest forward and backward every ``every`` steps; ``None`` for a plain scalar logger.
    PyTorch models are hooked for the recording steps only; for mlx.nn models pass the
    step's gradient tree, ``run.log(step, loss=..., grads=grads)`` (see :mod:`dualnorm.watch`).
    ``dir``: the run directory (default ``root/<name>-<time>``). Use as a context manager,
    or call ``run.finish()``.
    """
    return Run(model, name=name, every=every, dir=dir, experiment=experiment, variant=variant, root=root)


# --------------------------------------------------------------------------- reading


def _records_path(path: Path) -> tuple[Path, Path | None, str]:
    """(records file, folder or None, kind) for a run directory, a UI export or a records file.

    kind: "run" (records.jsonl + meta.json), "export" (records.jsonl + run.json) or "file".
    """
    if path.is_dir():
        rec = path / RECORDS
        has_meta, has_export = (path / META).exists(), (path / EXPORT_META).exists()
        if not rec.exists():
            if has_meta:
                raise RunDirError(
                    f"{path}: a run directory without its {RECORDS}: the run wrote no records, "
                    "or the file was moved or deleted"
                )
            raise RunDirError(
                f"{path}: not a run: expected a run directory holding {RECORDS} (and {META}), "
                "or a .jsonl records file"
            )
        if has_meta:
            return rec, path, "run"
        if has_export:
            return rec, path, "export"
        raise RunDirError(
            f"{path}: holds {RECORDS} but no {META} (run metadata) or {EXPORT_META} (an export); "
            f"to see the records alone, open the file {rec}"
        )
    if not path.exists():
        raise RunDirError(
            f"{path}: no such file or directory; expected a run directory or a .jsonl records file"
        )
    if path.name == RECORDS and (path.parent / META).exists():
        return path, path.parent, "run"
    return path, None, "file"


_NUMBER = (int, float)


def _check_types(record: StepRecord) -> None:
    """A record read from a file has the types the UI computes with (else a TypeError naming the field)."""

    def need(name: str, value: Any, types: tuple[type, ...], optional: bool = False) -> None:
        if (value is None and optional) or (isinstance(value, types) and not isinstance(value, bool)):
            return
        raise TypeError(
            f"{name} is {type(value).__name__} {value!r:.40}, expected {'/'.join(t.__name__ for t in types)}"
        )

    for name in ("experiment", "variant", "backend", "status", "message"):
        need(name, getattr(record, name), (str,))
    need("step", record.step, (int,))
    need("epoch", record.epoch, (int,))
    need("loss", record.loss, _NUMBER)
    need("accuracy", record.accuracy, _NUMBER, optional=True)
    need("elapsed_s", record.elapsed_s, _NUMBER)
    need("extra", record.extra, (dict,))
    extra = record.extra  # the keys the UI reads
    for key, types in (("probe", (dict,)), ("scale_index", (int,)), ("scale", _NUMBER), ("losses", (list,))):
        if key in extra:
            need(f"extra[{key!r}]", extra[key], types, optional=True)
    for v in extra.get("losses") or ():
        need("extra['losses']", v, _NUMBER)
    for layer in record.layers:
        need("layer name", layer.name, (str,))
        need("layer kind", layer.kind, (str,))
        for field in ("act_mean", "act_std", "act_min", "act_max"):
            need(field, getattr(layer, field), _NUMBER)
        for field in ("saturated_frac", "dead_frac", "grad_norm", "param_grad_norm", "weight_norm",
                      "gamma_mean", "beta_mean", "running_mean_mean", "running_var_mean"):  # fmt: skip
            need(field, getattr(layer, field), _NUMBER, optional=True)
        for field in ("hist_counts", "hist_edges"):
            values = getattr(layer, field)
            need(field, values, (list,))
            for v in values:
                need(field, v, _NUMBER)


MAX_LINE_BYTES = 1 << 24  # a record line longer than this is corrupt, not a record still being written


class RunReader:
    """Incremental reader of a records file: ``poll()`` returns the records appended since the last call.

    Only the new bytes are read (the file size is checked first). An incomplete last line is
    kept until its newline arrives; :meth:`close_torn` reports one left at the end. A corrupt
    complete line sets ``error`` (a :class:`RunFileError`) and stops reading.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.fspath(path)).expanduser()
        self.records_path, self.run_dir, self.kind = _records_path(self.path)
        self.offset = 0
        self.line = 0
        self._tail = b""
        self.error: RunFileError | None = None
        self.count = 0
        self._checked_first = False
        # what is not a run fails here, in one error, before a viewer shows an empty screen
        self.meta()
        self._check_first_line()

    def meta(self) -> dict[str, Any] | None:
        """The run's metadata (read again on each call); None for a bare records file."""
        if self.kind == "run":
            return read_meta(self.run_dir)
        if self.kind == "export":
            return read_export_meta(self.run_dir)
        return None

    FIRST_LINE_BYTES = 1 << 20  # far more than a step record's line

    def _check_first_line(self) -> None:
        """A records file's first line is a step record or a save_run header; else RunFileError.

        An empty file, or a first line still being written, passes: a live run may not have
        written it yet.
        """
        try:
            with open(self.records_path, "rb") as fh:
                head = fh.read(self.FIRST_LINE_BYTES)
        except OSError as exc:
            raise RunFileError(self.records_path, None, f"cannot be read ({exc.strerror or exc})") from None
        if not head.strip():
            return
        first, newline, _ = head.partition(b"\n")
        try:
            self._parse(first)
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            if not newline and first.lstrip().startswith(b"{"):
                return  # a record still being written
            if self.records_path.suffix == ".py":
                problem = "not a step record: this is Python source, not a run's records (JSON Lines)"
            else:
                problem = f"not a step record ({exc}); this is not a run's records file"
            raise RunFileError(self.records_path, 1, problem) from None
        finally:
            self._checked_first = False

    def poll(self, max_bytes: int = 1 << 26) -> list[StepRecord]:
        """The complete records appended since the last call (reading at most ``max_bytes``)."""
        if self.error is not None:
            return []
        try:
            size = os.path.getsize(self.records_path)
        except OSError:
            return []
        if size <= self.offset:
            return []
        with open(self.records_path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(min(size - self.offset, max_bytes))
        self.offset += len(data)
        data = self._tail + data
        cut = data.rfind(b"\n")
        self._tail = data[cut + 1 :]
        out: list[StepRecord] = []
        if cut < 0:
            self._check_tail(out)
            return []
        for raw in data[:cut].split(b"\n"):
            self.line += 1
            if not raw.strip():
                continue
            try:
                record = self._parse(raw)
            except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
                self.error = RunFileError(self.records_path, self.line, f"not a step record ({exc})", out)
                return out
            if record is not None:
                out.append(record)
        self.count += len(out)
        self._check_tail(out)
        return out

    def _check_tail(self, out: list[StepRecord]) -> None:
        if len(self._tail) > MAX_LINE_BYTES:  # not a record still being written: never buffer it all
            self.error = RunFileError(
                self.records_path, self.line + 1, f"longer than {MAX_LINE_BYTES} bytes without a newline", out
            )
            self._tail = b""

    def _parse(self, raw: bytes) -> StepRecord | None:
        item = json.loads(raw.decode("utf-8"))
        if not isinstance(item, dict):
            raise ValueError(f"a JSON {type(item).__name__}, expected an object")
        first = not self._checked_first
        self._checked_first = True
        if first and "format" in item and "step" not in item:
            return None  # a save_run header line
        layers = item.get("layers", [])
        if not isinstance(layers, list):
            raise TypeError(f"layers is a {type(layers).__name__}, expected a list")
        record = StepRecord.from_dict(item)
        _check_types(record)
        return record

    @property
    def at_end(self) -> bool:
        """Everything in the file so far has been read (or reading stopped at an error)."""
        if self.error is not None:
            return True
        try:
            return os.path.getsize(self.records_path) <= self.offset
        except OSError:
            return True

    @property
    def torn(self) -> bool:
        """The file ends in an incomplete line (a writer mid-record, or one that died)."""
        return bool(self._tail.strip())

    def close_torn(self) -> str | None:
        """When the file ends in an incomplete line: a warning text (and the line is dropped)."""
        if not self.torn:
            return None
        self._tail = b""
        return (
            f"{self.records_path}: line {self.line + 1} is cut short (the writer stopped mid-line); skipped"
        )


class RunData(NamedTuple):
    """What :func:`read_run` returns; a tuple, so ``records, meta = read_run(path)`` works.

    ``records``: every :class:`~dualnorm.records.StepRecord`, in file order.
    ``meta``: the run directory's ``meta.json`` as a dict (``name``, ``experiment``,
    ``variants``, ``backend``, ``device``, ``status``, ``config``, ...; ``status`` "exported"
    for a folder the UI's export wrote), or None for a bare records file.
    """

    records: list[StepRecord]
    meta: dict[str, Any] | None


def read_run(path: str | os.PathLike[str]) -> RunData:
    """All records of a run directory, UI export or records file, and its meta (see :class:`RunData`).

    A torn last line is skipped with a ``UserWarning``. A path that is not a run raises
    :class:`RunDirError`; a corrupt line or ``meta.json`` raises :class:`RunFileError`
    (``error.records`` holds the records before the bad line).
    """
    reader = RunReader(path)
    records: list[StepRecord] = []
    while True:
        new = reader.poll()
        records.extend(new)
        if reader.error is not None:
            reader.error.records = records
            raise reader.error
        if not new:
            break
    message = reader.close_torn()
    if message:
        warnings.warn(message, stacklevel=2)
    return RunData(records, reader.meta())


def _last_step(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = fh.read().split(b"\n")
    except OSError:
        return 0
    for raw in reversed(lines):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return int(json.loads(raw).get("step", 0))
    return 0


def list_runs(root: str | os.PathLike[str] = DEFAULT_RUNS_DIR, limit: int = 50) -> list[dict[str, Any]]:
    """The run directories under ``root``, newest first: meta plus ``path`` and ``steps``."""
    root = Path(os.fspath(root))
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if not (child / META).exists():
            continue
        try:
            meta = read_meta(child)
        except (RunDirError, CheckpointError):
            continue
        meta["path"] = str(child)
        meta["steps"] = meta.get("last_step") or 0
        if meta["status"] != "finished":
            meta["steps"] = _last_step(child / RECORDS) or meta["steps"]
        found.append(meta)
    found.sort(key=lambda m: m.get("started_unix") or 0, reverse=True)
    return found[:limit]


def iter_records(path: str | os.PathLike[str]) -> Iterator[StepRecord]:
    """Every record of a run (see :func:`read_run`)."""
    yield from read_run(path)[0]
