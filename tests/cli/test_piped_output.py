"""Output that goes to a pipe or a file: tables at their natural width, one ratio convention.

The commands run as subprocesses with stdout piped (not a terminal), as `... | cat` and
`... > file` run them; the benchmarks on tiny cases so that the tests stay short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualnorm._console import RATIO_RULE

ROOT = Path(__file__).resolve().parents[2]
CUT = "…"  # what rich puts where it cut a cell


def piped(code_or_args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, *code_or_args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    longest = max(len(line) for line in (result.stdout + result.stderr).splitlines() or [""])
    assert longest < 1000  # natural width: nothing padded out to an unbounded console's width
    return result.stdout


# Tiny shapes: the real command, the real tables, a second of measuring.
TINY = (
    "import sys, dualnorm.bench as b; "
    "b.QUICK_CASES = (b.Case('batchnorm', (64, 8, 4, 4)), b.Case('groupnorm', (8, 16, 4, 4), groups=4)); "
    "b.QUICK_SWEEP_SIZES = (1000,); "
    "import dualnorm.bench_cnn as c; c.BATCH = c.QUICK_BATCH = 2; "  # the CNN rows, on tiny batches
)


def test_list_piped_prints_every_cell_whole(tmp_path):
    from dualnorm.experiments import EXPERIMENTS

    out = piped(["-m", "dualnorm", "list"], tmp_path)
    assert CUT not in out
    for exp in EXPERIMENTS.values():
        assert exp.summary in out  # the longest cells, whole


def test_run_summary_piped_is_not_cut(tmp_path):
    out = piped(["-m", "dualnorm", "run", "dying-relu", "--steps", "3", "--quiet"], tmp_path)
    assert CUT not in out and "final loss" in out and "steps/s" in out


def test_bench_piped_names_whole_and_the_ratio_rule_in_the_header(tmp_path):
    # the layer table (the CNN rows' table is test_bench_cnn.py's: each library in a process of its own)
    out = piped(["-c", TINY + "sys.exit(b.main(['--repeats', '1', '--no-cnn']))"], tmp_path)
    assert CUT not in out
    assert "BatchNorm2d 64x8x4x4" in out and "GroupNorm(G=4) 8x16x4x4" in out
    assert RATIO_RULE in out and "speed-up" not in out
    assert "numpy/copy" in out
    if "mlx ms" in out:
        assert "mlx/numpy" in out


def test_bench_sweep_piped_states_the_same_rule(tmp_path):
    out = piped(["-c", TINY + "sys.exit(b.main(['--sweep', '--quick', '--backends', 'numpy']))"], tmp_path)
    assert CUT not in out
    assert out.count(RATIO_RULE) >= 4  # each layer's table, and the closing line


def test_benchmarks_suite_piped(tmp_path):
    code = (
        TINY
        + "sys.argv = ['benchmarks', '--quick', '--no-e2e', '--no-cnn', '--repeats', '1', '--markdown', 'out.md']; "
    )
    code += "from benchmarks.__main__ import main; sys.exit(main())"
    out = piped(["-c", code], tmp_path)
    assert CUT not in out
    assert f"Layers, float32, training mode, median ms; {RATIO_RULE}" in out
    assert "BatchNorm2d 64x8x4x4" in out and "np/floor" in out
    assert RATIO_RULE in (tmp_path / "out.md").read_text()


def test_ratio_cells_are_dualnorm_over_the_other():
    from benchmarks.report import layer_rows
    from dualnorm.bench import LayerResult, _table

    result = LayerResult(
        "BatchNorm1d 8x4",
        "fwd",
        {"dualnorm-numpy": 2e-3, "dualnorm-mlx": 1e-3, "floor-numpy": 1e-3, "floor-mlx": 5e-4, "torch": 4e-3},
    )
    header, rows = layer_rows([result])
    cells = dict(zip(header, rows[0], strict=True))
    assert cells["np/torch"] == "0.50x" and cells["mlx/torch"] == "0.25x" and cells["np/floor"] == "2.00x"

    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(_table([result], {}, ["numpy", "mlx"]))
    text = console.export_text()
    assert "mlx/numpy" in text and "0.50x" in text  # MLX's 1 ms over NumPy's 2 ms: faster, < 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "--json", "/proc/dualnorm-x.json"], "cannot write the JSON file /proc/dualnorm-x.json"),
        (["bench", "--sweep", "--json", "/proc/dualnorm-x.json"], "cannot write the JSON file"),
    ],
)
def test_bench_checks_its_output_path_before_measuring(argv, needle, capsys, monkeypatch):
    import dualnorm.bench as bench
    from dualnorm.cli import main

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured before checking the output path")

    monkeypatch.setattr(bench, "run_backends", no_measuring)
    monkeypatch.setattr(bench, "run_sweep", no_measuring)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_benchmarks_suite_checks_its_output_paths_before_measuring(capsys, monkeypatch):
    from benchmarks import layers
    from benchmarks.__main__ import main

    monkeypatch.setattr(layers, "run", lambda *a, **k: pytest.fail("measured before checking the path"))
    assert main(["--quick", "--no-e2e", "--markdown", "/proc/dualnorm-x.md"]) == 2
    assert "cannot write the Markdown file /proc/dualnorm-x.md" in capsys.readouterr().err


def test_benchmarks_refuse_an_unknown_backend_before_measuring(capsys):
    from benchmarks.__main__ import main

    assert main(["--backends", "numpy", "tpu", "--no-layers", "--no-cnn", "--no-e2e"]) == 2
    err = capsys.readouterr().err
    assert "--backends tpu: not available here" in err and "numpy" in err
