"""The output guard every command runs before it reads data or computes anything: each output can be written, and
none of them is an input, a file read through an input, or inside an input run directory.

What an input reads through (cheap metadata only; a malformed input is left for its reader to report):
a run directory -> everything inside it and the folds file its config.json names; a predictions table -> its
index and its maps (.npz); a run's config.json -> its run directory.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kcomp.artifacts._atomic import NAME_MAX
from kcomp.errors import BadUsage, shown

PathLike = str | Path | None
STDIO = "-"


@dataclass
class _Read:
    """The files and run directories the inputs stand for, with why each is read (for the error line)."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)


def check_outputs(files: Mapping[str, PathLike] | None = None, dirs: Mapping[str, PathLike] | None = None, *,
                  inputs: Iterable[PathLike] = (), summary_on_stdout: bool = False, owns_dirs: bool = False) -> None:
    """Refuse (BadUsage, exit 2) before anything is written: two outputs on stdout (a `--json` summary counts as
    one), a file output that is a directory or lies under a file, a directory output that is a file, a name
    longer than the filesystem allows, and any output that is, or lies inside, what the `inputs` read.
    `files`/`dirs` map the option that names an output (`-o`, `--oof-output`, `--preview`) to its path.
    With `owns_dirs` (train's RUN, pack's PKG) an input inside an output directory is refused too."""
    files = {k: v for k, v in (files or {}).items() if v is not None}
    dirs = {k: v for k, v in (dirs or {}).items() if v is not None}
    for opt, v in [*files.items(), *dirs.items()]:
        if str(v) == "":
            raise BadUsage(f"{opt} '': an empty path; give a path")
    _check_stdout(files, dirs, summary_on_stdout)
    files = {k: Path(v) for k, v in files.items() if str(v) != STDIO}
    for opt, path in files.items():
        _check_writable(opt, path, want_dir=False)
    for opt, path in dirs.items():
        _check_writable(opt, Path(path), want_dir=True)
    _check_distinct(files)
    read = _read_through(inputs)
    for opt, path in [*files.items(), *((k, Path(v)) for k, v in dirs.items())]:
        _check_not_read(opt, path, read)
    if owns_dirs:
        held = [*read.files, *((run, "the input run") for run in read.runs)]
        for opt, path in dirs.items():
            real = Path(os.path.realpath(path))
            for f, why in held:
                if Path(os.path.realpath(f)).is_relative_to(real):
                    raise BadUsage(f"{opt} {shown(path)}: holds {why} {shown(f)}, which this command would "
                                   f"write over; give another {opt}")


def _check_stdout(files: Mapping[str, PathLike], dirs: Mapping[str, PathLike], summary: bool) -> None:
    on_stdout = [opt for opt, v in files.items() if str(v) == STDIO]
    for opt, v in dirs.items():
        if str(v) == STDIO:
            raise BadUsage(f"{opt} -: a directory cannot go to stdout; give a directory path")
    if len(on_stdout) > 1:
        raise BadUsage(f"{' and '.join(f'{o} -' for o in on_stdout)}: only one output can go to stdout")
    if on_stdout and summary:
        raise BadUsage(f"{on_stdout[0]} - with --json: both would go to stdout; write {on_stdout[0]} to a file "
                       f"or drop --json")


def _check_writable(opt: str, path: Path, *, want_dir: bool) -> None:
    long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise BadUsage(f"{opt} {shown(path)}: a name longer than {NAME_MAX} bytes ({len(os.fsencode(long))})")
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise BadUsage(f"{opt} {shown(path)}: cannot be used ({e.strerror})") from None
    if st is not None:
        is_dir = stat.S_ISDIR(st.st_mode)
        if want_dir and not is_dir:
            raise BadUsage(f"{opt} {shown(path)}: exists and is not a directory; give a directory")
        if not want_dir and is_dir:
            raise BadUsage(f"{opt} {shown(path)}: is a directory; give a file name to write")
        if not want_dir and not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise BadUsage(f"{opt} {shown(path)}: is not a regular file, FIFO or character device")
        if not is_dir and not stat.S_ISREG(st.st_mode):  # written into as it is: it must be writable itself
            if not os.access(path, os.W_OK):
                raise BadUsage(f"{opt} {shown(path)}: not writable (permission denied)")
            return
    parent = _existing_ancestor(path.parent)
    if not parent.is_dir():
        raise BadUsage(f"{opt} {shown(path)}: {shown(parent)} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadUsage(f"{opt} {shown(path)}: cannot write in {shown(parent)} (permission denied)")


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _check_distinct(files: Mapping[str, Path]) -> None:
    seen: dict[str, str] = {}
    for opt, path in files.items():
        real = os.path.realpath(path)
        if real in seen:
            raise BadUsage(f"{seen[real]} and {opt} name the same file {shown(path)}")
        seen[real] = opt


def _check_not_read(opt: str, path: Path, read: _Read) -> None:
    real = Path(os.path.realpath(path))
    for run in read.runs:
        if real.is_relative_to(Path(os.path.realpath(run))):
            raise BadUsage(f"{opt} {shown(path)}: lies inside the input run directory {shown(run)}; write "
                           f"outside it")
    for f, why in read.files:
        if _same_file(real, f):
            what = "is one of the inputs" if why == "input" else f"is {why} (read through an input)"
            raise BadUsage(f"{opt} {shown(path)}: {what}; write to another file")


def _same_file(real: Path, other: Path) -> bool:
    if real == Path(os.path.realpath(other)):
        return True
    try:
        return os.path.samefile(real, other)  # hard links
    except OSError:
        return False


def _read_through(inputs: Iterable[PathLike]) -> _Read:
    read = _Read()
    for item in inputs:
        if item is None or str(item) == STDIO:
            continue
        p = Path(item)
        if p.is_dir():
            if (p / "config.json").is_file():
                _add_run(read, p)
            continue
        read.files.append((p, "input"))
        if p.name == "config.json" and _json_schema(p) == "run-config":
            _add_run(read, p.parent)
        elif p.is_file():
            _add_table(read, p)
    return read


def _add_run(read: _Read, run: Path) -> None:
    read.runs.append(run)
    try:
        folds = json.loads((run / "config.json").read_text())["config"]["folds"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return
    if isinstance(folds, str):
        read.files.append((Path(folds), f"the folds file of run {shown(run)}"))


def _json_schema(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
        return data["schema"]["name"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None


def _add_table(read: _Read, path: Path) -> None:
    """A predictions table reads its index and its maps: both are outputs nobody should overwrite by accident."""
    from kcomp.artifacts.predictions import index_path, maps_path_of

    meta = _parquet_meta(path)
    if not meta or not isinstance(meta.get("schema"), dict) or meta["schema"].get("name") != "predictions":
        return
    index = index_path(str(path), meta)
    if index is not None:
        read.files.append((index, f"the index of predictions {shown(path)}"))
    maps = maps_path_of(str(path), meta)
    if maps is not None:
        read.files.append((maps, f"the maps of predictions {shown(path)}"))


def _parquet_meta(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PAR1":
                return None
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(b"kcomp")
        meta = json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 - any unreadable file is its reader's to report, with the right message
        return None
    return meta if isinstance(meta, dict) else None
