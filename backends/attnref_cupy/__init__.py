"""The built-in CuPy backend of attnref (registered through the ``attnref.backends`` entry point).

It runs the blocked code shared with the NumPy backend (:mod:`attnref_blocked`)
with ``xp = cupy``; CuPy is imported only when the backend is used.
"""
