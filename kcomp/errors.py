"""Errors a user can cause. The CLI prints them as one line and exits 2; anything else exits 1."""

from __future__ import annotations

from pathlib import Path


class KcompError(Exception):
    """Bad usage or bad input: the message names the file, column or value at fault."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class BadInput(KcompError):
    """A file the user gave is missing, malformed or inconsistent."""


class BadUsage(KcompError):
    """Options that cannot work together or name something that does not exist."""


class ConfigMismatch(KcompError):
    """Resuming a run with options that differ from the ones it was started with."""


class EnvironmentFailure(KcompError):
    """Not the user's input but the machine (disk full, device lost): still one line, exit 1."""

    exit_code = 1


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the current step finished and a resumable state was saved. Exit 130."""

    exit_code = 130
