"""Tables of the benchmark results: rich on the terminal, JSON and Markdown files."""

from __future__ import annotations

import json
from typing import Any

from dualnorm._console import RATIO_RULE, fmt_ratio, titled_table
from dualnorm.bench import LayerResult
from dualnorm.bench_cnn import pass_name

ORDER = (
    "dualnorm-numpy+numba",
    "dualnorm-numpy",
    "dualnorm-mlx",
    "numpy-textbook",
    "torch",
    "mlx.nn",
    "floor-numpy",
    "floor-mlx",
)
# (numerator, denominator, column title): a ratio < 1 means the numerator is faster.
RATIOS = (
    ("dualnorm-numpy+numba", "torch", "nb/torch"),
    ("dualnorm-numpy+numba", "floor-numpy", "nb/floor"),
    ("dualnorm-numpy+numba", "dualnorm-numpy", "nb/np"),
    ("dualnorm-numpy", "torch", "np/torch"),
    ("dualnorm-numpy", "floor-numpy", "np/floor"),
    ("dualnorm-numpy", "numpy-textbook", "np/textbook"),
    ("dualnorm-mlx", "mlx.nn", "mlx/mlx.nn"),
    ("dualnorm-mlx", "torch", "mlx/torch"),
    ("dualnorm-mlx", "floor-mlx", "mlx/floor"),
)


# nb: dualnorm on NumPy with the numba kernels, np: without them, mlx: dualnorm on MLX
LAYERS_TITLE = f"Layers, float32, training mode, median ms; {RATIO_RULE}"
E2E_TITLE = f"End to end, seconds; {RATIO_RULE}"
CNN_TITLE = (
    f"CNN layers and a SimpleCNN training step, float32, min ms, one process per library; {RATIO_RULE}"
)


def layer_rows(results: list[LayerResult]) -> tuple[list[str], list[list[str]]]:
    impls = [k for k in ORDER if any(k in r.times for r in results)]
    ratios = [r for r in RATIOS if any(r[0] in x.times and r[1] in x.times for x in results)]
    header = ["layer", "pass", *(f"{k} ms" for k in impls), *(t for _, _, t in ratios)]
    rows = []
    for r in results:
        row = [r.case, pass_name(r.mode)]
        row += [f"{r.times[k] * 1e3:.2f}" if k in r.times else "-" for k in impls]
        row += [
            fmt_ratio(r.times[a], r.times[b]) if a in r.times and b in r.times else "-" for a, b, _ in ratios
        ]
        rows.append(row)
    return header, rows


def e2e_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["experiment", "setup", "implementation", "seconds", "impl/torch", "record share"]
    torch_s = {r["experiment"]: r["s"] for r in rows if r["impl"] == "torch"}
    out = []
    for r in rows:
        t = torch_s.get(r["experiment"])
        share = r.get("record_s", 0.0) / r["train_s"] if r.get("train_s") else None
        out.append(
            [
                r["experiment"],
                r["setup"],
                r["impl"],
                f"{r['s']:.2f}",
                fmt_ratio(r["s"], t) if t else "-",
                f"{share:.1%}" if share is not None and "default" in r["impl"] else "-",
            ]
        )
    return header, out


def _machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info.get('processor')}, {info.get('cpu_count')} CPUs, {info.get('threads')} threads per library "
        f"(OMP/OPENBLAS/DUALNORM_NUM_THREADS, torch.set_num_threads); {info.get('platform')}; "
        f"Python {info.get('python')}, NumPy {info.get('numpy')}, MLX {info.get('mlx', '-')} "
        f"({info.get('mlx_device', '-')}); load average {info.get('loadavg')} -> {info.get('loadavg_end')}"
    )


def print_tables(
    console: Any,
    info: dict[str, Any],
    results: list[LayerResult],
    e2e: list[dict],
    cnn: list[LayerResult] | None = None,
) -> None:

    for title, (header, rows) in (
        (LAYERS_TITLE, layer_rows(results) if results else ([], [])),
        (CNN_TITLE, layer_rows(cnn) if cnn else ([], [])),
        (E2E_TITLE, e2e_table(e2e) if e2e else ([], [])),
    ):
        if not rows:
            continue
        table = titled_table(title)
        for h in header:
            table.add_column(
                h,
                justify="left"
                if h in ("layer", "pass", "experiment", "setup", "implementation")
                else "right",
            )
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if cnn:
        console.print(f"[dim]CNN rows: {_cnn_line(info)}[/]")
    console.print(f"[dim]{_machine_line(info)}[/]")


def _cnn_line(info: dict[str, Any]) -> str:
    c = info.get("cnn", {})
    return (
        f"batch {c.get('batch')}, each library in its own process at {info.get('threads')} thread(s), "
        f"min of {c.get('rounds')} round(s) x {c.get('repeats')} repeats"
    )


def write_json(
    path: str,
    info: dict[str, Any],
    results: list[LayerResult],
    e2e: list[dict],
    cnn: list[LayerResult] | None = None,
) -> None:
    payload = {
        "machine": info,
        "layers": [{"case": r.case, "mode": r.mode, "median_s": r.times} for r in results],
        "cnn": [{"case": r.case, "mode": r.mode, "min_s": r.times} for r in cnn or []],
        "e2e": e2e,
    }
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(
    path: str,
    info: dict[str, Any],
    results: list[LayerResult],
    e2e: list[dict],
    cnn: list[LayerResult] | None = None,
) -> None:
    parts = [f"Measured on: {_machine_line(info)}", ""]
    if results:
        parts += [f"{LAYERS_TITLE}:", ""]
        parts += [_md(*layer_rows(results)), ""]
    if cnn:
        parts += [f"{CNN_TITLE}; {_cnn_line(info)}:", ""]
        parts += [_md(*layer_rows(cnn)), ""]
    if e2e:
        parts += [f"{E2E_TITLE}; record share = per-layer statistics time / training time:", ""]
        parts += [_md(*e2e_table(e2e)), ""]
    with open(path, "w") as fh:
        fh.write("\n".join(parts))
