"""In-process tests (no engine needed): the stable merge, SyncBatchNorm's math, conversion, helpers, watchdog.

The multi-rank math is exercised here with a test-only group whose "ranks" are threads
exchanging NumPy arrays through a barrier; the real engines are tested across processes
in ``test_distributed_engines.py``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dualnorm
import dualnorm.distributed as dist
from dualnorm import nn
from dualnorm.distributed.group import ProcessGroup
from dualnorm.errors import InputError

# --- the merge ----------------------------------------------------------------------


def _split(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1])


def _two_pass(part: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32 corrected two-pass statistics over axis 0: (mean0, correction, M2), as the layer computes them."""
    if len(part) == 0:
        zero = np.zeros(part.shape[1:], np.float32)
        return zero, zero, zero
    mean0 = part.mean(axis=0, dtype=np.float32)
    centred = part - mean0
    correction = centred.mean(axis=0, dtype=np.float32)
    m2 = (centred * centred).sum(axis=0, dtype=np.float32) - len(part) * correction * correction
    return mean0, correction, m2.astype(np.float32)


def _stats32(part: np.ndarray) -> tuple[int, np.float32, np.float32]:
    mean0, correction, m2 = _two_pass(part.astype(np.float32))
    return len(part), np.float32(mean0 + correction), np.float32(m2)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=2, max_size=6).filter(lambda s: sum(s) >= 2),
    # offset / scale up to 1e4: beyond that one float32 per mean cannot carry the digits
    # (merge_moments then takes the mean as a two-part sum; see the next test).
    location=st.sampled_from([(0.0, 1.0), (1e3, 1.0), (1e4, 1.0), (-5e4, 100.0), (1e2, 1e-2), (0.0, 1e-3)]),
    seed=st.integers(0, 2**16),
)
def test_chan_merge_matches_float64_concatenation(sizes, location, seed):
    offset, scale = location
    x = (offset + scale * np.random.default_rng(seed).standard_normal(sum(sizes))).astype(np.float32)
    acc = (0, np.float32(0), np.float32(0))
    for part in _split(x, sizes):
        acc = dist.chan_merge(acc, _stats32(part))
    n, mean, m2 = acc
    exact = x.astype(np.float64)
    assert n == len(x)
    assert abs(float(mean) - exact.mean()) <= 1e-6 * abs(offset) + 1e-5 * scale
    np.testing.assert_allclose(float(m2) / n, exact.var(), rtol=2e-3)


@pytest.mark.parametrize("xp_name", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
def test_merge_moments_is_stable_far_from_zero(xp_name):
    if xp_name == "mlx":
        mx = pytest.importorskip("mlx.core")
        xp = mx
    else:
        xp = np
    rng = np.random.default_rng(0)
    channels = 5
    x = (1e4 + 1e-2 * rng.standard_normal((203, channels))).astype(np.float32)
    sizes = [0, 1, 57, 100, 45]
    parts = _split(x, sizes)
    counts = np.array(sizes)
    hi, lo, m2s = (np.stack(column) for column in zip(*(_two_pass(p) for p in parts), strict=True))
    n, mean, m2, offsets = dist.merge_moments(xp, counts, xp.array(hi), xp.array(m2s), means_lo=xp.array(lo))
    exact = x.astype(np.float64)
    assert n == 203
    np.testing.assert_allclose(np.array(mean), exact.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(np.array(m2) / n, exact.var(axis=0), rtol=1e-3)
    # rank 2 centres its data as (x - hi - lo) - offsets[2]: the exact global centring
    want = exact.mean(axis=0) - (hi[2].astype(np.float64) + lo[2])
    np.testing.assert_allclose(np.array(offsets)[2], want, atol=1e-6)
    # The sum-of-squares formula the merge avoids is useless here (it is not even close):
    naive = (x * x).mean(axis=0, dtype=np.float32) - x.mean(axis=0, dtype=np.float32) ** 2
    assert np.max(np.abs(naive - exact.var(axis=0)) / exact.var(axis=0)) > 1.0


# --- one process: exactly BatchNorm --------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 4), (4, 3, 2, 2)])
def test_a_single_process_sync_batchnorm_is_batchnorm_exactly(backend, shape):
    rng = np.random.default_rng(1)
    ref_cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
    ref, sync = ref_cls(3), nn.SyncBatchNorm(3)
    for _ in range(2):
        x, g = rng.standard_normal(shape), rng.standard_normal(shape)
        y_ref, y = ref(x), sync(x)
        dx_ref, dx = ref.backward(g), sync.backward(g)
        np.testing.assert_array_equal(dualnorm.to_numpy(y), dualnorm.to_numpy(y_ref))
        np.testing.assert_array_equal(dualnorm.to_numpy(dx), dualnorm.to_numpy(dx_ref))
    for (k, a), (_, b) in zip(sync.state_dict().items(), ref.state_dict().items(), strict=True):
        np.testing.assert_array_equal(dualnorm.to_numpy(a), dualnorm.to_numpy(b), err_msg=k)
    np.testing.assert_array_equal(dualnorm.to_numpy(sync.weight.grad), dualnorm.to_numpy(ref.weight.grad))
    sync.eval()
    ref.eval()
    np.testing.assert_array_equal(dualnorm.to_numpy(sync(x[:1])), dualnorm.to_numpy(ref(x[:1])))


def test_single_process_keeps_batchnorm_errors(backend):
    with pytest.raises(InputError, match="more than 1 value per channel"):
        nn.SyncBatchNorm(3)(np.ones((1, 3)))
    with pytest.raises(InputError, match="channels"):
        nn.SyncBatchNorm(3)(np.ones((4, 2)))


# --- several "ranks" as threads (test-only transport) ----------------------------------


class ThreadGroup(ProcessGroup):
    """Ranks are threads of this test; the exchange is a barrier (NumPy arrays only)."""

    engine = "threads"

    def __init__(self, rank: int, shared: dict) -> None:
        super().__init__(rank, shared["size"], None)
        self.shared = shared

    def _exchange(self, array):
        self.shared["slots"][self.rank] = np.array(array, copy=True)
        self.shared["barrier"].wait(timeout=60)
        stacked = np.stack(self.shared["slots"])
        self.shared["barrier"].wait(timeout=60)
        return stacked

    def _allgather(self, array):
        return self._exchange(array)

    def _allreduce_sum(self, array):
        return self._exchange(array).sum(axis=0)


def run_ranks(size: int, fn):
    shared = {"size": size, "slots": [None] * size, "barrier": threading.Barrier(size)}
    groups = [ThreadGroup(r, shared) for r in range(size)]
    with ThreadPoolExecutor(size) as pool:
        return list(pool.map(fn, groups))


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), min_size=2, max_size=4).filter(lambda s: sum(s) >= 2),
    spatial=st.sampled_from([(), (3,), (2, 2)]),
    momentum=st.sampled_from([0.1, None]),
    seed=st.integers(0, 1000),
)
def test_sync_batchnorm_over_thread_ranks_equals_batchnorm(sizes, spatial, momentum, seed):
    rng = np.random.default_rng(seed)
    shape = (sum(sizes), 3, *spatial)
    xs = [(5.0 + rng.standard_normal(shape)).astype(np.float32) for _ in range(2)]
    gs = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    with dualnorm.use_backend("numpy"):
        ref = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)](3, momentum=momentum)
        ref_out = [(ref(x), ref.backward(g)) for x, g in zip(xs, gs, strict=True)]
        layers = [nn.SyncBatchNorm(3, momentum=momentum) for _ in sizes]

    def rank_fn(group):
        layer = layers[group.rank]
        layer.process_group = group
        rows = slice(starts[group.rank], starts[group.rank + 1])
        out = [(layer(x[rows]), layer.backward(g[rows])) for x, g in zip(xs, gs, strict=True)]
        dist.allreduce_gradients(layer, group, average=False)
        return out, layer

    results = run_ranks(len(sizes), rank_fn)
    for step, (y_ref, dx_ref) in enumerate(ref_out):
        y = np.concatenate([r[0][step][0] for r in results])
        dx = np.concatenate([r[0][step][1] for r in results])
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    for _, layer in results:
        np.testing.assert_allclose(layer.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
        assert int(layer.num_batches_tracked) == 2


def test_one_value_over_the_whole_group_is_an_error_on_every_rank():
    with dualnorm.use_backend("numpy"):
        layers = [nn.SyncBatchNorm(2), nn.SyncBatchNorm(2)]

    def rank_fn(group):
        layers[group.rank].process_group = group
        x = np.ones((1 - group.rank, 2))  # one sample on rank 0, none on rank 1
        with pytest.raises(InputError, match=r"more than 1 value per channel.*shard sizes \[1, 0\]"):
            layers[group.rank](x)
        return True

    assert all(run_ranks(2, rank_fn))


def test_eval_mode_does_not_communicate():
    class NoTalking(ThreadGroup):
        def _exchange(self, array):
            raise AssertionError("eval mode communicated")

    layer = nn.SyncBatchNorm(3, process_group=NoTalking(0, {"size": 2}))
    layer.eval()
    layer(np.ones((1, 3)))


def test_parameters_stay_in_step_and_drift_is_detected():
    with dualnorm.use_backend("numpy"):
        dualnorm.manual_seed(0)
        models = [nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)) for _ in range(2)]
    models[1][0].weight.data = models[1][0].weight.data + 1.0

    def rank_fn(group):
        model = models[group.rank]
        with pytest.raises(dist.DistributedError, match=r"'0.weight' differs"):
            dist.check_parameters_equal(model, group)
        dist.broadcast_parameters(model, group, root=0)
        dist.check_parameters_equal(model, group)
        return model

    a, b = run_ranks(2, rank_fn)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        np.testing.assert_array_equal(va, vb, err_msg=k)


# --- conversion ---------------------------------------------------------------------------


def test_convert_sync_batchnorm_replaces_batchnorms_and_keeps_state(backend):
    model = nn.Sequential(
        nn.Linear(4, 3),
        nn.BatchNorm1d(3, momentum=None),
        nn.ReLU(),
        nn.Sequential(nn.BatchNorm1d(3, affine=False)),
    )
    model(np.random.default_rng(0).standard_normal((5, 4)))
    model.eval()
    before = {k: dualnorm.to_numpy(v).copy() for k, v in model.state_dict().items()}
    weight = model[1].weight
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[3][0], nn.SyncBatchNorm)
    assert model[1].weight is weight and model[1].momentum is None and not model[3][0].affine
    assert not model[1].training
    assert model[1].backend.name == backend
    after = {k: dualnorm.to_numpy(v) for k, v in model.state_dict().items()}
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_convert_a_bare_batchnorm_and_leave_renorm_alone():
    bn = nn.BatchNorm2d(4, eps=1e-3)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(bn, process_group=dist.SingleProcessGroup())
    assert isinstance(sync, nn.SyncBatchNorm) and sync.eps == 1e-3 and sync.process_group is not None
    renorm = nn.BatchRenorm1d(4)
    assert nn.SyncBatchNorm.convert_sync_batchnorm(renorm) is renorm


# --- helpers -----------------------------------------------------------------------------


def test_shard_sizes_and_slices():
    assert dist.shard_sizes(10, 3) == [4, 3, 3]
    assert dist.shard_sizes(2, 4) == [1, 1, 0, 0]
    assert dist.shard_sizes(10, 2, [3, 7]) == [3, 7]
    with pytest.raises(dist.DistributedError, match="summing to the batch size 10"):
        dist.shard_sizes(10, 2, [3, 6])

    class Rank1(dist.SingleProcessGroup):
        def __init__(self):
            super().__init__()
            self.rank, self.size = 1, 2

    x, y = np.arange(10), np.arange(10) * 2
    assert dist.shard_slice(10, Rank1(), [3, 7]) == slice(3, 10)
    xs, ys = dist.shard((x, y), Rank1())
    assert xs.tolist() == [5, 6, 7, 8, 9] and ys.tolist() == [10, 12, 14, 16, 18]
    with pytest.raises(dist.DistributedError, match="different first dimensions"):
        dist.shard((x, y[:3]), Rank1())


def test_single_process_group_and_engine_detection(monkeypatch):
    for name in (
        "MLX_RANK",
        "MLX_HOSTFILE",
        "PMI_RANK",
        "PMI_SIZE",
        "OMPI_COMM_WORLD_SIZE",
        "DUALNORM_DIST_ENGINE",
    ):
        monkeypatch.delenv(name, raising=False)
    assert dist.detect_engine() == "single"
    monkeypatch.setenv("PMI_RANK", "0")
    assert dist.detect_engine() == "mpi"
    monkeypatch.setenv("MLX_RANK", "0")
    assert dist.detect_engine() == "mlx"
    monkeypatch.setenv("DUALNORM_DIST_ENGINE", "single")
    assert dist.detect_engine() == "single"
    monkeypatch.setenv("DUALNORM_DIST_ENGINE", "tcp")
    with pytest.raises(dist.DistributedError, match="choose one of"):
        dist.detect_engine()

    group = dist.get_default_group()
    assert (group.rank, group.size, group.engine) == (0, 1, "single")
    a = np.arange(6.0).reshape(2, 3)
    assert group.allgather(a).shape == (1, 2, 3)
    assert group.allreduce_sum(a) is a and group.broadcast(a) is a
    assert dist.global_count(7) == 7
    with pytest.raises(dist.DistributedError, match="unknown engine"):
        dist.init_process_group("gloo")


_WATCHDOG_SCRIPT = """
import time
from dualnorm.distributed.group import {fn}
with {fn}(0.5, "WATCHDOG: the peer is gone"):
    time.sleep(20)
print("not reached")
"""


@pytest.mark.parametrize("fn", ["watch", "watch_from_outside"])
def test_the_watchdogs_end_a_blocked_process_with_a_message(fn):
    proc = subprocess.run(
        [sys.executable, "-c", _WATCHDOG_SCRIPT.format(fn=fn)], capture_output=True, text=True, timeout=120
    )
    assert "WATCHDOG: the peer is gone" in proc.stderr
    assert "not reached" not in proc.stdout  # ended inside the sleep, whatever the machine's load
    assert proc.returncode == (dist.WATCHDOG_EXIT_CODE if fn == "watch" else -15)
