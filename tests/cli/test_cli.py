"""The dualnorm command, run in-process: errors, exit codes, JSON Lines output."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys

import numpy as np
import pytest

from dualnorm.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("dying-relu", "sigmoid-depth", "init-sweep", "norm-zoo", "numpy", "mlx"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "nope"], "'dying-relu', 'sigmoid-depth', 'init-sweep', 'norm-zoo'"),
        (["run", "dying-relu", "--backend", "cuda"], "numpy"),
        (["run", "dying-relu", "--steps", "0"], "positive integer"),
        (["run", "dying-relu", "--lr", "abc"], "positive number"),
        (["run", "dying-relu", "--variants", "plain,wrong"], "choose from: plain, batchnorm"),
        (["run", "dying-relu", "--mnist", "/tmp"], "does not use a dataset"),
        (["run", "init-sweep", "--mnist", "/definitely/not/here"], "does not exist"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_input_exits_2_with_one_line_error(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "error:" in err.strip().splitlines()[-1]


def test_malformed_mnist_file(tmp_path, capsys):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not a zip file")
    assert main(["run", "init-sweep", "--mnist", str(bad), "--steps", "1"]) == 2
    assert "mnist.npz" in capsys.readouterr().err


def test_run_with_mnist_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (200, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 200).astype(np.uint8)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    argv = [
        "run",
        "init-sweep",
        "--mnist",
        str(path),
        "--steps",
        "10",
        "--variants",
        "s05-batchnorm",
        "--quiet",
    ]
    assert main([*argv, "--json", str(tmp_path / "out.jsonl")]) == 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["extra"]["dataset"] == "mnist"


def test_run_writes_json_lines(tmp_path, capsys):
    out = tmp_path / "runs" / "dying.jsonl"
    code = main(
        [
            "run",
            "dying-relu",
            "--backend",
            "numpy",
            "--steps",
            "40",
            "--record-every",
            "20",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert out.exists() and not (tmp_path / "runs" / "dying.jsonl.partial").exists()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6  # steps 1, 20, 40 for each variant
    for rec in records:
        assert {"variant", "step", "loss", "layers"} <= set(rec)
    assert {r["variant"] for r in records} == {"plain", "batchnorm"}
    text = capsys.readouterr().out
    assert "summary" in text and "plain" in text and "done" in text


def test_diverged_run_keeps_records(tmp_path, capsys):
    out = tmp_path / "zoo.jsonl"
    argv = ["run", "norm-zoo", "--steps", "30", "--lr", "10", "--variants", "none,layer", "--quiet"]
    assert main([*argv, "--json", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    diverged = [r for r in records if r["status"] == "diverged"]
    assert len(diverged) == 1 and diverged[0]["variant"] == "none" and diverged[0]["loss"] == "nan"
    assert records[-1]["variant"] == "layer" and records[-1]["status"] == "done"
    assert "diverged" in capsys.readouterr().out


def test_tui_and_bench_fall_back_with_install_hint(monkeypatch, capsys):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name in ("tui.app", "dualnorm.bench") or name.startswith(("textual", "tui")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    import importlib

    def fake_import_module(name, package=None):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", fake_import_module)
    assert main(["tui"]) == 2
    assert 'pip install "dualnorm[tui]"' in capsys.readouterr().err
    assert main(["bench"]) == 2
    assert "pip install" in capsys.readouterr().err


def test_tui_delegates_argv(monkeypatch):
    import types

    seen = {}
    fake = types.ModuleType("tui.app")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "tui.app", fake)
    assert main(["tui", "--experiment", "sigmoid-depth", "--backend", "numpy"]) == 0
    assert seen["argv"] == ["--experiment", "sigmoid-depth", "--backend", "numpy"]


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "dualnorm", "run", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_summary_shows_no_loss_for_forward_only_views(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    assert main(["run", "sigmoid-depth", "--steps", "3", "--quiet"]) == 0
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if "│" in line}
    forward = rows["forward-plain"].split("│")
    assert forward[2].strip() == "-" and "forward only" in forward[4]
    trained = rows["plain"].split("│")
    assert float(trained[2]) > 0 and trained[5].strip() == "3"
