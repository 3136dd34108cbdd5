"""The built-in numpy backend of attnref (registered through the attnref.backends entry point)."""
