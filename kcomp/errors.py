"""Errors a user can cause. The CLI prints them as one line and exits 2; anything else exits 1."""

from __future__ import annotations

from pathlib import Path


class KcompError(Exception):
    """Bad usage or bad input: the message names the file, column or value at fault."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{shown(self.path)}: {message}" if self.path else message)


def shown(path: str | Path) -> str:
    """A path as an error line shows it: as is, or quoted with escapes when it holds a newline or another control
    character that would cut or garble the one line a user sees."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def one_line(text: str) -> str:
    """The last line of defence for messages that embed paths or values without `shown`: control characters
    escaped, so the message stays one whole line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
