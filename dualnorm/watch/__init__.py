"""Watching PyTorch and mlx.nn models: the framework adapters behind :func:`dualnorm.track`.

``dualnorm.track(model)`` takes a dualnorm model, a ``torch.nn.Module`` or an
``mlx.nn.Module``. The framework is told from the model's class hierarchy by module name,
without importing torch or MLX: neither is a dependency, and each is imported only when
the model is one of theirs.

A watcher records the same :class:`~dualnorm.records.LayerStats` as the built-in
experiments, one per layer, named by module path (``features.0``, ``layer1.0.bn1``, as
``named_modules()`` gives them). It captures only while *armed*: the run arms it for the
steps it records and disarms it after, so between recording steps no hook or wrapper runs
at all (see :class:`Watcher`).
"""

from __future__ import annotations

from typing import Any

from dualnorm.errors import InputError

__all__ = ["Watcher", "framework_of", "watcher_for"]


def framework_of(model: Any) -> str | None:
    """ "dualnorm", "torch" or "mlx" for a model of theirs, None otherwise (nothing is imported)."""
    for cls in type(model).__mro__:
        module = cls.__module__ or ""
        if module == "dualnorm.nn.module" and cls.__name__ == "Module":
            return "dualnorm"
        if module == "torch.nn.modules.module" and cls.__name__ == "Module":
            return "torch"
        if module.startswith("mlx.nn") and cls.__name__ == "Module":
            return "mlx"
    return None


class Watcher:
    """What the run asks of a framework adapter.

    ``arm()`` installs the capture (hooks, wrapped calls) for the coming forward/backward;
    ``layer_stats(grads)`` reads what was captured and the parameters, or None when nothing
    was captured since arming; ``disarm()`` removes every hook; ``extra()`` adds record
    extras (e.g. PyTorch's ``num_batches_tracked`` per norm layer).
    """

    framework = ""
    backend_name = ""
    device = ""
    armed = False
    hook_calls = 0  # hooks/wrappers run so far (the tests count them)

    def arm(self) -> None:
        raise NotImplementedError

    def disarm(self) -> None:
        raise NotImplementedError

    def layer_stats(self, grads: Any = None) -> list[Any] | None:
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        return {}


def watcher_for(model: Any, bins: int) -> Watcher:
    """The adapter for a torch.nn or mlx.nn model (a clear error for anything else)."""
    framework = framework_of(model)
    if framework == "torch":
        from dualnorm.watch.torch_hooks import TorchWatcher

        return TorchWatcher(model, bins)
    if framework == "mlx":
        from dualnorm.watch.mlx_calls import MLXWatcher

        return MLXWatcher(model, bins)
    raise InputError(
        "track() takes a dualnorm model, a torch.nn.Module or an mlx.nn.Module (or None for a scalar "
        f"logger), got {type(model).__name__}",
        type_error=True,
    )
