"""The built-in torch backend of attnref (registered through the attnref.backends entry point)."""
