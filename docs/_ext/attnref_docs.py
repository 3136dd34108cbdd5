"""Sphinx extension of the attnref docs.

* Draws the pattern pictures (:mod:`pattern_pictures`) into ``_generated/patterns/``
  of the source folder when the build starts, so every build shows what the
  code computes today.
* Lists optional pages in a toctree only when they exist: a toctree line that
  reads ``benchmarks  ?optional`` is kept (as ``benchmarks``) if
  ``benchmarks.md`` (or ``.rst``) is there and dropped otherwise, so the site
  builds with ``-W`` before that page is written.
* Reads the docstrings of properties and attributes as numpydoc does, like a
  function's: napoleon would take a first line such as ``"Query heads per kv
  head: query head h ..."`` for ``"<type>: <description>"`` (Google style) and
  render the first half as the type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pattern_pictures
from sphinx.application import Sphinx
from sphinx.ext import napoleon
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Where the pictures go, relative to the source folder (git-ignored).
PICTURE_FOLDER = Path("_generated") / "patterns"
_OPTIONAL = re.compile(r"^(?P<indent>[ \t]*)(?P<doc>[\w/.-]+)[ \t]+\?optional[ \t]*$", re.MULTILINE)


def _draw_pictures(app: Sphinx) -> None:
    folder = Path(app.srcdir) / PICTURE_FOLDER
    paths = pattern_pictures.generate(folder)
    logger.info("attnref_docs: drew %d pattern pictures into %s", len(paths), folder)


def _optional_entries(app: Sphinx, docname: str, source: list[str]) -> None:
    def keep_if_present(match: re.Match[str]) -> str:
        doc = match["doc"]
        if any((Path(app.srcdir) / f"{doc}{suffix}").exists() for suffix in (".md", ".rst")):
            return f"{match['indent']}{doc}"
        logger.info("attnref_docs: %s not written yet; left out of the toctree of %s", doc, docname)
        return ""

    source[0] = _OPTIONAL.sub(keep_if_present, source[0])


def _napoleon_without_inline_types(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in ("property", "attribute", "data"):
        what = "method"  # no "<type>: <description>" first line in numpydoc
    napoleon._process_docstring(app, what, name, obj, options, lines)


def _replace_napoleon_listener(app: Sphinx) -> None:
    app.setup_extension("sphinx.ext.napoleon")
    ours = [
        lst for lst in app.events.listeners["autodoc-process-docstring"] if lst.handler is napoleon._process_docstring
    ]
    for listener in ours:
        app.disconnect(listener.id)
        app.connect("autodoc-process-docstring", _napoleon_without_inline_types, priority=listener.priority)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the hooks."""
    app.connect("builder-inited", _draw_pictures)
    app.connect("source-read", _optional_entries)
    _replace_napoleon_listener(app)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
