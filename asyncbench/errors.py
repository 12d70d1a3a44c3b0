"""The errors the package raises on purpose; only cli.py turns them into one-line messages and exit codes."""

from __future__ import annotations

import traceback


class AsyncbenchError(Exception):
    """Base of every deliberate error, so the CLI can tell them from bugs."""


class UserError(AsyncbenchError):
    """A problem the user can fix (a missing file, an unusable device); the message says what to do."""


class ConfigError(UserError):
    """A configuration value that cannot work (a flag, a user.conf line, a null-engine spec)."""


class RunFailure(AsyncbenchError):
    """A run whose samples were completed as failed; ``__cause__`` keeps the original error and its traceback."""

    @classmethod
    def caused_by(cls, reason: str, cause: BaseException | None) -> RunFailure:
        """``reason`` with ``cause`` chained (as ``raise ... from cause`` would)."""
        failure = cls(reason)
        failure.__cause__ = cause
        return failure

    def details(self) -> dict[str, str | None]:
        """The failure for a JSON event log: the reason, the cause's type and its full traceback."""
        cause = self.__cause__
        return {
            "failure": str(self),
            "failure_type": type(cause).__name__ if cause is not None else None,
            "traceback": "".join(traceback.format_exception(cause)) if cause is not None else None,
        }
