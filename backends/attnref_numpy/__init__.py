"""The built-in NumPy backend of attnref (registered through the ``attnref.backends`` entry point).

:mod:`attnref_numpy.backend` binds the shared blocked code of
:mod:`attnref_blocked` (also used by the CuPy backend) to NumPy.
"""
