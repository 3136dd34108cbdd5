"""The empty benchmark: the process's peak memory with the suite imported and nothing run.

Subtract it from a ``peakmem_*`` figure to remove the interpreter and imports
(NumPy, attnref, torch when installed).
"""


def peakmem_empty() -> None:
    """Nothing: the import cost alone."""
