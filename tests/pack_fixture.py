"""A stand-in for a notebook image, offline: a fresh virtual environment that sees exactly the packages a base list
names (linked from this environment, not installed again) and cannot open a network connection; plus wheels of
installed pure-Python packages, so `kcomp pack --find-links --no-index` has something to fetch offline."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

# the guard a notebook with internet off amounts to: any connection attempt fails at once
SOCKET_GUARD = """\
import socket


def _offline(*args, **kwargs):
    raise OSError("network disabled: this environment stands for an offline notebook")


socket.socket.connect = socket.socket.connect_ex = _offline
socket.create_connection = _offline
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, metadata.Distribution]:
    """canonical name -> the distribution Python would import (first on sys.path)."""
    out: dict[str, metadata.Distribution] = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name and _canonical(name) not in out:
            out[_canonical(name)] = d
    return out


def write_base(path: Path, leave_out: set[str]) -> list[str]:
    """A base list of everything installed here except `leave_out` (and kcomp itself, which the package ships)."""
    dists = installed()
    names = sorted(n for n in dists if n not in {_canonical(x) for x in leave_out | {"kcomp"}})
    path.write_text("".join(f"{n}=={dists[n].version}\n" for n in names))
    return names


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The entries a distribution put directly in site-packages (packages, modules, its dist-info, .libs)."""
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    return {t for t in tops if t != "__pycache__" and not t.endswith(".pth")}


def fresh_venv(root: Path, base: list[str]) -> Path:
    """A venv (with its own pip) seeing only the `base` distributions, via a .pth to a folder of links; no
    network. Returns its python. Made without pip of its own: the base's pip and setuptools are the ones the
    base's packages were installed with (torch requires a newer setuptools than a new venv gets)."""
    root = root.resolve()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    shelf = root / "base-packages"
    shelf.mkdir()
    dists = installed()
    for name in sorted(set(map(_canonical, base))):
        dist = dists[name]
        for top in _top_level(dist):
            target = Path(str(dist.locate_file(top)))
            if target.exists() and not (shelf / top).exists():
                (shelf / top).symlink_to(target)
    (site / "base-packages.pth").write_text(f"{shelf}\n")
    (site / "sitecustomize.py").write_text(SOCKET_GUARD)
    return python


def wheel_from_installed(name: str, dest: Path) -> Path:
    """A wheel of an installed pure-Python distribution, from its RECORD (what pip installed is what the wheel
    held), with a fresh RECORD of hashes."""
    dist = metadata.distribution(name)
    info = next(Path(str(f)).parts[0] for f in dist.files if str(f).endswith(".dist-info/METADATA"))
    norm = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    wheel = dest / f"{norm}-{dist.version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for f in dist.files:
            rel = str(f)
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(("RECORD", "INSTALLER", "REQUESTED",
                                                                          "direct_url.json")):
                continue
            data = Path(str(dist.locate_file(f))).read_bytes()
            z.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append((rel, f"sha256={digest}", str(len(data))))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([*records, (f"{info}/RECORD", "", "")])
        z.writestr(f"{info}/RECORD", buf.getvalue())
    return wheel
