"""The built-in cupy backend of attnref (registered through the attnref.backends entry point)."""
