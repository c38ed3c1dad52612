"""Layer benchmarks: dualnorm (NumPy, MLX) against a textbook NumPy version, PyTorch CPU,
``mlx.nn`` and the memory floor, on the same float32 inputs in one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import dualnorm
from dualnorm.bench import Case, LayerResult, dualnorm_impl, inputs, median, time_interleaved

EPS = 1e-5


# --- the textbook NumPy version (mean, subtract, var, divide) and its backward ---------------


def _axes(case: Case, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """(array to normalize, reduce axes, parameter broadcast shape)."""
    if case.kind == "batchnorm":
        return x, (0, *range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if case.kind == "layernorm":
        return x, (x.ndim - 1,), (x.shape[-1],)
    return x.reshape(x.shape[0], case.groups, -1), (2,), (1, x.shape[1], 1, 1)


def textbook(case: Case, x: np.ndarray, g: np.ndarray) -> dict[str, Callable[[], Any]]:
    c = case.channels
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    _, axes, pshape = _axes(case, x)
    wr, br = w.reshape(pshape), b.reshape(pshape)

    def forward() -> tuple[Any, ...]:
        xs, _, _ = _axes(case, x)
        mu = xs.mean(axis=axes, keepdims=True)
        xc = xs - mu
        var = (xc**2).mean(axis=axes, keepdims=True)
        std = np.sqrt(var + EPS)
        xhat = xc / std
        y = wr * xhat.reshape(x.shape) + br
        return y, xc, std, xhat

    def fwdbwd() -> Any:
        _, xc, std, xhat = forward()
        sum_axes = (0, *range(2, x.ndim)) if case.kind != "layernorm" else tuple(range(x.ndim - 1))
        _dbeta = g.sum(axis=sum_axes)
        _dgamma = (xhat.reshape(x.shape) * g).sum(axis=sum_axes)
        dxhat = (g * wr).reshape(xc.shape)
        m = xc.size // std.size
        dxc = dxhat / std
        dstd = -np.sum((dxhat * xc) / (std * std), axis=axes, keepdims=True)
        dvar = 0.5 * dstd / std
        dxc += (2.0 / m) * xc * dvar
        dmu = np.sum(dxc, axis=axes, keepdims=True)
        dx = dxc - dmu / m
        return dx.reshape(x.shape)

    return {"fwd": lambda: forward()[0], "fwdbwd": fwdbwd}


# --- PyTorch CPU -----------------------------------------------------------------------------


def torch_impl(case: Case, x: np.ndarray, g: np.ndarray) -> dict[str, Callable[[], Any]] | None:
    try:
        import torch
    except ImportError:
        return None
    c = case.channels
    if case.kind == "batchnorm":
        layer = torch.nn.BatchNorm1d(c) if x.ndim <= 3 else torch.nn.BatchNorm2d(c)
    elif case.kind == "layernorm":
        layer = torch.nn.LayerNorm(c)
    else:
        layer = torch.nn.GroupNorm(case.groups, c)
    layer.train()
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tg = torch.from_numpy(g.copy())

    def fwd() -> Any:
        with torch.no_grad():
            return layer(tx)

    def fwdbwd() -> Any:
        tx.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(tx).backward(tg)
        return tx.grad

    return {"fwd": fwd, "fwdbwd": fwdbwd}


# --- mlx.nn (channels-last) ------------------------------------------------------------------


def mlx_nn_impl(case: Case, x: np.ndarray, g: np.ndarray) -> dict[str, Callable[[], Any]] | None:
    try:
        import mlx.core as mx
        import mlx.nn as mnn
    except ImportError:
        return None
    c = case.channels
    # MLX layers are channels-last: transpose once, outside the timed region.
    perm = (0, *range(2, x.ndim), 1) if case.kind != "layernorm" else tuple(range(x.ndim))
    xm = mx.array(np.ascontiguousarray(x.transpose(perm)))
    gm = mx.array(np.ascontiguousarray(g.transpose(perm)))
    mx.eval(xm, gm)
    if case.kind == "batchnorm":
        layer = mnn.BatchNorm(c)
    elif case.kind == "layernorm":
        layer = mnn.LayerNorm(c)
    else:
        layer = mnn.GroupNorm(case.groups, c, pytorch_compatible=True)
    layer.train()

    def loss(params: Any, xx: Any) -> Any:
        layer.update(params)
        return mx.sum(layer(xx) * gm)

    grad_fn = mx.value_and_grad(loss, argnums=(0, 1))

    def fwd() -> Any:
        y = layer(xm)
        mx.eval(y)
        return y

    def fwdbwd() -> Any:
        value, (gp, gx) = grad_fn(layer.trainable_parameters(), xm)
        mx.eval(value, gp, gx)
        return gx

    return {"fwd": fwd, "fwdbwd": fwdbwd}


# --- the NumPy backend with and without the compiler ------------------------------------------


def kernel_tables() -> dict[str, dict[str, Callable[..., Any]]]:
    """Row name -> the NumPy backend's kernel table: the NumPy kernels, and numba's when installed."""
    from dualnorm.backends import kernels_numba, kernels_numpy

    tables = {"dualnorm-numpy": dict(kernels_numpy.KERNELS)}
    if kernels_numba.available():
        tables["dualnorm-numpy+numba"] = dict(kernels_numba.KERNELS)
    return tables


def with_kernels(B: Any, table: dict[str, Callable[..., Any]], fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with ``table`` installed as the backend's kernels (a forward and its backward share it)."""

    def call() -> Any:
        saved = B.kernels
        B.kernels = table
        try:
            return fn()
        finally:
            B.kernels = saved

    return call


# --- all together ----------------------------------------------------------------------------


def run(cases: tuple[Case, ...], repeats: int, progress: Callable[[str], None] = print) -> list[LayerResult]:
    backends = dualnorm.available_backends()
    results = []
    for case in cases:
        progress(f"layers: {case.id}")
        x, g = inputs(case)
        impls: dict[str, dict[str, Callable[[], Any]]] = {}
        floors: dict[str, Callable[[], Any]] = {}
        for b in backends:
            d = dualnorm_impl(case, b, x, g)
            floors[f"floor-{b}"] = d["floor"]
            if b != "numpy":
                impls[f"dualnorm-{b}"] = d
                continue
            B = dualnorm.get_backend("numpy")
            for name, table in kernel_tables().items():
                impls[name] = {k: with_kernels(B, table, f) for k, f in d.items()}
        impls["numpy-textbook"] = textbook(case, x, g)
        for name, maker in (("torch", torch_impl), ("mlx.nn", mlx_nn_impl)):
            impl = maker(case, x, g)
            if impl is not None:
                impls[name] = impl
        for mode in ("fwd", "fwdbwd"):
            fns = {name: impl[mode] for name, impl in impls.items()}
            fns.update(floors)
            times = time_interleaved(fns, repeats=repeats, warmup=2)
            results.append(LayerResult(case.id, mode, {k: median(v) for k, v in times.items()}))
    return results
