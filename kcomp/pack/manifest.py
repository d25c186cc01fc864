"""PKG/MANIFEST.json: the sha256 of every file, so a stale or half-uploaded dataset is found before a notebook
spends its GPU hours on it (`kcomp pack --verify PKG`, also the notebook's second step)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from kcomp.artifacts import read_json, write_json
from kcomp.errors import BadInput

MANIFEST = "MANIFEST.json"
# written beside the package by `kaggle datasets init` and read by the upload, not stored as dataset files
UPLOAD_METADATA = frozenset({"dataset-metadata.json", "datapackage.json"})


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_of(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under `root` but the manifest: POSIX relative path -> sha256 and size."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in UPLOAD_METADATA:
            out[rel] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return out


def content_id(files: dict[str, dict[str, Any]], commands: list[str]) -> str:
    """Names one package's content (models, wheels, commands): the notebook finds its package among the attached
    datasets by it, and the same inputs pack to the same id."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    for c in commands:
        h.update(c.encode() + b"\n")
    return h.hexdigest()[:16]


def write_manifest(root: Path, body: dict[str, Any]) -> str:
    return write_json(root / MANIFEST, "package", {**body, "files": files_of(root)})


def verify(root: Path) -> dict[str, Any]:
    """Compare `root` with its manifest; the first changed, missing or extra file is a one-line error naming it."""
    if not root.is_dir():
        raise BadInput("not a directory (a package from `kcomp pack`)", path=root)
    if not (root / MANIFEST).is_file():
        raise BadInput(f"not a kcomp package (no {MANIFEST})", path=root)
    manifest = read_json(root / MANIFEST, "package")
    listed: dict[str, dict[str, Any]] = manifest.get("files") or {}
    problems = []
    for rel, entry in listed.items():
        p = root / rel
        if not p.is_file():
            problems.append((p, f"missing (listed in {MANIFEST}): upload the whole package"))
        elif p.stat().st_size != entry.get("bytes") or sha256(p) != entry.get("sha256"):
            problems.append((p, f"changed since packing (sha256 differs from {MANIFEST})"))
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in UPLOAD_METADATA and rel not in listed:
            problems.append((p, f"not in {MANIFEST} (added after packing)"))
    if problems:
        path, what = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadInput(what + more, path=path)
    return {"package": str(root), "id": manifest.get("id"), "files": len(listed),
            "bytes": sum(int(e.get("bytes", 0)) for e in listed.values()),
            "kcomp_version": manifest.get("kcomp_version")}
