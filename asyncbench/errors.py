"""User-facing errors: each carries one line saying what was wrong and what to do."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(UserError):
    """A bad command-line value (exit 2, like argparse)."""

    exit_code = 2
