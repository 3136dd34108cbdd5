"""The exceptions attnref raises.

Every error attnref raises on purpose derives from :class:`AttnrefError`. The
argument errors are also :class:`ValueError` or :class:`TypeError`, so callers
that already catch those keep working. Messages name the argument, what was
given and what was expected.
"""

from __future__ import annotations

__all__ = [
    "AttnrefError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "BackendError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "UnsupportedError",
]


class AttnrefError(Exception):
    """Base class of every error attnref raises on purpose."""


class InvalidArgumentError(AttnrefError, ValueError):
    """An argument has the right type but an invalid value or shape."""


class InvalidTypeError(AttnrefError, TypeError):
    """An argument has the wrong type or dtype."""


class BackendError(AttnrefError):
    """A problem with the backend registry or a plugin."""


class BackendNotFoundError(BackendError, KeyError):
    """No backend of the requested name was registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BackendUnavailableError(BackendError, RuntimeError):
    """The backend is registered but its runtime is missing (no library, no GPU)."""


class UnsupportedError(AttnrefError, NotImplementedError):
    """A backend does not implement a feature of an op it lists (e.g. ``bias``).

    Raised by a backend's op method for a valid input it cannot compute, such
    as a FlashAttention wrapper asked for a ``bias``. The conformance suite
    reports the case as ``unsupported`` for :attr:`feature`, not as a failure
    (``--strict`` fails it). Built-in backends never raise it for what their
    library can do.

    Parameters
    ----------
    feature : str
        The feature's name, usually the keyword argument (``"bias"``,
        ``"softcap"``, ``"sinks"``) or a short phrase (``"float64"``).
    detail : str, optional
        Why, in a few words.
    """

    def __init__(self, feature: str, detail: str | None = None) -> None:
        self.feature = feature
        self.detail = detail
        super().__init__(f"unsupported feature {feature!r}" + (f": {detail}" if detail else ""))


def invalid_value(argument: str, given: object, expected: str) -> InvalidArgumentError:
    """Build the standard ``ValueError`` for ``argument``.

    The message reads ``"<argument>: expected <expected>, got <given>"``.
    """
    return InvalidArgumentError(f"{argument}: expected {expected}, got {given}")


def invalid_type(argument: str, given: object, expected: str) -> InvalidTypeError:
    """Build the standard ``TypeError`` for ``argument`` (same message form)."""
    return InvalidTypeError(f"{argument}: expected {expected}, got {given}")
