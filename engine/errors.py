"""Errors every part of the engine shares, and how an error becomes one line for a person.

`UsageError` is bad input from the command line or a configuration (the CLI prints its
message and exits 2). `first_line` is the one-line form of any error: of its Ray cause when it
has one, else the first line of its message, else its type's name.
"""

from __future__ import annotations

from typing import Any


class UsageError(ValueError):
    """Bad command line or configuration (a one-line message for the user)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (of its cause, for Ray's wrapped errors)."""
    cause: Any = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        return first_line(cause)
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
