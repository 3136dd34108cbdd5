"""Entry point of the torch backend (placeholder: filled by its issue)."""

import attnref


@attnref.hookimpl
def attnref_backends():
    """No backend yet."""
    return []
