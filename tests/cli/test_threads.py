"""The demos train with one BLAS thread (their matrices are small); the user's own choice wins."""

from __future__ import annotations

import pytest

from dualnorm._threads import blas_threads_for
from dualnorm.experiments import EXPERIMENTS

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}


class Small:
    blas_threads = 1


class Large:
    blas_threads = None


@pytest.fixture(autouse=True)
def _no_user_choice(monkeypatch):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_BLAS_THREADS"):
        monkeypatch.delenv(var, raising=False)


def test_every_small_demo_asks_for_one_thread():
    # SimpleCNN on CIFAR-10 multiplies (64, 288) x (288, 65536) matrices: its BLAS keeps its threads
    small = {name: exp.blas_threads for name, exp in EXPERIMENTS.items() if name != "simple-cnn"}
    assert small == dict.fromkeys(small, 1)
    assert EXPERIMENTS["simple-cnn"].blas_threads is None


def test_the_limit_holds_inside_the_block_only():
    import numpy  # noqa: F401 (loads the BLAS library threadpoolctl finds)

    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library with a thread pool is loaded here")
    with blas_threads_for(Small()) as limit:
        assert limit == 1 and blas_threads() == {1}
    assert blas_threads() == before
    with blas_threads_for(Large()) as limit:
        assert limit is None and blas_threads() == before


def test_the_users_environment_wins(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with blas_threads_for(Small()) as limit:
        assert limit is None
    monkeypatch.setenv("DUALNORM_BLAS_THREADS", "2")
    with blas_threads_for(Large()) as limit:
        assert limit == 2


def test_dualnorm_run_trains_a_demo_with_one_blas_thread(monkeypatch):
    from dualnorm import cli

    if not blas_threads():
        pytest.skip("no BLAS library with a thread pool is loaded here")
    seen = []
    drive = cli._drive

    def watching_drive(*args, **kwargs):
        seen.append(blas_threads())
        return drive(*args, **kwargs)

    monkeypatch.setattr(cli, "_drive", watching_drive)
    assert cli.main(["run", "dying-relu", "--steps", "2", "--quiet", "--backend", "numpy"]) == 0
    assert seen == [{1}]
