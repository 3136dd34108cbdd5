"""Placeholder until the conformance suite lands (issue 4)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``conform`` options."""


def run(args: argparse.Namespace) -> int:
    """Not built yet."""
    print("attnref conform: not implemented yet")
    return 1
