"""Exceptions that are part of the interface.

A :class:`UserInputError` carries a message a radiologist or researcher can act on: what is
wrong, where (file, row, column) and how to fix it. The CLI turns it into one line on stderr
and exit code 2; any other exception is a bug in fusion-model.
"""

from __future__ import annotations


class FusionModelError(Exception):
    """Base class of every error fusion-model raises on purpose."""


class UserInputError(FusionModelError):
    """Bad input from the user: a file, a table, a config value or a CLI argument."""


class FusionModelWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as one 'warning:' line)."""


class CohortValidationError(UserInputError):
    """A cohort failed validation; ``problems`` lists every problem found."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
