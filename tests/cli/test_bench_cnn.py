"""The CNN rows of ``dualnorm bench`` and ``python -m benchmarks``: the issue's cases, the same
work on dualnorm and PyTorch, and the quick path's tables (no timing asserted, ever)."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from dualnorm import bench_cnn
from dualnorm._console import RATIO_RULE
from dualnorm.bench import LayerResult, cnn_table
from dualnorm.bench_cnn import CnnCase, cnn_cases, dualnorm_callables, torch_callables
from tests.cli.test_piped_output import CUT, piped

BACKENDS = ["numpy"] + (["mlx"] if importlib.util.find_spec("mlx") else [])
HAS_TORCH = importlib.util.find_spec("torch") is not None
SMALL = "import sys, dualnorm.bench_cnn as c; c.BATCH = c.QUICK_BATCH = 2; "
NUMBER = r"\d+\.\d\d"


def test_the_cases_are_the_issues():
    ids = [c.id for c in cnn_cases(64)]
    assert ids == [
        "Conv2d 3x3 64x3x32x32->32",
        "Conv2d 3x3 64x32x16x16->64",
        "Conv2d 3x3 64x32x32x32->64",
        "MaxPool2d(2) 64x32x32x32",
        "MaxPool2d(2) 64x64x16x16",
        "SimpleCNN step (LRN) 64x3x32x32",
        "SimpleCNN step (BN) 64x3x32x32",
        "SimpleCNN step (GN) 64x3x32x32",
    ]


@pytest.mark.torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", list(bench_cnn.NORMS))
def test_a_step_is_the_same_step_on_dualnorm_and_pytorch(backend, norm):
    """Both start from dualnorm's weights on the same batch: the first losses agree, and so do
    the second (the SGD update was the same)."""
    pytest.importorskip("torch")
    case = CnnCase("step", (2, 3, 32, 32), norm=norm)
    ours, theirs = dualnorm_callables(case, backend)["step"], torch_callables(case)["step"]
    for _ in range(2):
        assert ours() == pytest.approx(theirs(), rel=1e-4, abs=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["conv", "maxpool"])
def test_layer_calls_have_pytorchs_shapes(backend, kind):
    pytest.importorskip("torch")
    import dualnorm

    case = CnnCase(kind, (2, 3, 8, 8), out=4)
    ours, theirs = dualnorm_callables(case, backend), torch_callables(case)
    assert np.shape(dualnorm.to_numpy(ours["fwd"]())) == tuple(theirs["fwd"]().shape)
    assert np.shape(dualnorm.to_numpy(ours["fwdbwd"]())) == tuple(theirs["fwdbwd"]().shape) == case.shape


def test_cnn_ratio_cells_are_dualnorm_over_pytorch():
    from rich.console import Console

    result = LayerResult("Conv2d 3x3 2x3x8x8->4", "fwd", {"dualnorm-numpy": 1e-3, "torch": 2e-3})
    console = Console(width=300, record=True)
    console.print(cnn_table([result], ["numpy", "mlx"]))
    text = console.export_text()
    assert RATIO_RULE in text and "numpy/torch" in text and "mlx/torch" in text
    (row,) = [line for line in text.splitlines() if "Conv2d" in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    # numpy 1 ms, no MLX time, torch 2 ms; numpy/torch 0.50x (faster: < 1), mlx/torch "-"
    assert cells == ["Conv2d 3x3 2x3x8x8->4", "forward", "1.00", "-", "2.00", "0.50x", "-"]


def _rows(out: str, ids: list[str], columns: int) -> None:
    """Every case's rows are there, each with ``columns`` numbers (ms and ratios)."""
    for case_id in ids:
        lines = [line for line in out.splitlines() if case_id in line]
        assert lines, f"no row for {case_id}"
        for line in lines:
            assert len(re.findall(rf"(?<![\w.]){NUMBER}x?(?![\w.])", line)) == columns, line


def test_bench_cnn_quick_piped(tmp_path):
    # Without PyTorch, as where it is not installed: its column and ratios, and its timing process
    # (~5 s: importing torch, its first calls), are test_benchmarks_quick_piped_has_the_cnn_table's.
    code = SMALL + "c.torch_installed = lambda: False; "
    code += "import dualnorm.bench as b; sys.exit(b.main(['--cnn', '--quick', '--backends', 'numpy']))"
    out = piped(["-c", code], tmp_path)
    assert CUT not in out
    assert f"dualnorm bench: CNN layers, a training step; float32, min ms; {RATIO_RULE}" in out
    assert "batch 2 (--quick; the issue's rows are at 64)" in out
    assert "BatchNorm" not in out  # --cnn: the CNN rows alone
    assert "torch" not in out.split(RATIO_RULE, 1)[1]  # no PyTorch column, no ratio to it
    _rows(out, [c.id for c in cnn_cases(2)], 1)


def test_benchmarks_quick_piped_has_the_cnn_table(tmp_path):
    code = SMALL + "sys.argv = ['benchmarks', '--quick', '--no-layers', '--no-e2e', '--repeats', '1']; "
    code += "from benchmarks.__main__ import main; sys.exit(main())"
    out = piped(["-c", code], tmp_path)
    from benchmarks.report import CNN_TITLE

    assert CUT not in out and CNN_TITLE in out and RATIO_RULE in CNN_TITLE
    assert "Layers, float32" not in out  # --no-layers
    ours = len(BACKENDS)
    _rows(out, [c.id for c in cnn_cases(2)], 2 * ours + 1 if HAS_TORCH else ours)
    assert "CNN rows: batch 2" in out
    if HAS_TORCH:
        assert re.search(rf"SimpleCNN step \(GN\) 2x3x32x32 .*train step .*{NUMBER}x", out)
