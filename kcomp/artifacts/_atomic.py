"""Atomic writes: a Make target is either the old file, the new file, or absent; never half-written.

The new bytes go to a temp file beside the target, are fsynced and renamed over it. What a plain `open(path, "w")`
would have done stays true otherwise: the file gets the mode `open` gives it (0o666 & ~umask) or keeps the mode of
the file it replaces, a symlink to a file keeps pointing at it (its target is replaced), and a target that is not a
regular file (`/dev/null`, a FIFO, a terminal) is written into, never renamed over.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kcomp.errors import BadUsage, EnvironmentFailure

NAME_MAX = 255  # bytes in one path component on every filesystem kcomp expects
TEMP_PREFIX_BYTES = 40  # of the target's name kept in the temp name: recognisable, and never over NAME_MAX


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a file to write `path`'s new contents into; on success it replaces `path` whole."""
    path = Path(path)
    streamed = streamed_target(path)
    if streamed is not None:
        try:
            with open(streamed, mode) as f:
                yield f
        except OSError as e:
            if e.errno == 28:
                raise EnvironmentFailure("no space left on device", path=path) from e
            raise
        return
    path = Path(os.path.realpath(path)) if path.is_symlink() else path  # replace the link's target, keep the link
    path.parent.mkdir(parents=True, exist_ok=True)
    final_mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), final_mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        if e.errno == 28:  # ENOSPC: not the user's fault, but they should know which file
            raise EnvironmentFailure("no space left on device; nothing was written", path=path) from e
        raise
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def streamed_target(path: Path) -> Path | None:
    """`path` itself when it exists and is a character device or a FIFO (directly or through symlinks): such a
    target receives the bytes as they are written; renaming a file over it would destroy it (`-o /dev/null` as
    root). Other non-regular targets (directories, sockets, block devices) are usage errors."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return path
    what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file, FIFO or character device"
    raise BadUsage(f"{path}: is {what}; give a file to write")


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (another thread may be creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def _mode_for(path: Path) -> int:
    """The replaced file's permission bits, or those `open()` would give a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~umask()


def _temp_prefix(name: str) -> str:
    """`.<start of the name>.`: mkstemp adds 8 characters and `.tmp`, so any legal name gives a legal temp name."""
    head = os.fsencode(name)[:TEMP_PREFIX_BYTES]
    return "." + os.fsdecode(head) + "."


@contextlib.contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp directory beside `path` to write a directory's files into; on success they are moved
    into `path` (created if needed), each by a rename; on failure the temp directory goes and `path` is as it
    was, so a command that fails half-way leaves no partial (or empty) output directory behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            for src in sorted(tmp.rglob("*")):
                dst = path / src.relative_to(tmp)
                if src.is_dir():
                    dst.mkdir(exist_ok=True)
                else:
                    os.chmod(src, _mode_for(dst))
                    os.replace(src, dst)
        else:
            os.chmod(tmp, 0o777 & ~umask())
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path)


def _discard(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a crash right after could otherwise lose it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
