"""The CNN rows of ``dualnorm bench`` and ``python -m benchmarks``: Conv2d, MaxPool2d(2) and one
SimpleCNN training step, dualnorm against PyTorch CPU.

Each library runs in its own process with the same thread count, fixed before NumPy or PyTorch
starts a thread pool (OMP/OPENBLAS/MKL/DUALNORM_NUM_THREADS, ``torch.set_num_threads``): in one
process OpenBLAS's and PyTorch's pools fight over the cores (PyTorch's conv fwd+bwd went from
5.5 to 63 ms that way on 2 cores). The processes take turns, round after round; a time is the
minimum over every repeat of every round, the estimate least moved by other work on the machine.

The standalone scripts ``benchmarks/conv.py``, ``pooling.py`` and ``simple_cnn.py`` build their
dualnorm and PyTorch cases with the functions here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Conv2d 3x3, padding 1: (C, H=W, out channels) at the batch size asked (the issue's at 64)
CONV_SHAPES = ((3, 32, 32), (32, 16, 64), (32, 32, 64))
#: MaxPool2d(2): (C, H=W)
POOL_SHAPES = ((32, 32), (64, 16))
#: SimpleCNN's norm after each convolution, and the name a table shows
NORMS = {"lrn": "LRN", "batch": "BN", "group": "GN"}
BATCH = 64
QUICK_BATCH = 16
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_NUM_THREADS")
TORCH = "torch"


@dataclass(frozen=True)
class CnnCase:
    """``kind`` in {"conv", "maxpool", "step"}; ``shape`` the input's; ``out`` a conv's out
    channels; ``norm`` a step's SimpleCNN norm."""

    kind: str
    shape: tuple[int, ...]
    out: int = 0
    norm: str = ""

    @property
    def id(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        if self.kind == "conv":
            return f"Conv2d 3x3 {dims}->{self.out}"
        if self.kind == "maxpool":
            return f"MaxPool2d(2) {dims}"
        return f"SimpleCNN step ({NORMS[self.norm]}) {dims}"

    @property
    def modes(self) -> tuple[str, ...]:
        return ("step",) if self.kind == "step" else ("fwd", "fwdbwd")

    def to_json(self) -> list[Any]:
        return [self.kind, list(self.shape), self.out, self.norm]


def cnn_cases(batch: int = BATCH, norms: tuple[str, ...] = tuple(NORMS)) -> list[CnnCase]:
    """The issue's cases at ``batch``: three convolutions, two poolings, a SimpleCNN step per norm."""
    cases = [CnnCase("conv", (batch, c, hw, hw), out) for c, hw, out in CONV_SHAPES]
    cases += [CnnCase("maxpool", (batch, c, hw, hw)) for c, hw in POOL_SHAPES]
    cases += [CnnCase("step", (batch, 3, 32, 32), norm=n) for n in norms]
    return cases


def case_inputs(case: CnnCase, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The input and the upstream gradient (a step: the class labels), the same for every library."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape, dtype=np.float32)
    n, _, h, w = case.shape
    if case.kind == "conv":
        return x, rng.standard_normal((n, case.out, h, w), dtype=np.float32)
    if case.kind == "maxpool":
        return x, rng.standard_normal((n, case.shape[1], h // 2, w // 2), dtype=np.float32)
    return x, rng.integers(0, 10, n)


# --- dualnorm's callables ----------------------------------------------------------------------


def dualnorm_callables(case: CnnCase, backend: str) -> dict[str, Callable[[], Any]]:
    """mode -> one call on ``backend`` (a name or label: "numpy", "mlx", "mlx-cpu"), every lazy
    result evaluated inside the call."""
    import dualnorm

    B = dualnorm.get_backend(backend)
    x_host, g_host = case_inputs(case)
    with dualnorm.use_backend(B):
        dualnorm.manual_seed(0)
        if case.kind == "step":
            return {"step": _dualnorm_step(B, case.norm, x_host, g_host)}
        layer = (
            dualnorm.nn.Conv2d(case.shape[1], case.out, 3, padding=1)
            if case.kind == "conv"
            else dualnorm.nn.MaxPool2d(2)
        )
        x, g = B.asarray(x_host), B.asarray(g_host)
        params = list(layer.parameters())

    def fwd() -> Any:
        with dualnorm.use_backend(B):
            y = layer(x)
            B.eval(y)
        return y

    def fwdbwd() -> Any:
        with dualnorm.use_backend(B):
            layer.zero_grad()
            layer(x)
            dx = layer.backward(g)
            B.eval(dx, *(p.grad for p in params))
        return dx

    return {"fwd": fwd, "fwdbwd": fwdbwd}


def _dualnorm_step(B: Any, norm: str, x_host: np.ndarray, y_host: np.ndarray) -> Callable[[], float]:
    """One training step as training does it: zero_grad, forward, cross-entropy, backward, SGD
    with momentum."""
    import dualnorm
    from dualnorm.losses import CrossEntropyLoss
    from dualnorm.models import simple_cnn
    from dualnorm.optim import SGD

    model = simple_cnn(norm)
    loss_fn = CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = B.asarray(x_host), B.asarray(y_host, B.int64)
    params = list(model.parameters())

    def step() -> float:
        with dualnorm.use_backend(B):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            if B.lazy:
                B.eval(loss, *(p.data for p in params), *opt.state_arrays())
            return float(loss.item())

    return step


# --- PyTorch's callables -----------------------------------------------------------------------


def torch_simple_cnn(norm: str) -> Any:
    """The seed's SimpleCNN in PyTorch (note 001), with the norm after each convolution swapped."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LocalResponseNorm(nn.Module):  # the seed's own wrapper: k = 2.0
        def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
            super().__init__()
            self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def make(c: int) -> nn.Module:
        return {
            "lrn": lambda: LocalResponseNorm(5),
            "batch": lambda: nn.BatchNorm2d(c),
            "group": lambda: nn.GroupNorm(8, c),
        }[norm]()

    prefix = {"lrn": "lrn", "batch": "bn", "group": "gn"}[norm]

    class SimpleCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
            setattr(self, f"{prefix}1", make(32))
            self.pool1 = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            setattr(self, f"{prefix}2", make(64))
            self.pool2 = nn.MaxPool2d(2, 2)
            self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
            setattr(self, f"{prefix}3", make(128))
            self.pool3 = nn.MaxPool2d(2, 2)
            self.fc1 = nn.Linear(128 * 4 * 4, 256)
            self.fc2 = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in (1, 2, 3):
                conv, nrm, pool = (getattr(self, f"{n}{i}") for n in ("conv", prefix, "pool"))
                x = pool(F.relu(nrm(conv(x))))
            x = x.view(-1, 128 * 4 * 4)
            return self.fc2(F.relu(self.fc1(x)))

    return SimpleCNN()


def torch_callables(case: CnnCase) -> dict[str, Callable[[], Any]]:
    """mode -> one PyTorch CPU call, on the same inputs as :func:`dualnorm_callables`."""
    import torch

    x_host, g_host = case_inputs(case)
    if case.kind == "step":
        return {"step": _torch_step(case.norm, x_host, g_host)}
    torch.manual_seed(0)
    layer = (
        torch.nn.Conv2d(case.shape[1], case.out, 3, padding=1)
        if case.kind == "conv"
        else torch.nn.MaxPool2d(2)
    )
    x = torch.from_numpy(x_host).requires_grad_(True)
    g = torch.from_numpy(g_host)

    def fwd() -> Any:
        with torch.no_grad():
            return layer(x)

    def fwdbwd() -> Any:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(g)
        return x.grad

    return {"fwd": fwd, "fwdbwd": fwdbwd}


def _torch_step(norm: str, x_host: np.ndarray, y_host: np.ndarray) -> Callable[[], float]:
    """PyTorch's training step, starting from dualnorm's initial weights."""
    import torch

    import dualnorm
    from dualnorm.models import simple_cnn

    with dualnorm.use_backend("numpy"):
        dualnorm.manual_seed(0)
        state = {
            k: torch.from_numpy(dualnorm.to_numpy(v).copy()) for k, v in simple_cnn(norm).state_dict().items()
        }
    model = torch_simple_cnn(norm)
    model.load_state_dict(state)
    x, y = torch.from_numpy(x_host), torch.from_numpy(y_host)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.item())

    return step


# --- one library in its own process ------------------------------------------------------------


def worker(library: str, cases: list[CnnCase], repeats: int, threads: int) -> dict[str, Any]:
    """In the child: every case's calls on ``library`` ("torch" or a dualnorm backend label),
    round-robin over the case's modes; returns {"threads": n, "times": {case id: {mode: [s, ...]}}}."""
    from dualnorm.bench import time_interleaved

    if library == TORCH:
        import torch

        torch.set_num_threads(threads)
        used = torch.get_num_threads()
    else:
        from dualnorm.backends import kernels_numpy

        kernels_numpy.set_num_threads(threads)
        used = kernels_numpy.get_num_threads()
    times = {}
    for case in cases:
        fns = torch_callables(case) if library == TORCH else dualnorm_callables(case, library)
        times[case.id] = time_interleaved(fns, repeats=repeats, warmup=2)
        del fns
    return {"threads": used, "times": times}


def _worker_main() -> None:
    spec = json.loads(sys.stdin.read())
    cases = [CnnCase(k, tuple(s), o, n) for k, s, o, n in spec["cases"]]
    print(json.dumps(worker(spec["library"], cases, spec["repeats"], spec["threads"])))


def run_timing_child(statement: str, spec: dict[str, Any], threads: int, what: str) -> dict[str, Any]:
    """Run ``statement`` in a fresh Python whose thread pools are pinned to ``threads``, with ``spec``
    as JSON on its stdin; its last line of output is the JSON reply. One library per process: in one
    process, OpenBLAS's and PyTorch's thread pools fight over the cores."""
    import dualnorm

    env = dict(os.environ, **dict.fromkeys(THREAD_VARS, str(threads)))
    root = os.path.dirname(os.path.dirname(os.path.abspath(dualnorm.__file__)))  # this dualnorm, there too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", statement],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {what} timing process failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_in_process(library: str, cases: list[CnnCase], repeats: int, threads: int) -> dict[str, Any]:
    """:func:`worker` in a fresh Python process whose thread pools are pinned to ``threads``."""
    spec = {"library": library, "cases": [c.to_json() for c in cases], "repeats": repeats, "threads": threads}
    return run_timing_child(
        "from dualnorm.bench_cnn import _worker_main; _worker_main()", spec, threads, library
    )


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def run_cnn(
    backends: list[str],
    cases: list[CnnCase],
    *,
    repeats: int,
    rounds: int,
    threads: int,
    with_torch: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Any], dict[str, int]]:
    """Time ``cases`` on every dualnorm backend (row key ``dualnorm-<label>``) and on PyTorch CPU
    (``torch``, when installed and ``with_torch``), one process per library and round, in turns;
    returns one :class:`~dualnorm.bench.LayerResult` per case and mode (minimum seconds), and the
    thread count each library ran with."""
    from dualnorm.bench import LayerResult

    libraries = list(backends) + ([TORCH] if with_torch and torch_installed() else [])
    best: dict[tuple[str, str], dict[str, float]] = {}
    threads_used: dict[str, int] = {}
    for r in range(rounds):
        for library in libraries if r % 2 == 0 else reversed(libraries):
            if progress is not None:
                progress(f"CNN rows: {library}, round {r + 1}/{rounds} (its own process)")
            reply = run_in_process(library, cases, repeats, threads)
            key = library if library == TORCH else f"dualnorm-{library}"
            threads_used[key] = reply["threads"]
            for case_id, modes in reply["times"].items():
                for mode, values in modes.items():
                    slot = best.setdefault((case_id, mode), {})
                    slot[key] = min([*values, slot.get(key, float("inf"))])
    results = [LayerResult(c.id, mode, best[(c.id, mode)]) for c in cases for mode in c.modes]
    return results, threads_used


def pass_name(mode: str) -> str:
    return {"fwd": "forward", "fwdbwd": "fwd+bwd", "step": "train step"}.get(mode, mode)
