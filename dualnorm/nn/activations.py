"""Element-wise activations with explicit backward: ReLU, LeakyReLU, Sigmoid, Tanh, SELU, Identity."""

from __future__ import annotations

import math
from typing import Any

from dualnorm.errors import InputError
from dualnorm.nn.module import Module


class _FollowsInput(Module):
    """Built without ``dtype``, a parameter-free layer keeps a float32/float64 input's dtype
    (as PyTorch's activations do), so it never rounds a float64 model to float32."""

    def __init__(self, *, dtype: str | None = None) -> None:
        super().__init__(dtype=dtype)
        object.__setattr__(self, "_follow_input", dtype is None)

    def _input(self, x: Any) -> Any:
        if not self._follow_input:
            return super()._input(x)
        B = self.backend
        if B.is_array(x) and (x.dtype == B.float32 or x.dtype == B.float64):  # kept as is, as below
            return x
        x = self.backend.asarray(x, None, what=f"{type(self).__name__} input")
        if str(self.backend.numpy_dtype(x.dtype)) not in ("float32", "float64"):
            x = x.astype(self.dtype)
        return x


class _Elementwise(_FollowsInput):
    def backward(self, grad_output: Any) -> Any:
        saved = self._saved_values()
        like = saved.get("x", saved.get("y"))
        grad = self._check_grad(grad_output, saved["shape"], like.dtype)
        return grad * self._derivative(saved)

    def _derivative(self, saved: dict[str, Any]) -> Any:
        raise NotImplementedError


class ReLU(_Elementwise):
    """max(0, x). Its gradient is 0 wherever x <= 0: the "dying ReLU" of the documents."""

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        y = self.xp.maximum(x, 0.0)
        self._save(x=x, shape=tuple(x.shape))
        return y

    def _derivative(self, saved: dict[str, Any]) -> Any:
        # 0 where x <= 0, else 1: at NaN the gradient passes (PyTorch's threshold_backward).
        return 1.0 - (saved["x"] <= 0).astype(saved["x"].dtype)

    def backward(self, grad_output: Any) -> Any:
        saved = self._saved_values()
        x = saved["x"]
        grad = self._check_grad(grad_output, saved["shape"], x.dtype)
        # grad * (1 - [x <= 0]) without building the float mask: multiplying by a bool array
        # multiplies by exactly 1.0 or 0.0 (same bits, -0.0 and NaN included), one pass fewer.
        return grad * self.xp.logical_not(x <= 0)


class LeakyReLU(_Elementwise):
    """x if x > 0 else negative_slope * x (PyTorch default slope 0.01)."""

    def __init__(self, negative_slope: float = 0.01, *, dtype: str | None = None) -> None:
        super().__init__(dtype=dtype)
        self.negative_slope = float(negative_slope)

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        self._save(x=x, shape=tuple(x.shape))
        return self.xp.where(x > 0, x, x * self.negative_slope)

    def _derivative(self, saved: dict[str, Any]) -> Any:
        # Built in the layer's dtype (a float32 0.01 would leak into float64 gradients on MLX).
        x = saved["x"]
        return (x > 0).astype(x.dtype) * (1.0 - self.negative_slope) + self.negative_slope

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)); saturates (gradient ~ 0) for |x| large: the vanishing gradient.

    Takes bool input as 0.0 and 1.0, as PyTorch's sigmoid does; as there, a bool input has
    no gradient (its backward raises).
    """

    def forward(self, x: Any) -> Any:
        from_bool = str(getattr(x, "dtype", "")).rsplit(".", 1)[-1] in ("bool", "bool_")
        if from_bool:
            x = self.backend.to_numpy(x).astype(self.backend.numpy_dtype(self.dtype))
        x = self._input(x)
        y = self.backend.sigmoid(x)
        self._save(y=y, shape=tuple(x.shape), from_bool=from_bool)
        return y

    def backward(self, grad_output: Any) -> Any:
        if self._saved_values().get("from_bool"):
            raise InputError(
                "Sigmoid.backward: the last forward's input was bool, which has no gradient (as in PyTorch, "
                "where a bool tensor cannot require grad). Convert the input to float32 to backpropagate."
            )
        return super().backward(grad_output)

    def _derivative(self, saved: dict[str, Any]) -> Any:
        y = saved["y"]
        return y * (1.0 - y)


class Tanh(_Elementwise):
    """tanh(x)."""

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        y = self.xp.tanh(x)
        self._save(y=y, shape=tuple(x.shape))
        return y

    def _derivative(self, saved: dict[str, Any]) -> Any:
        y = saved["y"]
        return 1.0 - y * y


class SELU(_Elementwise):
    """Scaled ELU of self-normalizing networks (Klambauer et al. 2017).

    ``scale * (x if x > 0 else alpha * (exp(x) - 1))`` with the paper's constants,
    which keep activations near zero mean and unit variance under LeCun-normal init.
    """

    alpha = 1.6732632423543772848170429916717
    scale = 1.0507009873554804934193349852946

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        xp = self.xp
        negative = self.alpha * (xp.exp(xp.minimum(x, 0.0)) - 1.0)
        self._save(x=x, shape=tuple(x.shape))
        return self.scale * xp.where(x > 0, x, negative)

    def _derivative(self, saved: dict[str, Any]) -> Any:
        xp = self.xp
        x = saved["x"]
        # x <= 0 picks the exponential side, as PyTorch's elu_backward: at NaN the slope is scale.
        return self.scale * xp.where(x <= 0, self.alpha * xp.exp(xp.minimum(x, 0.0)), 1.0).astype(x.dtype)


class Identity(_FollowsInput):
    """Returns its input unchanged (a placeholder where a layer is optional)."""

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        self._save(shape=tuple(x.shape), dtype=x.dtype)
        return x

    def backward(self, grad_output: Any) -> Any:
        saved = self._saved_values()
        return self._check_grad(grad_output, saved["shape"], saved["dtype"])


class Flatten(_FollowsInput):
    """Flattens all dimensions after the batch dimension: (N, *) -> (N, prod(*))."""

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        if x.ndim < 2:  # torch: "Dimension out of range"
            raise InputError(
                f"Flatten expects input of shape (N, *) with at least 2 dimensions (it flattens all but "
                f"the batch dimension); got shape {tuple(x.shape)}. Add a batch dimension first."
            )
        self._save(shape=tuple(x.shape), dtype=x.dtype)
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: an empty batch has no size to infer

    def backward(self, grad_output: Any) -> Any:
        saved = self._saved_values()
        shape = saved["shape"]
        grad = self._check_grad(grad_output, (shape[0], math.prod(shape[1:])), saved["dtype"])
        return grad.reshape(shape)
