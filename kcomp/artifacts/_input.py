"""Input files: one check, before any reader opens them, that says what a path is when it is not a file to read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kcomp.errors import BadInput

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def describe(path: str | Path) -> str:
    """What `path` is, for an error line: 'missing', 'a directory', 'a regular file', 'a FIFO (named pipe)', ..."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    if stat.S_ISDIR(mode):
        return "a directory"
    return next((kind for test, kind in _KINDS if test(mode)), "a regular file")


def directory(path: str | Path, what: str = "directory") -> Path:
    """`path` when it is a directory; otherwise BadInput saying it is missing or what it is instead."""
    p = Path(path)
    kind = describe(p)
    if kind == "missing":
        raise BadInput(f"{what} not found", path=p)
    if kind != "a directory":
        raise BadInput(f"is {kind}, not a {what}", path=p)
    return p


def regular_file(path: str | Path, what: str = "a file") -> Path:
    """`path` when it is a regular file (symlinks followed); otherwise BadInput naming what it is. Readers seek
    (parquet, zip checkpoints), so a FIFO is refused rather than waited on; tables read a pipe as `-`."""
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise BadInput("no such file", path=p) from None
    except OSError as e:
        raise BadInput(f"cannot be read ({e.strerror})", path=p) from None
    if stat.S_ISDIR(st.st_mode):
        raise BadInput(f"is a directory, expected {what}", path=p)
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise BadInput(f"is {kind}, not a regular file (expected {what})", path=p)
    if not os.access(p, os.R_OK):
        raise BadInput("cannot be read (permission denied)", path=p)
    return p
