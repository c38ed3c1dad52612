"""Errors dualnorm raises on bad input, each with what was expected, what came, what to do."""

from __future__ import annotations


class DualnormError(Exception):
    """Base class of every error dualnorm raises on purpose."""


class InputError(DualnormError, ValueError):
    """An argument or input array is not what the layer expects (shape, size, value)."""

    def __new__(cls, message: str = "", *, type_error: bool = False):
        # A wrong *type* (e.g. a string array) is also a TypeError, as Python users expect.
        target = InputTypeError if type_error and cls is InputError else cls
        return super().__new__(target, message)

    def __init__(self, message: str = "", *, type_error: bool = False) -> None:
        super().__init__(message)


class InputTypeError(InputError, TypeError):
    """An input has the wrong dtype or kind of object."""


class RuntimeInputError(InputError, RuntimeError):
    """Bad input that PyTorch reports as a ``RuntimeError`` (a LayerNorm input whose trailing shape
    does not match, a weight reparametrized twice, a strict ``load_state_dict`` whose keys or
    shapes differ); still a ``ValueError``, as it was before, so both ``except`` clauses work."""


class StateError(DualnormError, RuntimeError, ValueError):
    """An operation is not valid in the module's current state (e.g. backward before forward)."""


class BackendError(DualnormError, ValueError):
    """An unknown backend name, or a backend that is not installed or does not work here."""


class OutputPathError(DualnormError, OSError):
    """A file cannot be written where the user asked: ``path`` is the user's path, ``reason`` says why.

    Raised before any work starts (see :func:`dualnorm._paths.check_output_path`); also an
    ``OSError``, so code that catches file errors keeps working.
    """

    def __init__(self, path: str, what: str, reason: str) -> None:
        self.path = path
        self.what = what
        self.reason = reason
        super().__init__(f"cannot write the {what} {path}: {reason}")

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
