"""dev.py: what it installs and when, and how a user gets into the environment it made."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_dev():
    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def dev(tmp_path, monkeypatch):
    module = load_dev()
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")  # the venv exists: no `python -m venv`
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    for name, value in (("ROOT", tmp_path), ("VENV", venv), ("BIN", venv / "bin"),
                        ("PYTHON", venv / "bin" / "python"), ("STAMP", venv / ".dualnorm-installed.json")):  # fmt: skip
        monkeypatch.setattr(module, name, value)
    module.calls = []
    done = type("Done", (), {"returncode": 0})()
    monkeypatch.setattr(module, "run", lambda *cmd, **kw: module.calls.append([str(c) for c in cmd]) or done)
    return module


def installs(dev) -> list[str]:
    return [cmd[-1] for cmd in dev.calls if "-e" in cmd]


def pip_installs(dev) -> list[list[str]]:
    """Every ``pip install`` but pip's own upgrade."""
    return [cmd for cmd in dev.calls if "install" in cmd and cmd[-1] != "pip"]


def test_run_after_test_does_not_reinstall(dev):
    dev.ensure_venv("dev")
    assert installs(dev) == [f"{dev.ROOT}[dev]"]
    dev.ensure_venv("mlx,tui,fast")  # what `dev.py run` and `dev.py shell` need: all in dev
    dev.ensure_venv("dev")
    assert len(installs(dev)) == 1


def test_an_extra_not_installed_yet_installs_and_a_changed_pyproject_reinstalls(dev):
    dev.ensure_venv("mlx,tui,fast")
    dev.ensure_venv("dev")  # dev needs more than run installed
    assert len(pip_installs(dev)) == 2
    dev.ensure_venv("mlx,tui,fast")
    assert len(pip_installs(dev)) == 2
    pyproject = dev.ROOT / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# changed\n")
    dev.ensure_venv("mlx,tui,fast")
    assert len(pip_installs(dev)) == 3 and installs(dev)[-1] == f"{dev.ROOT}[mlx,tui,fast]"


def test_an_extra_added_later_installs_its_requirements_without_reinstalling_dualnorm(dev):
    pytest.importorskip("tomllib")
    dev.ensure_venv("dev")
    dev.ensure_venv("docs")  # what `dev.py docs build` adds after `dev.py test`
    first, docs = pip_installs(dev)
    assert first[-1] == f"{dev.ROOT}[dev]"
    assert "-e" not in docs and any(r.startswith("mkdocs==") for r in docs)
    assert not any(r.startswith(("pytest", "dualnorm")) for r in docs)  # dev's are there already
    dev.ensure_venv("mlx,tui,fast,docs")  # all installed now
    assert len(pip_installs(dev)) == 2
    dev_requirements = dev.extra_requirements({"dev"})
    assert set(dev_requirements) == set(dev.extra_requirements({"dev", "mlx"}))  # dev brings mlx
    assert "numba>=0.60" in dev_requirements and len(set(dev_requirements)) == len(dev_requirements)


@pytest.mark.parametrize("dont_write_bytecode", [False, True])
def test_pip_leaves_the_compiling_to_python_unless_python_keeps_no_bytecode(
    dev, dont_write_bytecode, monkeypatch
):
    monkeypatch.setattr(sys, "dont_write_bytecode", dont_write_bytecode)
    no_compile = load_dev().NO_COMPILE  # what dev.py decides when it starts
    assert no_compile == ([] if dont_write_bytecode else ["--no-compile"])
    monkeypatch.setattr(dev, "NO_COMPILE", no_compile)
    monkeypatch.setattr(dev, "local_torch_version", lambda: "2.0")
    monkeypatch.setattr(dev.subprocess, "run", lambda *a, **k: type("Probe", (), {"returncode": 1})())
    dev.ensure_venv("dev")
    dev.ensure_venv("docs")
    dev.ensure_torch()
    pips = [cmd for cmd in dev.calls if "install" in cmd]
    assert len(pips) == 4  # pip itself, dualnorm[dev], the docs' requirements, torch
    assert all(("--no-compile" in cmd) == (not dont_write_bytecode) for cmd in pips)


def test_the_implied_extras_are_pyprojects():
    tomllib = pytest.importorskip("tomllib")
    module = load_dev()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (self_ref,) = [d for d in extras["dev"] if d.startswith("dualnorm[")]
    assert set(module.IMPLIED_EXTRAS["dev"]) == set(self_ref[len("dualnorm[") : -1].split(","))


@pytest.mark.parametrize("command", ["run", "test"])
def test_run_and_test_say_how_to_enter_the_environment(dev, command, capsys, monkeypatch):
    monkeypatch.setattr(dev, "ensure_torch", lambda: None)
    monkeypatch.setattr(dev, "run", lambda *cmd, **kw: type("Done", (), {"returncode": 0})())
    assert dev.main([command]) == 0
    assert "python3 dev.py shell" in capsys.readouterr().out


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell script stands in for the venv's dualnorm")
def test_shell_puts_the_venv_first_on_path(dev, tmp_path, monkeypatch):
    import subprocess

    script = dev.BIN / "dualnorm"
    script.write_text('#!/bin/sh\necho "venv dualnorm $VIRTUAL_ENV"\n')
    script.chmod(0o755)
    seen = []

    def run(*cmd, check=True, env=None):
        seen.append(subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True))
        return seen[-1]

    monkeypatch.setattr(dev, "run", run)
    assert dev.shell(["dualnorm"]) == 0
    assert seen[0].stdout.strip() == f"venv dualnorm {dev.VENV}"


def test_help_lists_shell(capsys):
    import subprocess

    out = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert "python3 dev.py shell" in out.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("mlx") is not None
    and "gpu" in __import__("dualnorm").backends.available_devices("mlx"),
    reason="this machine has an MLX GPU: nothing to summarize",
)
def test_skipped_gpu_cases_are_one_summary_line():
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-ra",
         "tests/core/test_norm_layers.py", "-k", "mlx-gpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "tests/conftest.py: MLX has no GPU here" in skipped[0], result.stdout[-3000:]
    assert int(skipped[0].split("[")[1].split("]")[0]) > 1  # many cases, one line
