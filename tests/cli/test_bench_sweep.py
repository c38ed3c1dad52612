"""dualnorm bench --sweep: sizes, crossovers, the text plot, and a tiny real sweep."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from dualnorm import bench
from dualnorm.bench import SweepPoint, crossovers, run_sweep, sweep_case, text_plot

HAS_MLX = importlib.util.find_spec("mlx") is not None


@pytest.mark.parametrize("kind", bench.SWEEP_KINDS)
@pytest.mark.parametrize("elements", [1_000, 10_000_000])
def test_sweep_cases_have_about_the_asked_size(kind, elements):
    case = sweep_case(kind, elements)
    got = int(np.prod(case.shape))
    assert abs(got - elements) / elements < 0.15
    assert case.shape[0] >= 2  # batch norm trains on at least 2 samples


def _points(times: dict[str, list[float]], sizes=(1_000, 10_000, 100_000, 1_000_000)) -> list[SweepPoint]:
    return [
        SweepPoint(
            "layernorm", f"LayerNorm {n}", n, {k: v[i] for k, v in times.items()}, {k: 0.0 for k in times}
        )
        for i, n in enumerate(sizes)
    ]


def test_crossover_is_the_size_from_which_a_backend_stays_faster():
    points = _points({"numpy": [1, 2, 4, 8], "mlx-gpu": [5, 3, 3, 2], "mlx-cpu": [2, 3, 5, 9]})
    cross = crossovers(points, ["numpy", "mlx-gpu", "mlx-cpu"])
    assert cross["layernorm"] == {"mlx-gpu": 100_000, "mlx-cpu": None}
    dip = _points(
        {"numpy": [1, 2, 4, 8], "b": [0.5, 3, 3, 2]}
    )  # faster at 1e3, not at 1e4: no crossover there
    assert crossovers(dip, ["numpy", "b"])["layernorm"]["b"] == 100_000
    always = _points({"numpy": [1, 2, 4, 8], "b": [0.5, 1, 2, 4]})
    assert crossovers(always, ["numpy", "b"])["layernorm"]["b"] == 1_000


def test_text_plot_places_the_extremes_at_the_corners():
    plot = text_plot({"a": [(1e3, 1e-4), (1e6, 1e-1)], "b": [(1e3, 1e-1)]}, width=20, height=5)
    rows = plot.splitlines()
    grid = [r.split("|", 1)[1] for r in rows[:5]]
    assert grid[0][0] == "▲" and grid[0][-1] == "●" and grid[-1][0] == "●"
    assert "100 ms" in rows[0] and "0.1 ms" in rows[4]
    assert "● a" in plot and "▲ b" in plot


def test_tiny_real_sweep_times_every_backend_with_the_first_call_apart():
    labels = ["numpy"] + (["mlx-cpu"] if HAS_MLX else [])
    points = run_sweep(labels, sizes=(1_000,), kinds=("layernorm", "batchnorm2d"), repeats=2)
    assert [p.kind for p in points] == ["layernorm", "batchnorm2d"]
    for p in points:
        assert set(p.median_s) == set(labels) == set(p.first_call_s)
        assert all(t > 0 for t in p.median_s.values())


def test_sweep_rejects_an_unknown_backend_naming_the_choices(capsys):
    assert bench.main(["--sweep", "--backends", "numpy", "cuda"]) == 2
    err = capsys.readouterr().err  # an error goes to stderr, as one line
    assert "cuda" in err and "numpy" in err and len(err.strip().splitlines()) == 1


def test_sweep_json(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUICK_SWEEP_SIZES", (1_000, 2_000))
    monkeypatch.setattr(bench, "SWEEP_KINDS", ("layernorm",))
    path = tmp_path / "s.json"
    monkeypatch.setattr(bench, "run_sweep", _small_sweep(bench.run_sweep))
    assert bench.main(["--sweep", "--quick", "--backends", "numpy", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["sizes"] == [1_000, 2_000] and data["reference"] == "numpy"
    assert {p["elements"] for p in data["points"]} == {1024, 2048}


def _small_sweep(real):
    def run(labels, sizes, repeats=5, progress=None):
        return real(labels, sizes, kinds=("layernorm",), repeats=1, progress=progress)

    return run


def test_the_sweep_adds_pytorch_cpu_timed_in_its_own_process():
    pytest.importorskip("torch")
    points = run_sweep(["numpy"], sizes=(1_000,), kinds=("layernorm", "groupnorm"), repeats=1)
    assert bench.add_torch_row(points, repeats=1, threads=1) == 1  # PyTorch ran on the asked threads
    for p in points:
        assert set(p.median_s) == {"numpy", bench.TORCH_LABEL} == set(p.first_call_s)
        assert p.median_s[bench.TORCH_LABEL] > 0
