"""Sphinx configuration of the attnref documentation.

Build with warnings as errors::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The pattern pictures are drawn at build time from :class:`attnref.patterns.Pattern`
(the one definition of every allowed-key rule) by the local extension in
``docs/_ext/``, into the git-ignored ``docs/_generated/``, so they cannot drift
from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import attnref  # noqa: E402  (after the path set-up above)

project = "attnref"
author = "attnref developers"
copyright = "attnref developers"
release = attnref.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    "attnref_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/examples/ is an installable example package (owned by the conformance
# suite), not part of the site; _generated/ holds pictures only.
exclude_patterns = ["_build", "_generated", "_ext", "examples", "snippets", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

# -- autodoc / napoleon --------------------------------------------------------
autodoc_member_order = "bysource"
# Signatures carry the names; the NumPy-style docstrings carry the types (the
# annotations are mostly ``Any``, because every array library is accepted).
autodoc_typehints = "none"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
# Keep parameter and return types as written (e.g. "array, (B, Hq, Lq, D)"):
# they are prose, not cross-reference targets.
napoleon_use_param = False
napoleon_use_rtype = False
napoleon_use_ivar = False

# -- warnings ------------------------------------------------------------------
nitpicky = True
# Targets outside this site (no intersphinx: the build must work offline).
nitpick_ignore = [
    ("py:class", "Exception"),
    ("py:class", "ValueError"),
    ("py:class", "TypeError"),
    ("py:class", "KeyError"),
    ("py:class", "RuntimeError"),
    ("py:data", "ml_dtypes.bfloat16"),
]
nitpick_ignore_regex = [
    # The "Attributes" sections become ``:type:`` options, which Sphinx tries to
    # cross-reference; prose types ("int or None", '{"global", "causal"}') and
    # builtins are not targets of this site. A real class name has no spaces,
    # quotes, braces or commas, so every other py:class target is still checked.
    ("py:class", r'.*[\s"{},()\[\]].*'),
    ("py:class", r"(str|int|bool|float|tuple|list|dict|set|frozenset|callable|ndarray|array)"),
]

# -- HTML ----------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"attnref {release}"
html_theme_options = {
    "description": "Numeric ground truth for global and local attention",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_static_path: list[str] = []
