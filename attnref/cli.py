"""The ``attnref`` command line: ``attnref backends`` and ``attnref conform``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from attnref import __version__

__all__ = ["main"]


def _cmd_backends(args: argparse.Namespace) -> int:
    """Print every plugin and backend with its state; 0 even when some failed (they are reported)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from attnref.registry import backend_statuses

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 10_000  # piped: one line per row, so the output can be grepped
    table = Table(title=f"attnref {__version__} backends")
    for column in ("plugin", "backend", "status", "version", "ops", "dtypes", "detail"):
        table.add_column(column, overflow="fold")
    colours = {"available": "green", "unavailable": "yellow", "loaded": "cyan", "failed": "red", "disabled": "dim"}
    for s in backend_statuses():
        # Text, not markup: a plugin's error message may contain "[...]".
        cells = (s.plugin, s.backend or "-", s.state, s.version or "-", ", ".join(s.ops) or "-",
                 ", ".join(s.dtypes) or "-", s.detail or "")  # fmt: skip
        styles = {2: colours.get(s.state, "")}
        table.add_row(*(Text(cell, style=styles.get(i, "")) for i, cell in enumerate(cells)))
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attnref`` command."""
    parser = argparse.ArgumentParser(prog="attnref", description="Ground truth for global and local attention.")
    parser.add_argument("--version", action="version", version=f"attnref {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    backends = commands.add_parser("backends", help="list every backend plugin with its status")
    backends.set_defaults(run=_cmd_backends)
    conform = commands.add_parser("conform", help="run the conformance suite on backends")
    from attnref.conformance import cli as conform_cli

    conform_cli.add_arguments(conform)
    conform.set_defaults(run=conform_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
