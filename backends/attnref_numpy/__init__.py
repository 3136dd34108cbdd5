"""The built-in NumPy backend of attnref (registered through the ``attnref.backends`` entry point).

:mod:`attnref_numpy.blocked` holds the blocked multi-head algorithm, written
over an array namespace so that the CuPy backend reuses it;
:mod:`attnref_numpy.pooling` the pooling ops; :mod:`attnref_numpy.backend` the
backend object.
"""
