"""Input checks shared by the layers: one clear message per mistake, raised before any state changes."""

from __future__ import annotations

from typing import Any

from dualnorm.errors import InputError


def check_ndim(layer: Any, x: Any, allowed: tuple[int, ...], layout: str) -> None:
    if x.ndim not in allowed:
        dims = " or ".join(f"{n}-D" for n in allowed)
        raise InputError(
            f"{type(layer).__name__} expects {dims} input laid out as {layout}; "
            f"got a {x.ndim}-D array of shape {tuple(x.shape)}"
        )


def check_size(layer: Any, x: Any, axis: int, expected: int, what: str) -> None:
    got = x.shape[axis]
    if got != expected:
        raise InputError(
            f"{type(layer).__name__}({expected}) expects {expected} {what} in dimension {axis % x.ndim} "
            f"of its input; got {got} (input shape {tuple(x.shape)}). Build the layer with "
            f"{type(layer).__name__}({got}) or fix the input."
        )


def check_positive_int(name: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return value


def check_non_negative(name: str, value: Any, owner: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{owner}: {name} must be a number, got {value!r}") from None
    if not number >= 0:
        raise InputError(f"{owner}: {name} must be >= 0, got {value!r}")
    return number


def check_momentum(value: Any, owner: str) -> float | None:
    if value is None:
        return None
    number = check_non_negative("momentum", value, owner)
    if number > 1:
        raise InputError(f"{owner}: momentum must be in [0, 1] or None (cumulative average), got {value!r}")
    return number


def as_shape(
    value: Any, owner: str, name: str = "normalized_shape", *, allow_empty: bool = False
) -> tuple[int, ...]:
    shape = (value,) if isinstance(value, int) else tuple(value)
    if (not shape and not allow_empty) or any(
        isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape
    ):
        raise InputError(
            f"{owner}: {name} must be a positive int or a non-empty tuple of them, got {value!r}"
        )
    return shape
