"""Choosing which tests of the catalogue run: xfail files, ``-k`` expressions, shards.

A *test* is one case in one dtype, with the id ``op/case/dtype``. The same
three tools serve ``attnref conform`` and the pytest form:

xfail files (``attnref conform --xfail PATH``, ``pytest --attnref-xfails PATH``)
    One entry a line: a glob pattern over test ids
    (``global_attention/nan-*/float16``), optionally preceded by ``skip`` to
    skip instead of expecting a failure, optionally followed by ``# reason``.
    An entry that matches no test, or whose tests all passed, is stale.
``-k EXPR``
    pytest's keyword expressions: words joined by ``and``, ``or``, ``not`` and
    parentheses; a word matches a test whose id contains it (case-insensitive).
``--shard K/N``
    the K-th of N disjoint parts (1-based) of the selected cases; the N parts
    together are the whole selection.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from attnref.errors import invalid_value

__all__ = ["XfailEntry", "read_xfails", "find_xfail", "keyword_matcher", "parse_shard", "shard"]

T = TypeVar("T")


@dataclass
class XfailEntry:
    """One line of an xfail file."""

    pattern: str
    reason: str
    skip: bool
    line: int
    matched: int = 0  # tests selected with this entry
    xfailed: int = 0  # of those, how many failed as expected
    xpassed: int = 0  # and how many passed anyway

    def matches(self, key: str) -> bool:
        """Whether the test id ``key`` (``op/case/dtype``) falls under this entry."""
        return fnmatch.fnmatchcase(key, self.pattern)


def read_xfails(path: Path) -> list[XfailEntry]:
    """Parse an xfail file (format in the module docstring); a malformed line is a ValueError naming it."""
    entries = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        text, _, reason = raw.partition("#")
        words = text.split()
        if not words:
            continue
        skip = words[0] == "skip"
        if skip:
            words = words[1:]
        if len(words) != 1:
            raise invalid_value("xfail", f"{path}:{number} {raw.strip()!r}", "'[skip] PATTERN [# reason]'")
        entries.append(XfailEntry(words[0], reason.strip() or f"listed in {Path(path).name}:{number}", skip, number))
    return entries


def find_xfail(entries: Sequence[XfailEntry], key: str) -> XfailEntry | None:
    """The first entry matching the test id ``key`` (``None`` if none)."""
    return next((entry for entry in entries if entry.matches(key)), None)


_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def keyword_matcher(expression: str):
    """A predicate on test ids for the pytest-style ``-k`` ``expression``.

    Raises ValueError naming ``-k`` for a malformed expression.
    """
    tokens = _TOKEN.findall(expression)
    if not tokens:
        raise invalid_value("-k", repr(expression), "a non-empty expression")

    def parse(key: str) -> bool:
        position = 0

        def peek() -> str | None:
            return tokens[position] if position < len(tokens) else None

        def take() -> str:
            nonlocal position
            if position >= len(tokens):
                raise invalid_value("-k", repr(expression), "a complete expression")
            position += 1
            return tokens[position - 1]

        def either() -> bool:
            value = both()
            while peek() == "or":
                take()
                value = both() or value
            return value

        def both() -> bool:
            value = negation()
            while peek() == "and":
                take()
                value = negation() and value
            return value

        def negation() -> bool:
            if peek() == "not":
                take()
                return not negation()
            token = take()
            if token == "(":
                value = either()
                if take() != ")":
                    raise invalid_value("-k", repr(expression), "balanced parentheses")
                return value
            if token in (")", "and", "or"):
                raise invalid_value("-k", repr(expression), f"a word where {token!r} stands")
            return token.lower() in key.lower()

        value = either()
        if position != len(tokens):
            raise invalid_value("-k", repr(expression), f"an operator before {tokens[position]!r}")
        return value

    parse("")  # reject a malformed expression now, not at the first test
    return parse


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)`` with ``1 <= K <= N``; otherwise a ValueError naming ``--shard``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise invalid_value("--shard", repr(text), "K/N with 1 <= K <= N")
    return int(match.group(1)), int(match.group(2))


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """The ``index``-th (1-based) of ``count`` round-robin parts of ``items``."""
    return [item for position, item in enumerate(items) if position % count == index - 1]
