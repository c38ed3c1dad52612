"""One SimpleCNN training step at batch 64 (the seeds' network, 3x32x32 input): dualnorm vs PyTorch CPU.

    python -m benchmarks.simple_cnn                  # LRN, BN and GN; 2 threads; NumPy and torch
    python -m benchmarks.simple_cnn --backends numpy,mlx --norms lrn --threads 2 --rounds 3

A step is what training does: zero_grad, forward, cross-entropy, backward, SGD-with-momentum
update. Each library runs in its own process with the same thread count (in one process
OpenBLAS's and PyTorch's thread pools fight over the cores), and the processes take turns:
``--rounds`` rounds of one process per library and norm, each timing ``--steps`` steps after
warm-up. Reported: the minimum step time over all rounds, in milliseconds, and the ratio to
PyTorch's from the same run. PyTorch's network is the seed's own module (its LRN is
``F.local_response_norm`` with k = 2), with dualnorm's initial weights loaded into it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

BATCH = 64
NORMS = ("lrn", "batch", "group")


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_NUM_THREADS"):
        os.environ[var] = str(n)


def _data(seed: int = 0) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    return x, y


def _time_steps(step: Any, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def _dualnorm_worker(backend: str, norm: str, steps: int, warmup: int) -> list[float]:
    import dualnorm
    from dualnorm.losses import CrossEntropyLoss
    from dualnorm.models import simple_cnn
    from dualnorm.optim import SGD

    x_host, y_host = _data()
    with dualnorm.use_backend(backend, device="cpu" if backend == "mlx" else None):
        dualnorm.manual_seed(0)
        be = dualnorm.get_backend()
        model = simple_cnn(norm)
        loss_fn = CrossEntropyLoss()
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = be.asarray(x_host), be.asarray(y_host, be.int64)
        params = list(model.parameters())

        def step() -> None:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            if be.lazy:
                be.eval(loss, *(p.data for p in params), *opt.state_arrays())
            float(loss.item())

        return _time_steps(step, steps, warmup)


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


def _torch_worker(norm: str, steps: int, warmup: int, threads: int) -> list[float]:
    import torch

    import dualnorm
    from dualnorm.models import simple_cnn

    torch.set_num_threads(threads)
    with dualnorm.use_backend("numpy"):
        dualnorm.manual_seed(0)
        state = {
            k: torch.from_numpy(dualnorm.to_numpy(v).copy()) for k, v in simple_cnn(norm).state_dict().items()
        }
    model = torch_simple_cnn(norm)
    model.load_state_dict(state)
    x_host, y_host = _data()
    x, y = torch.from_numpy(x_host), torch.from_numpy(y_host)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        float(loss.item())

    return _time_steps(step, steps, warmup)


def _worker(args: argparse.Namespace) -> None:
    if args.worker == "torch":
        times = _torch_worker(args.norm, args.steps, args.warmup, args.threads)
    else:
        times = _dualnorm_worker(args.worker, args.norm, args.steps, args.warmup)
    print(json.dumps({"times": times}))


def _spawn(library: str, norm: str, args: argparse.Namespace) -> list[float]:
    cmd = [sys.executable, "-m", "benchmarks.simple_cnn", "--worker", library, "--norm", norm]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUALNORM_NUM_THREADS"):
        env[var] = str(args.threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{library}/{norm} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["times"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.simple_cnn", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--backends", default="numpy", help="dualnorm backends, comma-separated (default numpy)"
    )
    parser.add_argument("--norms", default=",".join(NORMS), help=f"comma-separated of {', '.join(NORMS)}")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per library and norm, taking turns")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--norm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _set_threads(args.threads)
    if args.worker:
        _worker(args)
        return 0
    libraries = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch is not installed: timing dualnorm alone", file=sys.stderr)
        else:
            libraries.append("torch")
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    best: dict[tuple[str, str], float] = {}
    for r in range(args.rounds):
        for norm in norms:
            for library in libraries:
                t = min(_spawn(library, norm, args)) * 1e3
                best[(library, norm)] = min(best.get((library, norm), float("inf")), t)
                print(f"round {r + 1}: {library:6s} {norm:6s} {t:8.1f} ms", file=sys.stderr)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(
        f"SimpleCNN training step, batch {BATCH}, {args.threads} threads, best of {args.rounds}x{args.steps} "
        f"steps (ms; load average {load:.1f})"
    )
    header = f"{'norm':8s}" + "".join(f"{lib:>12s}" for lib in libraries)
    if "torch" in libraries:
        header += "".join(f"{lib + '/torch':>14s}" for lib in libraries if lib != "torch")
    print(header)
    for norm in norms:
        row = f"{norm:8s}" + "".join(f"{best[(lib, norm)]:12.1f}" for lib in libraries)
        if "torch" in libraries:
            row += "".join(
                f"{best[(lib, norm)] / best[('torch', norm)]:14.2f}" for lib in libraries if lib != "torch"
            )
        print(row)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({f"{lib}/{norm}": ms for (lib, norm), ms in best.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
