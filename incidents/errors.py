"""The root of every error the runbooks raise on purpose.

Each error the project defines derives from `RunbookError` (tests/test_errors.py holds every
module to it), so `except RunbookError` is "anything we said went wrong", and a stray
`KeyError` or `TypeError`, a bug, is never caught with it. Whether trying again may help is a
property of the error, `transient`, never read from its message: an unreachable store or API
is transient; a wrong id, a refused answer, an invalid config is not.

Some also derive from the built-in a caller outside the project expects: a `ValueError` raised
inside a pydantic validator becomes its ValidationError, and a `PermissionError` is what a
refused grant is to Python code that knows nothing of ours.

This module imports nothing of the project: every package may import it (integrations too).
"""

from __future__ import annotations


class RunbookError(Exception):
    """Something the runbooks detected and named. `transient`: the same call may succeed later."""

    transient: bool = False
