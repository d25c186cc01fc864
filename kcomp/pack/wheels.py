"""PKG/wheels/: kcomp's own wheel and a wheel of every dependency the notebook image lacks, so the notebook
installs with `pip install --no-index` (code competitions run without internet).

What the image has is a requirements-style base list (`--base`; `kaggle_gpu.txt` beside this module is a dated
snapshot of Kaggle's GPU image). Dependencies are followed through the installed packages' metadata and pinned to
the versions installed here, the ones the local chain ran with; a package the image has stops the walk (the image
brings its own dependencies)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from kcomp.errors import BadInput, BadUsage, EnvironmentFailure

DEFAULT_BASE = Path(__file__).with_name("kaggle_gpu.txt")


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_base(path: Path) -> dict[str, str | None]:
    """canonical name -> pinned version (None when the line gives none). Comments, blank lines and pip options
    are skipped; anything else that is not a requirement is an error naming the line."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not path.is_file():
        raise BadInput("no such file (a requirements-style list of what the notebook image has)", path=path)
    out: dict[str, str | None] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith(("#", "-")):
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement as e:
            raise BadInput(f"line {n}: not a requirement ({e})", path=path) from None
        pinned = [s.version for s in req.specifier if s.operator in ("==", "===")]
        out[canonical(req.name)] = pinned[0].split("+")[0] if pinned else None
    if not out:
        raise BadInput("names no package", path=path)
    return out


def wheel_requires(wheel: Path) -> list[str]:
    """Requires-Dist of a built wheel: what pip will ask for when the notebook installs it."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode()).get_all("Requires-Dist") or []


def missing(requires: list[str], base: dict[str, str | None]) -> tuple[list[Pin], list[str]]:
    """The dependencies (transitively) that `base` lacks, or has at a version the requirement excludes, pinned to
    the versions installed here; and a note for each base package installed here at another version (results may
    differ in the notebook)."""
    from packaging.requirements import Requirement

    pins: dict[str, Pin] = {}
    notes: list[str] = []
    todo = list(requires)
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonical(req.name)
        if name in pins:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            if name in base:
                continue
            raise BadUsage(f"kcomp needs {req} which is neither in the base list nor installed here") from None
        have = base.get(name)
        if name in base and (have is None or req.specifier.contains(have, prereleases=True)):
            if have and have != dist.version.split("+")[0]:
                notes.append(f"{name} {dist.version} here, {have} in the image")
            continue
        pins[name] = Pin(name, dist.version)
        todo.extend(dist.requires or [])
    return sorted(pins.values(), key=lambda p: p.name), sorted(set(notes))


WHEEL_SOURCES = ("pyproject.toml", "README.md", "kcomp", "commands")  # what setuptools reads to build the wheel


def build_kcomp_wheel(dest: Path) -> Path:
    """kcomp's own wheel, from the source tree this kcomp runs from (what the local chain ran)."""
    import kcomp

    source = Path(kcomp.__file__).resolve().parent.parent
    if not (source / "pyproject.toml").is_file():
        raise BadUsage(f"kcomp's wheel is built from its source tree, and {source} is not one: install kcomp from a "
                       f"checkout (pip install -e .) to pack")
    with tempfile.TemporaryDirectory(prefix="kcomp-wheel-") as tmp:
        # A copy of just what the wheel holds: building in the checkout would leave build/ and *.egg-info there
        # (and copying the whole tree could drag in a data/ or runs/ directory of many GB).
        copy = Path(tmp) / "kcomp"
        copy.mkdir()
        for name in WHEEL_SOURCES:
            src = source / name
            if src.is_dir():
                shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif src.is_file():
                shutil.copy2(src, copy / name)
        args = ["wheel", "--no-deps", "--quiet", "-w", str(dest), str(copy)]
        if _builds_in_place():
            args.insert(1, "--no-build-isolation")
        _pip(args)
    wheels = sorted(dest.glob("kcomp-*.whl"))
    if len(wheels) != 1:
        raise EnvironmentFailure(f"pip wheel left {len(wheels)} kcomp wheels", path=dest)
    return wheels[0]


def fetch_wheels(pins: list[Pin], dest: Path, *, find_links: list[str], no_index: bool,
                 python_version: str | None, platform: str | None) -> None:
    """One wheel per pin. For this interpreter's platform `pip wheel` (downloads wheels, builds pure-Python
    sdists); for another (`--python-version`/`--platform`, e.g. the notebook's Python) `pip download` of binary
    wheels only, since nothing can be built for a foreign platform here."""
    if not pins:
        return
    args = ["--no-deps", "--quiet", "-d" if (python_version or platform) else "-w", str(dest)]
    for link in find_links:
        args += ["--find-links", link]
    if no_index:
        args.append("--no-index")
    if python_version or platform:
        args = ["download", "--only-binary=:all:", *args]
        args += ["--python-version", python_version] if python_version else []
        args += ["--platform", platform] if platform else []
    else:
        args = ["wheel", *args]
    _pip([*args, *map(str, pins)])


def _builds_in_place() -> bool:
    """setuptools >= 70.1 builds wheels itself; older ones need pip's isolated build (setuptools from the index)."""
    try:
        major, minor = (int(x) for x in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


def _pip(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.lower().startswith("error")), lines[-1] if lines else "")
        raise EnvironmentFailure(f"pip {args[0]} failed: {why}")
