"""Pooling over channels-first input: max, average and adaptive average, in 1-d and 2-d.

PyTorch's layers, arguments, output sizes, ``repr`` and errors, with an explicit backward.
A window of ``kernel_size`` places (``dilation`` apart) moves by ``stride`` over the input
padded by ``padding`` on each side; the output length along a dimension of size L is::

    out = floor((L + 2·padding - dilation·(kernel_size - 1) - 1) / stride) + 1

(``ceil`` with ``ceil_mode=True``, as long as the last window starts inside the input or its
left padding). The maths is in :mod:`dualnorm.nn.functional` (``max_pool2d``, ``avg_pool2d``,
``adaptive_avg_pool2d``); the 1-d layers view (N, C, L) as (N, C, 1, L).

>>> import numpy as np, dualnorm
>>> pool = dualnorm.nn.MaxPool2d(2)
>>> pool
MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
>>> dualnorm.to_numpy(pool(np.arange(16.0).reshape(1, 1, 4, 4))).tolist()
[[[[5.0, 7.0], [13.0, 15.0]]]]
"""

from __future__ import annotations

from typing import Any

from dualnorm.errors import InputError, RuntimeInputError
from dualnorm.nn import functional as F
from dualnorm.nn.activations import _FollowsInput


def _ints(owner: str, name: str, value: Any, dims: int, fn: str) -> tuple[int, ...]:
    """An int or a tuple of 1 or ``dims`` ints, as a ``dims``-tuple (PyTorch's rule)."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise InputError(
            f"{owner}: {name} must be an int or a tuple of {dims} ints, got {value!r}", type_error=True
        )
    if len(items) not in (1, dims):
        pair = "a single int" if dims == 1 else f"a single int, or a tuple of {dims} ints"
        raise RuntimeInputError(f"{owner}: {fn}: {name} must either be {pair}; got {value!r}")
    return items * dims if len(items) == 1 else items


# PyTorch's functions whose rank check is the generic "Expected 2 to 3 dimensions" one.
_TORCH_CHECKS_ARGUMENTS = ("avg_pool1d", "adaptive_avg_pool1d")


def _dims_message(owner: str, fn: str, x: Any, dims: int, layout: str) -> str:
    return (
        f"{owner}: Expected {dims + 1} to {dims + 2} dimensions, but got {x.ndim}-dimensional tensor "
        f"(while checking arguments for {fn}); pass {layout} input."
    )


class _Pool(_FollowsInput):
    """Shared by the pooling layers: geometry checks, batched/unbatched input, empty input."""

    _dims: int  # spatial dimensions: 1 or 2
    _fn: str  # PyTorch's function name, for the messages

    def _owner(self) -> str:
        return type(self).__name__

    def _check_input(self, x: Any) -> None:
        dims = self._dims
        layout = "(C, L) or (N, C, L)" if dims == 1 else "(C, H, W) or (N, C, H, W)"
        if x.ndim not in (dims + 1, dims + 2) and self._fn in _TORCH_CHECKS_ARGUMENTS:
            raise RuntimeInputError(_dims_message(self._owner(), self._fn, x, dims, layout))
        if x.ndim not in (dims + 1, dims + 2) or any(d == 0 for d in x.shape[x.ndim - dims - 1 :]):
            raise RuntimeInputError(
                f"{self._owner()}: {self._fn}: Expected {dims + 1}D or {dims + 2}D (batch mode) tensor with "
                f"optional 0 dim batch size for input, but got: {list(x.shape)}. Pass {layout} input with "
                "non-zero channel and spatial sizes."
            )

    def _as_4d(self, x: Any) -> Any:
        """(N, C, H, W) view of the input: a batch of one for unbatched input, H = 1 in 1-d."""
        if x.ndim == self._dims + 1:
            x = x.reshape(1, *x.shape)
        return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if self._dims == 1 else x

    def _out_shape(self, x: Any, out_hw: tuple[int, int]) -> tuple[int, ...]:
        """The output shape as the caller sees it (unbatched stays unbatched, 1-d stays 1-d)."""
        spatial = out_hw[1:] if self._dims == 1 else out_hw
        return (*x.shape[: x.ndim - self._dims], *spatial)

    def _geometry(
        self, x: Any, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
    ) -> tuple[tuple[int, int], ...]:
        """Checked (kernel, stride, padding, dilation, out_hw) as 2-d pairs; raises as PyTorch.

        Remembered per input shape and arguments: on small inputs the checks cost as much as
        the pooling. Only a geometry that passed is remembered, so a bad call raises every time.
        """
        key = (tuple(x.shape), repr((kernel, stride, padding, dilation, ceil_mode)))
        cache = self.__dict__.setdefault("_geometry_cache", {})
        found = cache.get(key)
        if found is None:
            found = self._check_geometry(x, kernel, stride, padding, dilation, ceil_mode)
            if len(cache) >= 8:
                cache.clear()
            cache[key] = found
        return found

    def _check_geometry(
        self, x: Any, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
    ) -> tuple[tuple[int, int], ...]:
        owner, dims, fn = self._owner(), self._dims, self._fn
        k = _ints(owner, "kernel_size", kernel, dims, fn)
        s = _ints(owner, "stride", stride, dims, fn)
        p = _ints(owner, "padding", padding, dims, fn)
        d = _ints(owner, "dilation", dilation, dims, fn)
        self._check_input(x)
        if any(v < 0 for v in p):
            raise RuntimeInputError(f"{owner}: pad must be non-negative, but got pad: {padding!r}")
        if any(v == 0 for v in s):
            raise RuntimeInputError(f"{owner}: stride should not be zero (got stride={stride!r})")
        if any(v < 0 for v in s):
            raise RuntimeInputError(f"{owner}: stride should be greater than zero, but got stride={stride!r}")
        if any(v <= 0 for v in k):
            raise RuntimeInputError(
                f"{owner}: kernel size should be greater than zero, but got kernel_size={kernel!r}"
            )
        if any(v <= 0 for v in d):
            raise RuntimeInputError(
                f"{owner}: dilation should be greater than zero, but got dilation={dilation!r}"
            )
        for kv, pv, dv in zip(k, p, d, strict=True):
            if pv > ((kv - 1) * dv + 1) // 2:
                raise RuntimeInputError(
                    f"{owner}: pad should be at most half of effective kernel size, but got pad={pv}, "
                    f"kernel_size={kv} and dilation={dv}"
                )
            if pv > kv // 2:
                raise RuntimeInputError(
                    f"{owner}: pad should be smaller than or equal to half of kernel size, but got "
                    f"padding={padding!r}, kernel_size={kernel!r}"
                )
        spatial = x.shape[x.ndim - dims :]
        out = tuple(
            F.pool_output_size(n, kv, sv, pv, dv, ceil_mode)
            for n, kv, sv, pv, dv in zip(spatial, k, s, p, d, strict=True)
        )
        if any(o < 1 for o in out):
            channels = x.shape[x.ndim - dims - 1]
            raise RuntimeInputError(
                f"{owner}: Given input size: ({'x'.join(map(str, (channels, *spatial)))}). Calculated output "
                f"size: ({'x'.join(map(str, (channels, *out)))}). Output size is too small; use a smaller "
                "kernel_size or dilation, more padding, or a larger input."
            )

        def pair(values: tuple[int, ...], fill: int) -> tuple[int, int]:
            return (fill, values[0]) if dims == 1 else (values[0], values[1])

        return pair(k, 1), pair(s, 1), pair(p, 0), pair(d, 1), pair(out, 1)

    def _empty(self, x: Any, out_shape: tuple[int, ...], indices: bool = False) -> Any:
        """An empty batch: an empty output (and indices), as PyTorch; backward gives an empty gradient."""
        self._save(empty=True, out_shape=out_shape, in_shape=tuple(x.shape), dtype=x.dtype)
        y = self.xp.zeros(out_shape, dtype=x.dtype)
        return (y, self.xp.zeros(out_shape, dtype=self.backend.int64)) if indices else y

    def _finish_4d(self, x: Any, y: Any, ctx: Any, out_shape: tuple[int, ...]) -> Any:
        """Keep what :meth:`_backward_4d` needs, and give the (N, C, H, W) result ``x``'s own layout."""
        self._save(
            ctx=ctx, out_shape=out_shape, out_4d=tuple(y.shape), in_shape=tuple(x.shape), dtype=x.dtype
        )
        return y.reshape(out_shape)

    def _backward_4d(self, grad_output: Any, backward: Any) -> Any:
        saved = self._saved_values()
        grad = self._check_grad(grad_output, saved["out_shape"], saved["dtype"])
        if saved.get("empty"):
            return self.xp.zeros(saved["in_shape"], dtype=saved["dtype"])
        grad4 = grad.reshape(saved["out_4d"])
        return backward(self.backend, grad4, saved["ctx"]).reshape(saved["in_shape"])


class _MaxPool(_Pool):
    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        dilation: Any = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
        *,
        dtype: str | None = None,
    ) -> None:
        super().__init__(dtype=dtype)
        # Kept as given (an int or a tuple), as PyTorch keeps them: the repr shows them so.
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        kernel, stride, padding, dilation, out_hw = self._geometry(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )
        out_shape = self._out_shape(x, out_hw)
        if x.size == 0:
            return self._empty(x, out_shape, self.return_indices)
        x4 = self._as_4d(x)
        y, indices, ctx = F.max_pool2d(
            self.backend, x4, kernel, stride, padding, dilation, out_hw, self.return_indices
        )
        y = self._finish_4d(x, y, ctx, out_shape)
        return (y, indices.reshape(out_shape)) if self.return_indices else y

    def backward(self, grad_output: Any) -> Any:
        """dL/dx: each output's gradient goes to the first maximum of its window."""
        return self._backward_4d(grad_output, F.max_pool2d_backward)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class MaxPool1d(_MaxPool):
    """Max over windows of (N, C, L) or (C, L) input.

    Args:
        kernel_size: window length.
        stride: window step (default ``kernel_size``).
        padding: implicit -inf on both sides, at most half the kernel size.
        dilation: spacing between the window's places.
        return_indices: also return the flat index of each maximum in its input row.
        ceil_mode: round the output length up (see the module docstring).
    """

    _dims = 1
    _fn = "max_pool1d"


class MaxPool2d(_MaxPool):
    """Max over windows of (N, C, H, W) or (C, H, W) input.

    Args as :class:`MaxPool1d`, each an int or an (h, w) pair; ``return_indices`` gives flat
    indices into each H·W plane (``h * W + w``), as ``torch.nn.MaxPool2d``. Ties: the first
    maximum in the window (row by row) gets the gradient; a NaN in a window wins.
    """

    _dims = 2
    _fn = "max_pool2d"


class _AvgPool(_Pool):
    def _avg_forward(self, x: Any, count_include_pad: bool, divisor_override: int | None) -> Any:
        x = self._input(x)
        if divisor_override is not None and divisor_override == 0:
            raise RuntimeInputError(f"{self._owner()}: divisor must be not zero (got divisor_override=0)")
        kernel, stride, padding, _, out_hw = self._geometry(
            x, self.kernel_size, self.stride, self.padding, 1, self.ceil_mode
        )
        out_shape = self._out_shape(x, out_hw)
        if x.size == 0:
            return self._empty(x, out_shape)
        y, ctx = F.avg_pool2d(
            self.backend, self._as_4d(x), kernel, stride, padding, out_hw, count_include_pad, divisor_override
        )
        return self._finish_4d(x, y, ctx, out_shape)

    def backward(self, grad_output: Any) -> Any:
        """dL/dx: each output's gradient, divided as in the forward, goes to every place of its window."""
        return self._backward_4d(grad_output, F.avg_pool2d_backward)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool1d(_AvgPool):
    """Mean over windows of (N, C, L) or (C, L) input.

    Args:
        kernel_size: window length.
        stride: window step (default ``kernel_size``).
        padding: implicit zeros on both sides, at most half the kernel size.
        ceil_mode: round the output length up.
        count_include_pad: count the padding zeros in the divisor (default True).
    """

    _dims = 1
    _fn = "avg_pool1d"

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        *,
        dtype: str | None = None,
    ) -> None:
        super().__init__(dtype=dtype)
        # PyTorch keeps AvgPool1d's sizes as 1-tuples (its repr shows kernel_size=(3,)).
        self.kernel_size = _single(kernel_size)
        self.stride = _single(stride if stride is not None else kernel_size)
        self.padding = _single(padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: Any) -> Any:
        return self._avg_forward(x, self.count_include_pad, None)


class AvgPool2d(_AvgPool):
    """Mean over windows of (N, C, H, W) or (C, H, W) input.

    Args as :class:`AvgPool1d` (each an int or an (h, w) pair), and ``divisor_override``: divide
    every window's sum by this number instead of its size.
    """

    _dims = 2
    _fn = "avg_pool2d"

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        *,
        dtype: str | None = None,
    ) -> None:
        super().__init__(dtype=dtype)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override

    def forward(self, x: Any) -> Any:
        return self._avg_forward(x, self.count_include_pad, self.divisor_override)


def _single(value: Any) -> Any:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


class _AdaptiveAvgPool(_Pool):
    def __init__(self, output_size: Any, *, dtype: str | None = None) -> None:
        super().__init__(dtype=dtype)
        self.output_size = output_size

    def _out_hw(self, x: Any) -> tuple[int, int]:
        owner, dims, fn = self._owner(), self._dims, self._fn
        size = self.output_size
        items = tuple(size) if isinstance(size, (tuple, list)) else (size,) * dims
        if len(items) != dims:
            raise RuntimeInputError(f"{owner}: {fn}: output_size must be {dims}, got {size!r}")
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in items):
            raise InputError(
                f"{owner}: output_size must be an int, None or a tuple of them, got {size!r}", type_error=True
            )
        layout = "(C, L) or (N, C, L)" if dims == 1 else "(C, H, W) or (N, C, H, W)"
        if x.ndim not in (dims + 1, dims + 2) and fn in _TORCH_CHECKS_ARGUMENTS:
            raise RuntimeInputError(_dims_message(owner, fn, x, dims, layout))
        if x.ndim not in (dims + 1, dims + 2):
            raise RuntimeInputError(
                f"{owner}: {fn}(): Expected {dims + 1}D or {dims + 2}D tensor, but got {list(x.shape)}; "
                f"pass {layout} input."
            )
        spatial = x.shape[x.ndim - dims :]
        out = tuple(n if v is None else v for n, v in zip(spatial, items, strict=True))
        if any(v < 0 for v in out):
            raise RuntimeInputError(
                f"{owner}: {fn}: elements of output_size must be greater than or equal to 0 but received "
                f"{size!r}"
            )
        # As PyTorch: every dimension after the first must be non-empty (so an unbatched input with
        # no channels passes), the 1-d layer seen as 2-d with a height of 1.
        for axis in range(1, x.ndim):
            if x.shape[axis] == 0:
                raise RuntimeInputError(
                    f"{owner}: {fn}(): Expected input to have non-zero size for non-batch dimensions, but "
                    f"input has sizes {list(x.shape)} with dimension {axis} being empty"
                )
        return (1, out[0]) if dims == 1 else (out[0], out[1])

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        out_hw = self._out_hw(x)
        out_shape = self._out_shape(x, out_hw)
        if x.size == 0 or 0 in out_hw:
            return self._empty(x, out_shape)
        y, ctx = F.adaptive_avg_pool2d(self.backend, self._as_4d(x), out_hw)
        return self._finish_4d(x, y, ctx, out_shape)

    def backward(self, grad_output: Any) -> Any:
        """dL/dx: each output's gradient, divided by its window's size, goes to every place of it."""
        return self._backward_4d(grad_output, F.adaptive_avg_pool2d_backward)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """Mean over ``output_size`` windows that cover (N, C, L) or (C, L) input.

    Window i spans [floor(i·L/out), ceil((i+1)·L/out)): windows overlap when ``out`` does not
    divide L, as in PyTorch.
    """

    _dims = 1
    _fn = "adaptive_avg_pool1d"


class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """Mean over an ``output_size`` grid of windows that cover (N, C, H, W) or (C, H, W) input.

    ``output_size``: an int (square), or an (h, w) pair where ``None`` keeps that input size.
    Windows as in :class:`AdaptiveAvgPool1d`, per dimension.
    """

    _dims = 2
    _fn = "adaptive_avg_pool2d"
