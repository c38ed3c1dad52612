"""One rank of a distributed test run, started by ``mpiexec`` or ``mlx.launch`` (never by pytest itself).

    python dist_worker.py ENGINE SCENARIO OUTDIR

ENGINE is "mpi" (NumPy backend) or "mlx" (MLX backend). Each rank writes
``OUTDIR/rank<r>.npz`` with its results and ``OUTDIR/done<r>`` when it finished.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_cases as cases

import dualnorm
import dualnorm.distributed as dist
from dualnorm import nn


def scenario_layers(group: dist.ProcessGroup) -> dict[str, np.ndarray]:
    results = {}
    for case in cases.LAYER_CASES:
        layer = nn.SyncBatchNorm.convert_sync_batchnorm(cases.make_layer(case))
        assert isinstance(layer, nn.SyncBatchNorm), type(layer)
        rows = dist.shard_slice(case.batch, sizes=case.sizes)
        out = cases.run_layer(layer, case, rows, lambda m: dist.allreduce_gradients(m, average=False))
        results.update({f"{case.name}/{k}": v for k, v in out.items()})
    return results


def scenario_train(group: dist.ProcessGroup) -> dict[str, np.ndarray]:
    results = {}
    batches = cases.train_batches()
    for run, (sizes, combine) in cases.TRAIN_RUNS.items():
        model = nn.SyncBatchNorm.convert_sync_batchnorm(cases.build_mlp())
        dist.broadcast_parameters(model)
        losses = []
        for x, y in batches:
            xs, ys = dist.shard((x, y), sizes=sizes)
            n = dist.global_count(len(xs))
            out = model(xs)
            loss_sum, grad = cases.cross_entropy(out, ys)
            losses.append(float(np.asarray(group.allreduce_sum(np.array([loss_sum])))[0]) / n)
            model.zero_grad()
            if combine == "scaled_sum":  # local mean-loss gradient weighted by the shard's share
                model.backward(model.backend.asarray(grad / max(len(ys), 1) * (len(ys) / n), model.dtype))
                dist.allreduce_gradients(model, average=False)
            else:  # DistributedDataParallel's convention (equal shards)
                model.backward(model.backend.asarray(grad / len(ys), model.dtype))
                dist.allreduce_gradients(model, average=True)
            cases.sgd_step(model, cases.TRAIN_LR)
        dist.check_parameters_equal(model)
        results[f"{run}/losses"] = np.array(losses)
        results.update(
            {f"{run}/state.{k}": np.array(dualnorm.to_numpy(v)) for k, v in model.state_dict().items()}
        )
    return results


def scenario_die(group: dist.ProcessGroup) -> dict[str, np.ndarray]:
    """Rank 1 dies between two collectives; rank 0 must not hang."""
    layer = nn.SyncBatchNorm(3)
    x = np.random.default_rng(group.rank).standard_normal((4, 3)).astype(np.float32)
    layer(x)
    if group.rank == 1:
        print("rank 1: dying on purpose", file=sys.stderr, flush=True)
        os._exit(3)
    for _ in range(50):
        layer(x)
        time.sleep(0.05)
    return {}


def scenario_stall(group: dist.ProcessGroup) -> dict[str, np.ndarray]:
    """Rank 1 stops communicating (but stays alive); rank 0's watchdog must end the run."""
    layer = nn.SyncBatchNorm(3)
    x = np.random.default_rng(group.rank).standard_normal((4, 3)).astype(np.float32)
    layer(x)
    if group.rank == 1:
        time.sleep(120)
    layer(x)
    return {}


def scenario_connect(group: dist.ProcessGroup) -> dict[str, np.ndarray]:
    return {}


SCENARIOS = {
    "layers": scenario_layers,
    "train": scenario_train,
    "die": scenario_die,
    "stall": scenario_stall,
    "connect": scenario_connect,
}


def main() -> None:
    engine, scenario, outdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dualnorm.set_backend({"mpi": "numpy", "mlx": "mlx"}[engine])
    group = dist.init_process_group(engine)
    if scenario not in ("connect",) and group.size != 2:
        raise SystemExit(f"expected 2 ranks, got {group.size}")
    results = SCENARIOS[scenario](group)
    np.savez(outdir / f"rank{group.rank}.npz", **results)
    (outdir / f"done{group.rank}").write_text("ok")


if __name__ == "__main__":
    main()
