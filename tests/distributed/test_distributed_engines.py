"""Two real processes per engine: MPI (mpiexec + mpi4py, NumPy backend) and MLX (mlx.launch, ring backend).

Each test launches ``dist_worker.py`` on 2 ranks through the engine's own launcher with a
hard timeout, then compares what the ranks wrote with single-process BatchNorm on the
full global batch. The failure tests check that a dead, stalled or unreachable rank ends
the run with a clear error in bounded time. Every test skips with the reason when its
engine is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dist_cases as cases
import numpy as np
import pytest

import dualnorm
from dualnorm.distributed import WATCHDOG_EXIT_CODE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "dist_worker.py"
LAUNCH_TIMEOUT = 120  # hard limit of every launched run (seconds): a hang is killed here
BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _mpi_skip_reason() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install "mpi4py>=4" mpich)'
    if _tool("mpiexec") is None:
        return "no mpiexec found next to the interpreter or on PATH (pip install mpich)"
    return None


def _mlx_skip_reason() -> str | None:
    if importlib.util.find_spec("mlx") is None:
        return 'MLX is not installed (pip install "dualnorm[mlx]")'
    if _tool("mlx.launch") is None:
        return "mlx.launch was not found next to the interpreter or on PATH"
    try:
        import mlx.core as mx

        if not mx.distributed.is_available():
            return "this MLX build has no distributed backend"
    except Exception as exc:
        return f"MLX does not work here: {exc}"
    return None


ENGINES = [
    pytest.param("mpi", marks=pytest.mark.skipif(bool(_mpi_skip_reason()), reason=str(_mpi_skip_reason()))),
    pytest.param(
        "mlx",
        marks=[pytest.mark.mlx, pytest.mark.skipif(bool(_mlx_skip_reason()), reason=str(_mlx_skip_reason()))],
    ),
]


def _free_port_pair() -> int:
    """A port p such that p and p + 1 are free on 127.0.0.1 (mlx.launch's ring uses one per rank)."""
    rng = np.random.default_rng()
    for _ in range(200):
        port = int(rng.integers(20000, 60000))
        sockets = []
        try:
            for p in (port, port + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free pair of TCP ports found")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("DUALNORM_DIST_TIMEOUT", "20")
    env.setdefault("DUALNORM_DIST_CONNECT_TIMEOUT", "20")
    env.pop("DUALNORM_BACKEND", None)
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = LAUNCH_TIMEOUT) -> tuple[int, str, float]:
    """Run a launcher in its own session; on timeout kill that whole session (never a hang)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{cmd[0]} did not finish within {timeout} s (killed). Output:\n{out}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, time.monotonic() - start


def launch(engine: str, scenario: str, outdir: Path, **env: str) -> tuple[int, str, float]:
    worker = [sys.executable, str(WORKER), engine, scenario, str(outdir)]
    if engine == "mpi":
        cmd = [str(_tool("mpiexec")), "-n", "2", *worker]
    else:
        cmd = [str(_tool("mlx.launch")), "-n", "2", "-p", str(_free_port_pair()), "--", *worker]
    return _run(cmd, _env(**env))


def load_ranks(engine: str, scenario: str, tmp_path: Path) -> list[dict[str, np.ndarray]]:
    code, out, _ = launch(engine, scenario, tmp_path)
    # mlx.launch exits with 0 even when a rank fails: the done files are the real verdict.
    missing = [r for r in range(2) if not (tmp_path / f"done{r}").exists()]
    assert code == 0 and not missing, f"ranks {missing} did not finish (exit code {code}). Output:\n{out}"
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=what)


@pytest.mark.parametrize("engine", ENGINES)
def test_sync_batchnorm_matches_batchnorm_on_the_global_batch(engine, tmp_path):
    ranks = load_ranks(engine, "layers", tmp_path)
    dualnorm.set_backend("numpy")
    for case in cases.LAYER_CASES:
        ref = cases.run_layer(cases.make_layer(case), case, slice(None))
        for key, want in ref.items():
            name = f"{case.name}/{key}"
            if key.startswith(("y", "dx")):  # per-sample: the ranks' rows, concatenated in rank order
                got = np.concatenate([r[name] for r in ranks])
                _close(got, want, name)
            else:  # parameter gradients (summed over ranks), running stats, eval output: on every rank
                for rank, r in enumerate(ranks):
                    _close(r[name], want, f"{name} on rank {rank}")
        if case.kwargs.get("track_running_stats", True):
            for r in ranks:
                assert int(r[f"{case.name}/state.num_batches_tracked"]) == cases.LAYER_STEPS


@pytest.mark.parametrize("engine", ENGINES)
def test_data_parallel_training_follows_the_single_process_loss_curve(engine, tmp_path):
    ranks = load_ranks(engine, "train", tmp_path)
    dualnorm.set_backend("numpy")
    ref = cases.train_reference()
    assert ref["losses"][-1] < ref["losses"][0] * 0.8, f"the reference run does not learn: {ref['losses']}"
    for run in cases.TRAIN_RUNS:
        for rank, r in enumerate(ranks):
            np.testing.assert_allclose(
                r[f"{run}/losses"], ref["losses"], rtol=1e-5, err_msg=f"{run}: loss curve on rank {rank}"
            )
            for key, want in ref.items():
                if key.startswith("state."):
                    _close(r[f"{run}/{key}"], want, f"{run}: {key} on rank {rank}")
        for key in ranks[0]:
            if key.startswith(run):  # check_parameters_equal passed on the ranks; the files agree too
                np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_rank_that_dies_ends_the_run_with_an_error(engine, tmp_path):
    code, out, elapsed = launch(engine, "die", tmp_path)
    assert not (tmp_path / "done0").exists(), f"rank 0 finished although rank 1 died:\n{out}"
    assert "dying on purpose" in out
    if engine == "mpi":
        assert code != 0, out  # mpiexec reports the failed rank's status
    else:
        assert "exited with code 3" in out or "peer" in out, out
    assert elapsed < 90, f"took {elapsed:.1f} s"  # ended, not hung (generous: CI cores are busy)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stalled_rank_trips_the_watchdog(engine, tmp_path):
    code, out, elapsed = launch(engine, "stall", tmp_path, DUALNORM_DIST_TIMEOUT="2")
    assert "did not finish within 2 s" in out, out
    assert "rank 0 of 2" in out, out
    if engine == "mpi":
        # The watchdog's rank exits with WATCHDOG_EXIT_CODE (its message says so); mpiexec then kills the
        # other rank and returns the status of whichever it collected first: 75, or 9 (SIGKILL) (1 run in ~10).
        assert f"exit code {WATCHDOG_EXIT_CODE}" in out, out
        assert code in (WATCHDOG_EXIT_CODE, signal.SIGKILL), out
    assert elapsed < 90, f"took {elapsed:.1f} s"  # ended, not hung (generous: CI cores are busy)
    assert not (tmp_path / "done0").exists() and not (tmp_path / "done1").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_launch_that_cannot_connect_fails_fast(engine, tmp_path):
    if engine == "mlx":  # rank 0 of 2 started alone: its peer's address never answers
        port = _free_port_pair()
        hostfile = tmp_path / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
        env = _env(MLX_RANK="0", MLX_HOSTFILE=str(hostfile), DUALNORM_DIST_CONNECT_TIMEOUT="2")
        expected = "could not connect"
    else:  # the process manager mpiexec would have started is unreachable
        port = _free_port_pair()
        env = _env(PMI_PORT=f"127.0.0.1:{port}", PMI_RANK="0", PMI_SIZE="2", PMI_ID="0")
        env["DUALNORM_DIST_CONNECT_TIMEOUT"] = "5"
        expected = "PMI"
    code, out, elapsed = _run(
        [sys.executable, str(WORKER), engine, "connect", str(tmp_path)], env, timeout=120
    )
    assert code != 0, out
    assert expected in out, out
    assert elapsed < 90, f"took {elapsed:.1f} s"  # gave up, not hung (generous: CI cores are busy)
    assert not (tmp_path / "done0").exists()
