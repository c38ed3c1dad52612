"""What does tracking cost, and how much memory does the UI hold for a long run?

    python benchmarks/bench_tracking.py                    # both, on every installed backend
    python benchmarks/bench_tracking.py --steps 2000 --backend numpy
    python benchmarks/bench_tracking.py --memory-only --records 1000000
    python benchmarks/bench_tracking.py --overhead-only --framework torch --framework mlx.nn

1. Tracking overhead: a small MLP of one's own (64-64-BN-ReLU-32-BN-ReLU-10, batch 64) trained on
   the shipped digits, the same steps timed without a tracker, with a scalar-only tracker
   (no model) logging every step, with a model tracker and ``run.log`` every step
   (per-layer statistics every 10 steps), and with ``run.log`` every 10 steps (statistics
   every 10 steps). Best of the repeats, microseconds per training step; and the median time
   of the ``run.log`` calls themselves (timed inside the loop, so independent of the step's noise).
2. Tracking a PyTorch or mlx.nn model (``--framework torch`` / ``mlx.nn``): the same MLP
   written in that framework, trained on the same batches with the framework's SGD, timed
   untracked, with a scalar-only tracker, and tracked with ``run.log`` every step and
   per-layer statistics every 1, 10 and 100 steps, in CPU time of this process (one thread:
   the load of other processes on a shared machine does not count). The variants are interleaved within each repeat (A/B/C/D, then again),
   and the best repeat of each is kept; plus the median ``run.log`` call with and without
   layer statistics.
3. UI memory: resident memory (VmRSS) of this process after folding N records (no layer
   statistics, one variant) into the UI's ``RunState`` in batches of 1 000, as its timer drains
   them; and the number of curve points it holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import dualnorm  # noqa: E402
from dualnorm import nn  # noqa: E402
from dualnorm.data import load_digits  # noqa: E402
from dualnorm.losses import CrossEntropyLoss  # noqa: E402
from dualnorm.optim import SGD  # noqa: E402


def _setup(backend: str):
    dualnorm.set_backend(backend)
    dualnorm.manual_seed(0)
    data = load_digits()
    model = nn.Sequential(
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Linear(32, 10),
    )  # fmt: skip
    be = model.backend
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(64):
        idx = rng.integers(0, len(data.y_train), 64)
        batches.append((be.asarray(data.x_train[idx]), be.asarray(data.y_train[idx], be.int64)))
    return model, batches


LOG_TIME: list[float] = []  # seconds spent inside run.log, per call, of the latest _train


def _train(model, batches, steps: int, run=None, log_every: int = 1) -> float:
    loss_fn, opt = CrossEntropyLoss(), SGD(model.parameters(), lr=0.05)
    be = model.backend
    LOG_TIME.clear()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        be.eval(loss, *(p.data for p in model.parameters()))
        value = float(loss.item())  # a training loop reads its loss anyway
        if run is not None and step % log_every == 0:
            t0 = time.perf_counter()
            record = run.log(step, loss=value)
            LOG_TIME.append((time.perf_counter() - t0, bool(record.layers)))
    return (time.perf_counter() - start) / steps * 1e6


def bench_overhead(backend: str, steps: int, repeats: int) -> dict[str, float]:
    model, batches = _setup(backend)
    _train(model, batches, 50)  # warm up
    results: dict[str, list[float]] = {
        "no tracking": [],
        "scalars only, every step": [],
        "log every step": [],
        "log every 10 steps": [],
    }
    calls: dict[str, list[float]] = {"run.log, scalars": [], "run.log, with layer statistics": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            results["no tracking"].append(_train(model, batches, steps))
            with dualnorm.track(None, dir=Path(tmp) / f"s{r}") as run:
                results["scalars only, every step"].append(_train(model, batches, steps, run, 1))
            calls["run.log, scalars"].extend(t for t, _ in LOG_TIME)
            with dualnorm.track(model, every=10, dir=Path(tmp) / f"a{r}") as run:
                results["log every step"].append(_train(model, batches, steps, run, 1))
            calls["run.log, with layer statistics"].extend(t for t, layers in LOG_TIME if layers)
            with dualnorm.track(model, every=10, dir=Path(tmp) / f"b{r}") as run:
                results["log every 10 steps"].append(_train(model, batches, steps, run, 10))
    out = {k: min(v) for k, v in results.items()}  # the least disturbed repeat: the machine is shared
    # the calls themselves, timed inside the loop: their median does not depend on the step's noise
    out.update({k: statistics.median(v) * 1e6 for k, v in calls.items()})
    return out


def _framework_setup(framework: str):
    """The benchmark MLP in torch or mlx.nn, its SGD step and 64 batches of the digits."""
    data = load_digits()
    rng = np.random.default_rng(0)
    idx = [rng.integers(0, len(data.y_train), 64) for _ in range(64)]
    if framework == "torch":
        import torch
        from torch import nn as tnn

        torch.manual_seed(0)
        model = tnn.Sequential(
            tnn.Linear(64, 64), tnn.BatchNorm1d(64), tnn.ReLU(),
            tnn.Linear(64, 32), tnn.BatchNorm1d(32), tnn.ReLU(),
            tnn.Linear(32, 10),
        )  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        batches = [(torch.from_numpy(data.x_train[i]), torch.from_numpy(data.y_train[i])) for i in idx]

        def step(x, y):
            opt.zero_grad()
            loss = tnn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return float(loss.item()), None

        return model, batches, step
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx import nn as mnn

    mx.random.seed(0)
    model = mnn.Sequential(
        mnn.Linear(64, 64), mnn.BatchNorm(64), mnn.ReLU(),
        mnn.Linear(64, 32), mnn.BatchNorm(32), mnn.ReLU(),
        mnn.Linear(32, 10),
    )  # fmt: skip
    opt = optim.SGD(learning_rate=0.05)
    loss_and_grad = mnn.value_and_grad(
        model, lambda m, x, y: mnn.losses.cross_entropy(m(x), y, reduction="mean")
    )
    batches = [(mx.array(data.x_train[i]), mx.array(data.y_train[i])) for i in idx]

    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        opt.update(model, grads)
        mx.eval(loss, model.parameters(), opt.state)
        return float(loss.item()), grads

    return model, batches, step


def _framework_train(batches, step_fn, steps: int, run=None) -> float:
    """CPU µs per step (``time.process_time``: the other processes of a loaded machine do not count)."""
    LOG_TIME.clear()
    start = time.process_time()
    for step in range(1, steps + 1):
        value, grads = step_fn(*batches[step % len(batches)])
        if run is not None:
            t0 = time.process_time()
            record = run.log(step, loss=value, grads=grads)
            LOG_TIME.append((time.process_time() - t0, bool(record.layers)))
    return (time.process_time() - start) / steps * 1e6


def bench_framework(framework: str, steps: int, repeats: int) -> dict[str, float]:
    model, batches, step_fn = _framework_setup(framework)
    _framework_train(batches, step_fn, 50)  # warm up
    every = (1, 10, 100)
    results: dict[str, list[float]] = {
        "no tracking": [],
        "scalars only (track(None))": [],
        **{f"tracked, every={k}": [] for k in every},
    }
    calls: dict[str, list[float]] = {"run.log, scalars": [], "run.log, with layer statistics": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # interleaved: each repeat runs every variant once
            results["no tracking"].append(_framework_train(batches, step_fn, steps))
            with dualnorm.track(None, dir=Path(tmp) / f"s-{r}") as run:
                results["scalars only (track(None))"].append(_framework_train(batches, step_fn, steps, run))
            for k in every:
                with dualnorm.track(model, every=k, dir=Path(tmp) / f"{k}-{r}") as run:
                    results[f"tracked, every={k}"].append(_framework_train(batches, step_fn, steps, run))
                calls["run.log, with layer statistics"].extend(t for t, layers in LOG_TIME if layers)
                calls["run.log, scalars"].extend(t for t, layers in LOG_TIME if not layers)
    out = {k: min(v) for k, v in results.items()}
    out.update({k: statistics.median(v) * 1e6 for k, v in calls.items()})
    return out


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_memory(n: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from dualnorm.records import StepRecord
    from tui.state import RunState

    state = RunState()
    before = _rss_mib()
    batch = 1000
    rss = {}
    for start in range(0, n, batch):
        recs = [
            StepRecord("long", "main", s, 0, 1.0 / s, "numpy", extra={"losses": [1.0 / s]})
            for s in range(start + 1, min(n, start + batch) + 1)
        ]
        state.apply(recs)
        done = min(n, start + batch)
        if done in (n // 100, n // 10, n):
            rss[done] = _rss_mib()
    v = state.variants["main"]
    return {"rss_before_mib": before, **{f"rss_after_{k}": r for k, r in rss.items()},
            "points_held": len(v.steps), "records_held": len(state.records)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", action="append", help="numpy and/or mlx (default: every installed one)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--framework", action="append", choices=["torch", "mlx.nn"], help="also track a torch / mlx.nn MLP"
    )
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--overhead-only", action="store_true")
    args = parser.parse_args()
    if not args.memory_only:
        print(f"tracking overhead: {args.steps} steps, best of {args.repeats}, µs per training step")
        frameworks = args.framework or []
        for framework in frameworks:
            r = bench_framework(framework, args.steps, args.repeats)
            base = r["no tracking"]
            for k, v in r.items():
                if k.startswith("run.log"):
                    print(f"  {framework:6s} {k:32s} {v:8.1f} CPU µs per call (median)")
                else:
                    print(f"  {framework:6s} {k:32s} {v:8.1f} CPU µs/step  ({(v / base - 1) * 100:+5.1f} %)")
        for backend in args.backend or ([] if frameworks else dualnorm.available_backends()):
            r = bench_overhead(backend, args.steps, args.repeats)
            base = r["no tracking"]
            for k, v in r.items():
                if k.startswith("run.log"):
                    print(f"  {backend:6s} {k:32s} {v:8.1f} µs per call (median)")
                else:
                    print(f"  {backend:6s} {k:32s} {v:8.1f} µs/step  ({(v / base - 1) * 100:+5.1f} %)")
    if not args.overhead_only:
        m = bench_memory(args.records)
        print(f"UI memory: RunState after {args.records:,} records (VmRSS, MiB)")
        for k, v in m.items():
            print(f"  {k}: {v:,.1f}" if isinstance(v, float) else f"  {k}: {v:,}")


if __name__ == "__main__":
    main()
