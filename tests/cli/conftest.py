import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """`dualnorm run` writes ./dualnorm-runs by default: keep it out of the repository."""
    monkeypatch.chdir(tmp_path)
