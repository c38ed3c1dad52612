"""Conv1d and Conv2d: PyTorch's convolution layers, channels-first, with an explicit backward.

The layer holds the arguments and the checks; the maths is :func:`dualnorm.nn.functional.conv2d`
and its backward (a 1-d convolution runs as a 2-d one of height 1). A ``padding_mode`` other than
``'zeros'`` pads the input first (:func:`~dualnorm.nn.functional.conv_pad`), as PyTorch does, and
the convolution itself then pads nothing.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from dualnorm._rng import get_rng
from dualnorm.errors import InputError, RuntimeInputError
from dualnorm.nn import functional as F
from dualnorm.nn.module import Module


def _int(value: Any) -> int | None:
    """``value`` as an int if it is an integer (Python's or NumPy's, not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _tuple(value: Any, dims: int, name: str, owner: str, minimum: int) -> tuple[int, ...]:
    """An int or a tuple of ``dims`` ints, each >= ``minimum``, as a tuple (PyTorch's _pair/_single)."""
    items = (value,) * dims if _int(value) is not None else value
    try:
        ints = tuple(_int(v) for v in items)
    except TypeError:
        ints = ()
    if len(ints) != dims or any(v is None or v < minimum for v in ints):
        what = "positive" if minimum > 0 else "non-negative"
        raise InputError(f"{owner}: {name} must be a {what} int or a tuple of {dims} of them, got {value!r}")
    return ints  # type: ignore[return-value]


def _positive(value: Any, name: str, owner: str) -> int:
    number = _int(value)
    if number is None or number <= 0:
        raise InputError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return number


class _ConvNd(Module):
    """What Conv1d and Conv2d share: arguments, checks, parameters, forward, backward and repr."""

    _dims: int  # spatial dimensions

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        dtype: str | None = None,
    ) -> None:
        super().__init__(dtype=dtype)
        name, dims = type(self).__name__, self._dims
        # PyTorch's checks, in PyTorch's order, before anything is drawn from the generator.
        groups = _positive(groups, "groups", name)
        in_channels = _positive(in_channels, "in_channels", name)
        out_channels = _positive(out_channels, "out_channels", name)
        for label, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % groups:
                raise InputError(
                    f"{name}: {label} must be divisible by groups ({label}={channels}, groups={groups})"
                )
        self.kernel_size = _tuple(kernel_size, dims, "kernel_size", name, 1)
        self.stride = _tuple(stride, dims, "stride", name, 1)
        self.dilation = _tuple(dilation, dims, "dilation", name, 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise InputError(
                    f"{name}: Invalid padding string {padding!r}, should be one of {{'same', 'valid'}}"
                )
            if padding == "same" and any(s != 1 for s in self.stride):
                raise InputError(
                    f"{name}: padding='same' is not supported for strided convolutions "
                    f"(stride={self.stride}); use stride 1, or an explicit padding"
                )
            self.padding: str | tuple[int, ...] = padding
        else:
            self.padding = _tuple(padding, dims, "padding", name, 0)
        if padding_mode not in F.CONV_PADDING_MODES:
            raise InputError(
                f"{name}: padding_mode must be one of {{'circular', 'reflect', 'replicate', 'zeros'}}, "
                f"but got padding_mode={padding_mode!r}"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.padding_mode = padding_mode
        self._pads = self._pad_pairs()
        # PyTorch's default: kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the bias too.
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        bound = 1.0 / math.sqrt(math.prod(shape[1:]))
        rng = get_rng()
        self.weight = self._new_parameter(rng.uniform(-bound, bound, shape))
        self.bias = self._new_parameter(rng.uniform(-bound, bound, (out_channels,))) if bias else None

    def _pad_pairs(self) -> tuple[tuple[int, int], ...]:
        """(lo, hi) per spatial axis; 'same' puts the odd one at the end, as PyTorch does."""
        if self.padding == "valid":
            return ((0, 0),) * self._dims
        if self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            return tuple((t // 2, t - t // 2) for t in totals)
        return tuple((p, p) for p in self.padding)

    # --- forward and backward ------------------------------------------------------------
    def _check_input(self, x: Any) -> None:
        name, dims = type(self).__name__, self._dims
        if x.ndim not in (dims + 1, dims + 2):
            raise RuntimeInputError(
                f"{name}: Expected {dims + 1}D (unbatched) or {dims + 2}D (batched) input to "
                f"conv{dims}d, but got input of size: {list(x.shape)}"
            )
        batched = x.shape if x.ndim == dims + 2 else (1, *x.shape)
        if batched[1] != self.in_channels:
            raise RuntimeInputError(
                f"{name}: Given groups={self.groups}, weight of size {list(self.weight.shape)}, expected "
                f"input{list(batched)} to have {self.in_channels} channels, but got {batched[1]} channels "
                "instead"
            )
        spatial = batched[2:]
        if self.padding_mode in ("reflect", "circular"):
            # PyTorch's pad checks, last axis first, in its words
            pairs = list(enumerate(zip(spatial, self._pads, strict=True), start=2))
            for axis, (size, (lo, hi)) in reversed(pairs):
                where = f"padding ({lo}, {hi}) at dimension {axis} of input {list(batched)}"
                if self.padding_mode == "reflect" and max(lo, hi) >= max(size, 1):
                    raise RuntimeInputError(
                        f"{name}: padding_mode='reflect': Padding size should be less than the corresponding "
                        f"input dimension, but got: {where}"
                    )
                if self.padding_mode == "circular" and (max(lo, hi) > size or (size == 0 and lo + hi)):
                    raise RuntimeInputError(
                        f"{name}: padding_mode='circular': Padding value causes wrapping around more than "
                        f"once ({where})"
                    )
        if self.padding_mode == "replicate" and 0 in spatial and any(lo or hi for lo, hi in self._pads):
            raise RuntimeInputError(
                f"{name}: padding_mode='replicate' needs a non-empty input, got {list(batched)}"
            )
        padded = [s + lo + hi for s, (lo, hi) in zip(spatial, self._pads, strict=True)]
        extent = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size, strict=True)]
        if any(p < e for p, e in zip(padded, extent, strict=True)):
            raise RuntimeInputError(
                f"{name}: Calculated padded input size per channel: ({' x '.join(map(str, padded))}). "
                f"Kernel size: ({' x '.join(map(str, extent))}). Kernel size can't be greater than actual "
                "input size"
            )
        if 0 in spatial and batched[0] > 0:
            raise RuntimeInputError(
                f"{name}: Only zero batch or zero channel inputs are supported, but got input shape: "
                f"{list(batched)}"
            )

    def _as_2d(self, a: Any) -> Any:
        """A 1-d layer's (N, C, L) input or (O, C/G, k) weight as (N, C, 1, L) / (O, C/G, 1, k)."""
        return a if self._dims == 2 else a.reshape(a.shape[0], a.shape[1], 1, a.shape[2])

    def _from_2d(self, a: Any) -> Any:
        return a if self._dims == 2 else a.reshape(a.shape[0], a.shape[1], a.shape[3])

    def _conv2d_args(self) -> tuple[Any, ...]:
        """(stride, zero padding, dilation) of the 2-d convolution this layer runs."""
        pads = self._pads if self.padding_mode == "zeros" else ((0, 0),) * self._dims
        if self._dims == 2:
            return self.stride, pads, self.dilation
        return (1, *self.stride), ((0, 0), *pads), (1, *self.dilation)

    def _out_shape(self, batched: tuple[int, ...]) -> tuple[int, ...]:
        sizes = zip(batched[2:], self.kernel_size, self.stride, self._pads, self.dilation, strict=True)
        return (batched[0], self.out_channels, *(F.conv_output_size(*args) for args in sizes))

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        self._check_input(x)
        unbatched = x.ndim == self._dims + 1
        if unbatched:
            x = x.reshape(1, *x.shape)
        out_shape = self._out_shape(tuple(x.shape))
        if math.prod(out_shape) == 0:  # an empty batch: an empty output, zero parameter gradients
            self._save(empty=True, out_shape=out_shape, in_shape=tuple(x.shape), unbatched=unbatched)
            y = self.xp.zeros(out_shape, dtype=x.dtype)
            return y[0] if unbatched else y
        if self.padding_mode != "zeros":
            x = F.conv_pad(self.backend, x, self._pads, self.padding_mode)
        weight, bias = self._params()
        stride, pads, dilation = self._conv2d_args()
        y, ctx = F.conv2d(
            self.backend, self._as_2d(x), self._as_2d(weight), bias, stride, pads, dilation, self.groups
        )
        self._save(ctx=ctx, out_shape=out_shape, unbatched=unbatched)
        y = y.reshape(out_shape)
        return y[0] if unbatched else y

    def backward(self, grad_output: Any) -> Any:
        s = self._saved_values()
        out_shape = s["out_shape"]
        grad = self._check_grad(grad_output, out_shape[1:] if s["unbatched"] else out_shape)
        grad = grad.reshape(out_shape)
        if s.get("empty"):
            for param in self._parameters.values():
                self._accumulate(param, self.xp.zeros(param.shape, dtype=param.data.dtype))
            grad_in = self.xp.zeros(s["in_shape"], dtype=self.dtype)
        else:
            grad_in, grad_w, grad_b = F.conv2d_backward(
                self.backend, self._as_2d(grad), s["ctx"], self._as_2d(self.weight.data)
            )
            grad_in = self._from_2d(grad_in)
            if self.padding_mode != "zeros":
                grad_in = F.conv_pad_backward(self.backend, grad_in, self._pads, self.padding_mode)
            self._accumulate(self.weight, grad_w.reshape(self.weight.shape))
            if self.bias is not None:
                self._accumulate(self.bias, grad_b)
        return grad_in[0] if s["unbatched"] else grad_in

    def extra_repr(self) -> str:
        # PyTorch's _ConvNd.extra_repr, field for field
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._dims:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Conv2d(_ConvNd):
    """2-d convolution (cross-correlation) over (N, C, H, W) or unbatched (C, H, W) input.

    Args:
        in_channels: C, the input channels; divisible by ``groups``.
        out_channels: O, the output channels; divisible by ``groups``.
        kernel_size: an int or (kh, kw).
        stride: an int or (sh, sw) (default 1).
        padding: an int, (ph, pw), ``'valid'`` (none) or ``'same'`` (output size = input size;
            stride 1 only; an odd total pads one more at the bottom/right, as PyTorch does).
        dilation: spacing between kernel taps (default 1).
        groups: split the channels into this many independent convolutions (``groups =
            in_channels`` is a depthwise convolution).
        bias: learn a per-output-channel bias (default True).
        padding_mode: ``'zeros'`` (default), ``'reflect'``, ``'replicate'`` or ``'circular'``.
        dtype: "float32" (default) or "float64".

    ``y[n, o] = bias[o] + sum_c weight[o, c] ⋆ x[n, c]`` over the channels c of o's group, and
    OH = floor((H + 2·ph − dh·(kh − 1) − 1) / sh) + 1 (likewise OW). ``weight`` has shape
    (O, C/groups, kh, kw); both parameters start as PyTorch's do, U(−1/√fan_in, 1/√fan_in) with
    fan_in = C/groups·kh·kw, drawn from dualnorm's seeded generator.

    >>> import numpy as np, dualnorm
    >>> conv = dualnorm.nn.Conv2d(3, 8, 3, padding=1)
    >>> dualnorm.to_numpy(conv(np.ones((2, 3, 32, 32)))).shape
    (2, 8, 32, 32)
    """

    _dims = 2


class Conv1d(_ConvNd):
    """1-d convolution (cross-correlation) over (N, C, L) or unbatched (C, L) input.

    The arguments are :class:`Conv2d`'s with one number per argument (or a 1-tuple);
    ``weight`` has shape (O, C/groups, k).

    >>> import numpy as np, dualnorm
    >>> conv = dualnorm.nn.Conv1d(4, 6, 5, stride=2)
    >>> dualnorm.to_numpy(conv(np.ones((2, 4, 20)))).shape
    (2, 6, 8)
    """

    _dims = 1


__all__ = ["Conv1d", "Conv2d"]
