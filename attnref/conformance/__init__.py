"""The conformance suite: proof that a backend computes what the reference defines.

* :mod:`~attnref.conformance.cases`: the catalogue of named edge cases and error
  cases (stable ids), plus seeded random cases from
  :mod:`~attnref.conformance.strategies`.
* :mod:`~attnref.conformance.tolerance`: the pass rule, in one module.
* :mod:`~attnref.conformance.runner`: runs cases on backends found through the
  registry, talking to them only through ``asarray``/``to_numpy`` and their op
  methods.
* :mod:`~attnref.conformance.cli`: ``attnref conform``.
* :mod:`~attnref.conformance.pytest_plugin` and ``test_conformance.py``: the same
  catalogue under pytest, ``pytest --pyargs attnref.conformance --attnref-backend NAME``.

Importing this package imports nothing heavy (the pytest plugin is loaded in
every pytest run of an environment that has attnref).
"""
