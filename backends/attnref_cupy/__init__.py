"""The built-in CuPy backend of attnref (registered through the ``attnref.backends`` entry point).

It reuses the NumPy backend's blocked code (:mod:`attnref_numpy.blocked`) with
``xp = cupy``; CuPy is imported only when the backend is used.
"""
