"""Where outputs land (issue 19 B and J): special files as -o keep their type and receive the bytes, created files get
the mode a plain open() gives them, replaced files keep theirs, and any legal file name works."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli

# commands writing each kind of file, as (argv before -o, how to read what was written)
TABLE = ("split", "{index}")
JSON = ("tune-threshold", "{oof}")
CSV = ("submit", "demo", "{test}")


def _argv(template: tuple[str, ...], demo_run: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in demo_run.items()}) for a in template]


def _content(data: bytes, kind: tuple[str, ...]) -> object:
    """What an output means, without the metadata that names the output path (`command`)."""
    if kind is TABLE:
        table = pq.read_table(pa.BufferReader(data))
        meta = json.loads(table.schema.metadata[b"kcomp"])
        return table.to_pandas().to_dict("list"), {k: v for k, v in meta.items() if k != "command"}
    if kind is JSON:
        return {k: v for k, v in json.loads(data).items() if k != "command"}
    return data


@contextlib.contextmanager
def _fifo_reader(path: Path) -> Iterator[dict[str, bytes]]:
    """A reader on FIFO `path` for as long as the block runs; what it read is in the yielded dict's "data"."""
    got: dict[str, bytes] = {}

    def read() -> None:
        with open(path, "rb") as f:
            got["data"] = f.read()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        yield got
    finally:
        if t.is_alive():  # kcomp never opened it: unblock the reader
            with contextlib.suppress(OSError), open(path, "wb"):
                pass
        t.join(30)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def reference(demo_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, bytes]:
    """Each kind's output written to a regular file, to compare what a special file receives with."""
    out = tmp_path_factory.mktemp("reference")
    refs = {}
    for i, kind in enumerate((TABLE, JSON, CSV)):
        r = run_cli(*_argv(kind, demo_run), "-o", out / f"ref{i}")
        assert r.code == 0, r.stderr
        refs[kind] = (out / f"ref{i}").read_bytes()
    return refs


@pytest.mark.parametrize("via_symlink", [False, True], ids=["fifo", "symlink-to-fifo"])
@pytest.mark.parametrize("kind", [TABLE, JSON, CSV], ids=["table", "json", "csv"])
def test_fifo_output_receives_the_bytes_and_stays_a_fifo(demo_run, reference, tmp_path, kind, via_symlink):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = fifo
    if via_symlink:
        target = tmp_path / "link"
        target.symlink_to(fifo)
    with _fifo_reader(fifo) as got:
        r = run_cli(*_argv(kind, demo_run), "-o", target, timeout=120)
    assert r.code == 0, r.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert target.is_symlink() is via_symlink
    assert _content(got["data"], kind) == _content(reference[kind], kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"pipe", target.name}), "no temp file left"


@pytest.mark.parametrize("via_symlink", [False, True], ids=["device", "symlink-to-device"])
def test_character_device_output_keeps_its_type(demo_run, tmp_path, via_symlink):
    """A private null device (os.mknod, as root in a container): written into, never renamed over. (Run as root,
    `-o /dev/null` used to replace /dev/null itself with a regular file.)"""
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot create a device node here: {e}")
    target = dev
    if via_symlink:
        target = tmp_path / "link"
        target.symlink_to(dev)
    for kind in (CSV,) if via_symlink else (TABLE, JSON, CSV):
        r = run_cli(*_argv(kind, demo_run), "-o", target)
        assert r.code == 0, r.stderr
        st = dev.lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        assert target.is_symlink() is via_symlink
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"null", target.name}), "no temp file left"


def test_dev_null_is_never_replaced(demo_run):
    before = os.stat("/dev/null")
    r = run_cli(*_argv(CSV, demo_run), "-o", "/dev/null")
    assert r.code == 0, r.stderr
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_rdev, after.st_ino) == (before.st_rdev, before.st_ino)


def test_dev_full_is_a_failure_of_the_machine_not_a_bug(demo_run):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    r = run_cli(*_argv(JSON, demo_run), "-o", "/dev/full")
    assert r.code == 1, r.stderr
    assert r.stderr.splitlines()[0] == "kcomp: error: /dev/full: no space left on device"


def test_created_outputs_get_the_mode_open_gives(demo_run, tmp_path):
    mask = 0o027  # not the usual 0o022, and group-readable: neither the old 0600 nor a fixed 0644 passes
    with _umask(mask):
        for i, kind in enumerate((TABLE, JSON, CSV)):
            out = tmp_path / f"out{i}"
            assert run_cli(*_argv(kind, demo_run), "-o", out).code == 0
            assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
        report = tmp_path / "report"
        assert run_cli("report", demo_run["oof"], "-o", report).code == 0
        assert stat.S_IMODE(report.stat().st_mode) == 0o777 & ~mask
        entries = list(report.rglob("*"))  # PNGs and index.html; the worst-rows gallery is a directory
        assert {stat.S_IMODE(p.stat().st_mode) for p in entries if p.is_file()} == {0o666 & ~mask}
        assert {stat.S_IMODE(p.stat().st_mode) for p in entries if p.is_dir()} <= {0o777 & ~mask}


def test_a_replaced_output_keeps_its_mode(demo_run, tmp_path):
    out = tmp_path / "folds.parquet"
    with _umask(0o077):
        assert run_cli(*_argv(TABLE, demo_run), "-o", out).code == 0
        os.chmod(out, 0o644)
        assert run_cli(*_argv(TABLE, demo_run), "-o", out).code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_symlinked_output_replaces_its_target_and_stays_a_link(demo_run, tmp_path):
    target = tmp_path / "real" / "folds.parquet"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "folds.parquet"
    link.symlink_to(target)
    assert run_cli(*_argv(TABLE, demo_run), "-o", link).code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert pq.read_table(target).num_rows > 0


@pytest.mark.parametrize("length", [249, 255])
def test_any_legal_file_name_is_written(demo_run, tmp_path, length):
    """The temp file beside the output has a short name of its own (it once took the output's name plus 14 bytes)."""
    out = tmp_path / ("n" * (length - 8) + ".parquet")
    assert run_cli(*_argv(TABLE, demo_run), "-o", out).code == 0
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
