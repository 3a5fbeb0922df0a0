"""Errors that end a command with a clear message instead of a traceback."""

from __future__ import annotations

import click

EXIT_USAGE = 2
EXIT_NO_GPU = 3


class UserError(click.ClickException):
    """An expected failure: bad input or an unusable machine. Printed as one message."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(UserError):
    """Bad arguments, a bad profile or a bad file given by the user (exit 2)."""

    exit_code = EXIT_USAGE
