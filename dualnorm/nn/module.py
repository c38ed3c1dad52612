"""Module, Parameter and Sequential: PyTorch's shape, with an explicit backward.

Every module implements ``forward(x)`` and ``backward(grad_output)``. ``backward``
returns dLoss/dInput and *accumulates* parameter gradients into ``param.grad`` (as
PyTorch does; call ``zero_grad()`` between steps). As in PyTorch, one forward is
backpropagated once: a second ``backward`` for the same forward raises ``StateError``.
Inputs are converted to the module's dtype (float32 unless built with ``dtype="float64"``),
so float16 input gives a float32 output (PyTorch keeps float16; chosen on purpose). Because every layer computes its
own gradients, per-layer gradient statistics exist on every backend.

Arrays (parameters, buffers, activations) live on the backend that was active when
the module was built; ``module.to("mlx")`` moves them.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from dualnorm._quiet import call_quietly
from dualnorm.backends import Backend, get_backend
from dualnorm.errors import InputError, RuntimeInputError, StateError


class Parameter:
    """A learnable array (``data``) and its accumulated gradient (``grad``, or None)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Any) -> None:
        self.data = data
        self.grad: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``data``."""
        return tuple(self.data.shape)

    def numpy(self) -> np.ndarray:
        """``data`` as a NumPy array (copied from MLX)."""
        from dualnorm.backends import to_numpy

        return to_numpy(self.data)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


# NumPy's RuntimeWarnings inside a layer are noise: an inf or NaN in the input gives inf or NaN
# in the output (as in PyTorch), and 1e30 overflows float32 squares by design of the dtype.


_RUNNING = "running"


def _guard_backward(fn: Any) -> Any:
    """Wrap a module's ``backward``: one backward per forward (as PyTorch), no NumPy warnings."""

    @functools.wraps(fn)
    def backward(self: Module, *args: Any, **kwargs: Any) -> Any:
        d = self.__dict__  # (plain dict access: this wraps every layer's backward, every step)
        # False after a forward saved, True once backpropagated, _RUNNING during the backward
        # (None/absent: nothing saved yet, or a container, which saves nothing)
        spent = d.get("_saved_spent")
        if spent is _RUNNING:  # a subclass's backward calling super().backward
            return fn(self, *args, **kwargs)
        if spent is True and d.get("_saved") is not None:
            raise StateError(
                f"{type(self).__name__}.backward() was already called for the last forward pass; as in "
                "PyTorch, a forward is backpropagated once (the saved values are spent). Run the forward "
                "again; parameter gradients accumulate in .grad across backward calls."
            )
        d["_saved_spent"] = _RUNNING
        try:
            grad_input = call_quietly(functools.partial(fn, **kwargs) if kwargs else fn, self, *args)
        except BaseException:
            d["_saved_spent"] = spent  # a failed backward spends nothing: fix the gradient, call again
            raise
        d["_saved_spent"] = spent is not None  # spent until the next forward saves anew
        return grad_input

    backward._guarded = True  # type: ignore[attr-defined]
    return backward


def _data(param: Parameter | None) -> Any:
    """A Parameter's array, or None."""
    return None if param is None else param.data


def _join(prefix: str, name: str) -> str:
    if not name:
        return prefix
    return f"{prefix}.{name}" if prefix else name


class Module:
    """Base class of every layer. Subclasses define ``forward`` and ``backward``."""

    training: bool

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("backward")
        if own is not None and not getattr(own, "_guarded", False):
            cls.backward = _guard_backward(own)  # type: ignore[method-assign]

    def __init__(self, *, dtype: str | None = None) -> None:
        # __setattr__ reads these three tables, so they are set past it; then it stores plain values.
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        self.training = True
        self.backend = get_backend()
        self.dtype = self.backend.dtype(dtype)
        self._saved = None

    # --- attribute registration (as in torch.nn.Module) ----------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self.__dict__.pop(name, None)  # a plain attribute of that name would shadow it
            self._parameters[name] = value
        elif isinstance(value, Module):
            self.__dict__.pop(name, None)
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        elif value is None and name in self._parameters:
            # ``layer.bias = None`` drops the parameter, as in PyTorch: no longer learned or saved
            del self._parameters[name]
            object.__setattr__(self, name, None)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails.
        for store in ("_parameters", "_buffers", "_modules"):
            table = self.__dict__.get(store)
            if table is not None and name in table:
                return table[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name: str, value: Any) -> None:
        """A non-learnable array that belongs to the state (e.g. ``running_mean``)."""
        self._buffers[name] = value

    # --- helpers for subclasses ---------------------------------------------------
    @property
    def xp(self) -> Any:
        """The array namespace of the module's backend (``numpy`` or ``mlx.core``)."""
        return self.backend.xp

    def _new_parameter(self, array: np.ndarray) -> Parameter:
        return Parameter(self.backend.asarray(array, self.dtype))

    def _const(self, array: np.ndarray | float, dtype: Any = None) -> Any:
        return self.backend.asarray(np.asarray(array), self.dtype if dtype is None else dtype)

    def _input(self, x: Any) -> Any:
        """Convert the input to this module's backend and dtype, or raise a clear error."""
        if type(x) is self.backend.array_type and x.dtype == self.dtype:  # the common case, as asarray would
            return x
        return self.backend.asarray(x, self.dtype, what=f"{type(self).__name__} input")

    def _save(self, context: Any = None, /, **values: Any) -> None:
        """Keep what backward needs: one typed context (a NamedTuple), or named values (a dict)."""
        # Straight into __dict__: these are never parameters, buffers or modules, and
        # __setattr__'s checks cost more than the rest of a small layer's bookkeeping.
        d = self.__dict__
        d["_saved"] = values if context is None else context
        d["_saved_spent"] = False

    def _saved_values(self) -> Any:
        if self._saved is None:
            raise StateError(
                f"{type(self).__name__}.backward() was called before a forward pass; "
                "call the module on an input first, then backward(grad_output)."
            )
        return self._saved

    def _check_grad(self, grad_output: Any, expected_shape: tuple[int, ...], dtype: Any = None) -> Any:
        dtype = self.dtype if dtype is None else dtype
        B = self.backend
        if (
            type(grad_output) is B.array_type
            and grad_output.dtype == dtype
            and grad_output.shape == expected_shape
        ):
            return grad_output  # the common case, as asarray would
        grad = B.asarray(grad_output, dtype, what=f"{type(self).__name__} grad_output")
        if tuple(grad.shape) != tuple(expected_shape):
            raise InputError(
                f"{type(self).__name__}.backward: grad_output has shape {tuple(grad.shape)}, "
                f"expected {tuple(expected_shape)} (the shape of the last forward's output)"
            )
        return grad

    # Empty inputs (a batch of 0, or a dimension of size 0) never reach a kernel or a reduction:
    # MLX can hang reducing an empty array made from NumPy (mx.sum(mx.array(np.zeros((0, 5),
    # np.float32)), axis=0) hung in 4 of 5 fresh processes; mx.zeros((0, 5)) never did).
    # As PyTorch 2.x: an empty output of the input's shape, zero parameter gradients.
    def _empty_forward(self, x: Any, shape: tuple[int, ...] | None = None) -> Any:
        shape = tuple(x.shape) if shape is None else tuple(shape)
        self._save(empty=True, out_shape=shape)
        return self.xp.zeros(shape, dtype=x.dtype)

    def _empty_backward(self, grad_output: Any) -> Any:
        shape = self._saved["out_shape"]
        self._check_grad(grad_output, shape)
        for param in self._parameters.values():
            if param is not None:
                self._accumulate(param, self.xp.zeros(param.shape, dtype=param.data.dtype))
        return self.xp.zeros(shape, dtype=self.dtype)

    @staticmethod
    def _accumulate(param: Parameter, grad: Any) -> None:
        param.grad = grad if param.grad is None else param.grad + grad

    # Layers whose ``weight`` and ``bias`` are each a Parameter or None (the norms).
    def _affine_parameters(self) -> tuple[Parameter | None, Parameter | None]:
        """(weight, bias) Parameters, each may be None: a plain attribute (None) shadows the parameter
        table; else straight from the table, as __getattr__'s search costs more than a small kernel."""
        d = self.__dict__
        table = d["_parameters"]
        return (
            d["weight"] if "weight" in d else table.get("weight"),
            d["bias"] if "bias" in d else table.get("bias"),
        )

    def _params(self) -> tuple[Any, Any]:
        """(weight, bias) arrays for the functional/kernel calls; each may be None."""
        weight, bias = self._affine_parameters()
        return (None if weight is None else weight.data, None if bias is None else bias.data)

    def _accumulate_affine(self, grad_w: Any, grad_b: Any, params: tuple[Any, Any] | None = None) -> None:
        """Add the weight and bias gradients; ``params``: the (weight, bias) Parameters, when the
        backward has them already (from :meth:`_affine_parameters`)."""
        weight, bias = self._affine_parameters() if params is None else params
        if weight is not None:  # (as _accumulate, written out: every norm layer's backward, every step)
            weight.grad = grad_w if weight.grad is None else weight.grad + grad_w
        if bias is not None:
            bias.grad = grad_b if bias.grad is None else bias.grad + grad_b

    # --- the interface -------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        """Compute the output for ``x`` and save what ``backward`` needs; call the module, ``module(x)``, to run it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_output: Any) -> Any:
        """Given dLoss/d(output) of the last forward, return dLoss/d(input) and add the parameters' gradients to their ``.grad``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x: Any) -> Any:
        return call_quietly(self.forward, x)

    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=False``: eval mode) on this module and its children; returns ``self``."""
        self.training = bool(mode)
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Set eval mode (batch norm uses its running statistics); the same as ``train(False)``."""
        return self.train(False)

    # --- traversal -------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct child modules, with their names."""
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        """The direct child modules."""
        for _, child in self.named_children():
            yield child

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, with dotted names (``""`` for this one)."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(_join(prefix, name))

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every parameter of this module and its descendants, with dotted names (``"0.weight"``)."""
        for name, param in self._parameters.items():
            yield _join(prefix, name), param
        for name, child in self._modules.items():
            yield from child.named_parameters(_join(prefix, name))

    def parameters(self) -> Iterator[Parameter]:
        """Every parameter of this module and its descendants (what an optimizer takes)."""
        for _, param in self.named_parameters():
            yield param

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Every buffer that is set (e.g. ``running_mean``), with dotted names."""
        for name, module, leaf in self._buffer_slots(prefix):
            yield name, module._buffers[leaf]

    def _buffer_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        """(full name, owning module, name in the owner) of every buffer that is set."""
        for name, buf in self._buffers.items():
            if buf is not None:
                yield _join(prefix, name), self, name
        for name, child in self._modules.items():
            yield from child._buffer_slots(_join(prefix, name))

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (gradients accumulate across backward calls)."""
        for param in self.parameters():
            param.grad = None

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, Any]:
        """Parameters and buffers by PyTorch's key names, as this backend's arrays."""
        # Module by module, parameters then buffers: the order of torch's state_dict.
        state: OrderedDict[str, Any] = OrderedDict()
        for prefix, module in self.named_modules():
            state.update((_join(prefix, n), p.data) for n, p in module._parameters.items() if p is not None)
            state.update((_join(prefix, n), b) for n, b in module._buffers.items() if b is not None)
        return state

    def _state_parameters(self) -> Iterator[tuple[str, Parameter]]:
        return self.named_parameters()

    def _state_buffers(self) -> Iterator[tuple[str, Any]]:
        return self.named_buffers()

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays (NumPy, MLX, or anything array-like) into this module.

        Every key and shape is checked before anything is written, so a failed load
        leaves the module exactly as it was.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeInputError(
                f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}; expected exactly {list(own)}"
            )
        converted: dict[str, Any] = {}
        bad_shapes = []
        for key, target in own.items():
            if key not in state_dict:
                continue
            # A copy, as PyTorch and MLX make: the module must not alias the caller's arrays.
            value = np.array(_host(state_dict[key]), copy=True)
            if tuple(value.shape) != tuple(target.shape):
                bad_shapes.append(f"{key}: checkpoint {tuple(value.shape)} vs module {tuple(target.shape)}")
                continue
            converted[key] = self.backend.asarray(value, target.dtype, what=f"state_dict[{key!r}]")
        if bad_shapes:
            raise RuntimeInputError(
                f"load_state_dict for {type(self).__name__}: shape mismatch for " + "; ".join(bad_shapes)
            )
        self._assign_state(converted)

    def _assign_state(self, values: dict[str, Any]) -> None:
        params = dict(self._state_parameters())
        buffers = {name: (module, leaf) for name, module, leaf in self._buffer_slots()}
        for key, value in values.items():
            if key in params:
                params[key].data = value
            else:
                module, leaf = buffers[key]
                module._buffers[leaf] = value

    def to(self, backend: str | Backend) -> Module:
        """Move every parameter and buffer to another backend (returns ``self``)."""
        target = backend if isinstance(backend, Backend) else get_backend(backend)
        for _, module in self.named_modules():
            source = module.backend
            module.backend = target
            module.dtype = target.dtype(str(module.dtype))
            module._saved = None
            for param in module._parameters.values():
                param.data = target.asarray(
                    source.to_numpy(param.data), _same_dtype(target, source, param.data)
                )
                param.grad = None
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = target.asarray(
                        source.to_numpy(buf), _same_dtype(target, source, buf)
                    )
            module._moved(source, target)
        return self

    def _moved(self, source: Backend, target: Backend) -> None:
        """Hook for modules holding extra arrays outside parameters/buffers."""

    # --- printing ---------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"  ({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


def _host(value: Any) -> Any:
    from dualnorm.backends import to_numpy

    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    return to_numpy(value)


def _same_dtype(target: Backend, source: Backend, array: Any) -> Any:
    name = str(source.numpy_dtype(array.dtype))
    return {"float32": target.float32, "float64": target.float64, "int64": target.int64}.get(
        name, target.float32
    )


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... as in PyTorch.

    >>> from dualnorm import nn
    >>> model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU())
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias', '1.weight', '1.bias']
    """

    def __init__(self, *modules: Module | OrderedDict[str, Module]) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items: Iterable[tuple[str, Module]] = modules[0].items()
        else:
            items = ((str(i), m) for i, m in enumerate(modules))
        for name, module in items:
            if not isinstance(module, Module):
                raise InputError(
                    f"Sequential takes dualnorm modules; item {name!r} is a {type(module).__name__}"
                )
            self._modules[name] = module

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end; returns ``self``."""
        self._modules[str(len(self._modules))] = module
        return self

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x

    def backward(self, grad_output: Any) -> Any:
        for module in reversed(self._modules.values()):
            grad_output = module.backward(grad_output)
        return grad_output
