"""Loss functions with an explicit backward: MSELoss and CrossEntropyLoss (PyTorch semantics).

``loss = loss_fn(prediction, target)`` returns a 0-d backend array (the mean over the
batch); ``loss_fn.backward()`` returns dLoss/dPrediction for that last call, ready to
feed into ``model.backward``.

>>> import numpy as np, dualnorm
>>> from dualnorm.losses import MSELoss
>>> with dualnorm.use_backend("numpy"):
...     mse = MSELoss()
...     loss = mse(np.array([[1.0], [3.0]]), np.array([[0.0], [1.0]]))
>>> float(loss), dualnorm.to_numpy(mse.backward()).ravel().tolist()
(2.5, [1.0, 2.0])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualnorm.errors import InputError
from dualnorm.nn.module import Module

__all__ = ["CrossEntropyLoss", "MSELoss"]


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise InputError(f"{type(self).__name__}: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def _array(self, value: Any, what: str) -> Any:
        if self.backend.is_array(value):
            return value
        host = np.asarray(value)
        dtype = self.backend.float64 if host.dtype == np.float64 else None
        return self.backend.asarray(host, dtype, what=f"{type(self).__name__} {what}")

    def __call__(self, prediction: Any, target: Any) -> Any:  # type: ignore[override]
        return self.forward(prediction, target)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error: ``mean((prediction - target)^2)`` over every element (as ``nn.MSELoss``).

    Args:
        reduction: "mean" (default) or "sum" over the elements.
    """

    def forward(self, prediction: Any, target: Any) -> Any:  # type: ignore[override]
        """The loss for ``prediction`` against ``target``: a 0-d array. Call the loss, ``loss_fn(prediction, target)``."""
        pred = self._array(prediction, "prediction")
        tgt = self._array(target, "target")
        if tuple(pred.shape) != tuple(tgt.shape):
            raise InputError(
                f"MSELoss: prediction has shape {tuple(pred.shape)} but target has shape "
                f"{tuple(tgt.shape)}; they must match (reshape the target, e.g. y.reshape(-1, 1))"
            )
        diff = pred - tgt
        self._save(diff=diff)
        total = self.xp.sum(diff * diff)
        return total / diff.size if self.reduction == "mean" else total

    def backward(self, grad_output: Any = 1.0) -> Any:
        """dLoss/dPrediction for the last call, scaled by ``grad_output``; feed it to ``model.backward``."""
        diff = self._saved_values()["diff"]
        scale = 2.0 / diff.size if self.reduction == "mean" else 2.0
        if isinstance(grad_output, (int, float)):
            return diff * (scale * grad_output)
        return diff * scale * grad_output


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy on raw logits (as ``nn.CrossEntropyLoss``).

    ``target`` is either class indices of shape (N,) (integers) or class probabilities
    with the logits' shape (N, C). Uses a stable log-sum-exp, so huge logits do not
    overflow. ``backward`` returns ``(softmax(logits) - onehot) / N``.

    Args:
        reduction: "mean" (default) over the batch, or "sum".
    """

    def forward(self, prediction: Any, target: Any) -> Any:  # type: ignore[override]
        """The loss for the logits ``prediction`` against ``target`` (class indices or probabilities): a 0-d array."""
        logits = self._array(prediction, "logits")
        if logits.ndim != 2:
            raise InputError(f"CrossEntropyLoss: logits must have shape (N, C), got {tuple(logits.shape)}")
        n, c = logits.shape
        probs_target = self._target(target, n, c, logits.dtype)
        log_probs = logits - self.backend.logsumexp(logits, axis=1)
        self._save(log_probs=log_probs, target=probs_target)
        total = -self.xp.sum(log_probs * probs_target)
        return total / n if self.reduction == "mean" else total

    def _target(self, target: Any, n: int, c: int, dtype: Any) -> Any:
        xp = self.xp
        if self.backend.is_array(target):
            kind = self.backend.dtype_kind(target.dtype)
            shape = tuple(target.shape)
        else:
            host = np.asarray(target)
            kind, shape = host.dtype.kind, host.shape
            target = self.backend.asarray(host, None if kind == "f" else self.backend.int64)
        if kind in "iu":
            if shape != (n,):
                raise InputError(f"CrossEntropyLoss: class-index targets must have shape ({n},), got {shape}")
            return (target.reshape(n, 1) == xp.arange(c).reshape(1, c)).astype(dtype)
        if shape != (n, c):
            raise InputError(
                f"CrossEntropyLoss: probability targets must have the logits' shape ({n}, {c}), got {shape}"
            )
        return target.astype(dtype)

    def backward(self, grad_output: Any = 1.0) -> Any:
        """dLoss/dLogits for the last call, scaled by ``grad_output``; feed it to ``model.backward``."""
        saved = self._saved_values()
        log_probs, target = saved["log_probs"], saved["target"]
        n = log_probs.shape[0]
        # d/dlogits of -sum(t * log_softmax) = softmax * sum(t) - t  (sum(t) = 1 per row for labels)
        row_mass = self.xp.sum(target, axis=1, keepdims=True)
        grad = self.xp.exp(log_probs) * row_mass - target
        if self.reduction == "mean":
            grad = grad * (1.0 / n)
        return grad if isinstance(grad_output, (int, float)) and grad_output == 1.0 else grad * grad_output
