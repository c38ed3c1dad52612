"""Dropout (Srivastava et al. 2014): zero each unit with probability p while training.

In training the kept units are scaled by 1/(1-p), so a unit's expected output is its input and
eval mode is the identity (no rescaling at test time)::

    y = x · m / (1 - p),    m ~ Bernoulli(1 - p)

``Dropout`` draws one m per element, ``Dropout2d`` one per (sample, channel): whole feature maps
are dropped, since neighbouring pixels of a map are too correlated for per-pixel dropout to
regularize (Tompson et al. 2015).

Masks are drawn with NumPy from dualnorm's generator (:func:`dualnorm.manual_seed`), or from
the ``generator=`` given to the layer, whatever the backend: the same seed drops the same units
on NumPy and MLX, and a seeded run repeats exactly.

>>> import numpy as np, dualnorm
>>> dualnorm.manual_seed(0)
>>> drop = dualnorm.nn.Dropout(p=0.5)
>>> drop
Dropout(p=0.5, inplace=False)
>>> sorted(set(dualnorm.to_numpy(drop(np.ones((4, 4)))).ravel().tolist()))
[0.0, 2.0]
>>> dualnorm.to_numpy(drop.eval()(np.ones(3))).tolist()
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np

from dualnorm import _rng
from dualnorm.errors import InputError, RuntimeInputError
from dualnorm.nn import functional as F
from dualnorm.nn.activations import _FollowsInput


class _DropoutNd(_FollowsInput):
    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        generator: np.random.Generator | None = None,
        dtype: str | None = None,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(p, numbers.Real):
            raise InputError(f"{owner}: p must be a number in [0, 1], got {p!r}", type_error=True)
        if not 0 <= p <= 1:
            raise InputError(
                f"{owner}: dropout probability has to be between 0 and 1, but got {p}. "
                "p is the probability of zeroing a unit."
            )
        super().__init__(dtype=dtype)
        self.p = p  # as given, as PyTorch keeps it (its repr shows p=1 for an int)
        self.inplace = bool(inplace)
        self.generator = generator

    def _warn_about_rank(self, x: Any) -> None:
        """Dropout takes any rank; Dropout2d warns about some, as PyTorch."""

    def _mask_shape(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def forward(self, x: Any) -> Any:
        caller = x
        x = self._input(x)
        self._warn_about_rank(x)  # in eval mode too, as PyTorch
        if not self.training or self.p == 0 or x.size == 0:
            self._save(multiplier=None, shape=tuple(x.shape), dtype=x.dtype)
            return x
        shape = self._mask_shape(x)
        rng = self.generator if self.generator is not None else _rng.get_rng()
        multiplier = F.dropout_multiplier(self.backend, shape, float(self.p), x.dtype, rng)
        y = F.dropout(self.backend, x, multiplier)
        if self.inplace and x is caller:  # PyTorch's inplace writes into the input where it can
            y = self.backend.copy_into(x, y)
        self._save(multiplier=multiplier, shape=tuple(x.shape), dtype=x.dtype)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dL/dx: the gradient through the same mask and scale (unchanged in eval mode)."""
        saved = self._saved_values()
        grad = self._check_grad(grad_output, saved["shape"], saved["dtype"])
        if saved["multiplier"] is None:
            return grad
        return F.dropout_backward(self.backend, grad, saved["multiplier"])

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutNd):
    """Zero each element with probability ``p`` in training, scaling the rest by 1/(1-p).

    Args:
        p: probability of zeroing an element (default 0.5); p = 1 gives zeros.
        inplace: write the result into the input array where the backend allows it (NumPy),
            as PyTorch's ``inplace=True``.
        generator: a ``numpy.random.Generator`` for the masks (default: dualnorm's, seeded by
            :func:`dualnorm.manual_seed`).
    """


_DEPRECATED_NDIM = (
    "dropout2d: Received a {ndim}-D input to dropout2d, which is deprecated and will result in an error "
    "in a future release. To retain the behavior and silence this warning, please use dropout instead. "
    "Note that dropout2d exists to provide channel-wise dropout on inputs with 2 spatial dimensions, a "
    "channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs)."
)
_THREE_D = (
    "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout behavior is "
    "desired - input is interpreted as shape (N, C, L), where C is the channel dim. This behavior will "
    "change in a future release to interpret the input as one without a batch dimension, i.e. shape "
    "(C, H, W). To maintain the 1D channel-wise dropout behavior, please switch to using dropout1d instead."
)


class Dropout2d(_DropoutNd):
    """Zero whole channels of (N, C, H, W) input with probability ``p`` in training.

    One draw per (sample, channel); kept channels are scaled by 1/(1-p). Arguments as
    :class:`Dropout`.

    Other ranks behave as in PyTorch 2.13, warnings included: a 3-D input is read as (N, C, L)
    (one draw per sample and channel, not an unbatched (C, H, W)); 2-D and 5-D+ inputs are
    deprecated there and drop per (dim 0, dim 1) entry; fewer than 2 dimensions is an error when
    a mask is drawn (training, p > 0).
    """

    def _warn_about_rank(self, x: Any) -> None:
        if x.ndim not in (3, 4):
            warnings.warn(_DEPRECATED_NDIM.format(ndim=x.ndim), UserWarning, stacklevel=3)
        if x.ndim == 3:
            warnings.warn(_THREE_D, UserWarning, stacklevel=3)

    def _mask_shape(self, x: Any) -> tuple[int, ...]:
        # Checked only when a mask is drawn: PyTorch returns the input first when p = 0, in eval
        # mode, or for an empty input.
        if x.ndim < 2:
            raise RuntimeInputError(
                f"Dropout2d: Feature dropout requires at least 2 dimensions in the input; got shape "
                f"{tuple(x.shape)}. Use Dropout for element-wise dropout."
            )
        return (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
