"""The long-context tier (``attnref conform --long``): placeholder until filled below."""

from __future__ import annotations

from attnref.conformance.cases import Case

__all__ = ["long_cases"]


def long_cases(op: str) -> list[Case]:
    """The long-context cases of ``op``."""
    return []
