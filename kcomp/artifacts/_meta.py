"""Self-describing artifacts: every file records the kcomp version, its schema and the command that wrote it."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from kcomp import __version__
from kcomp.errors import BadInput

# schema name -> newest version this kcomp writes and reads
SCHEMAS: dict[str, int] = {
    "index": 1,
    "folds": 1,
    "predictions": 1,
    "thresholds": 1,
    "checkpoint": 1,
    "metrics": 1,
    "run-config": 1,
    "package": 1,
    "label-issues": 1,
    "pseudo": 1,
}


def command_line() -> str:
    """The invocation that produced an artifact, as a shell would re-run it."""
    prog = "kcomp" if sys.argv and sys.argv[0].endswith("kcomp") else sys.argv[0] if sys.argv else "python"
    return shlex.join([prog, *sys.argv[1:]])


def make_meta(schema: str, **extra: Any) -> dict[str, Any]:
    return {
        "kcomp_version": __version__,
        "schema": {"name": schema, "version": SCHEMAS[schema]},
        "command": command_line(),
        **extra,
    }


def carried(meta: dict[str, Any], *drop: str) -> dict[str, Any]:
    """What a derived artifact inherits from its source: everything but the fields `make_meta` writes anew."""
    return {k: v for k, v in meta.items() if k not in ("kcomp_version", "schema", "command", *drop)}


# what readers rely on in each schema's metadata: key -> (type, required). Keys of any schema get their type checked
# when present, so a hand-edited or foreign file is one clear line, not a crash deep inside a command.
_TYPES: dict[str, type] = {
    "root": str, "task": str, "kind": str, "classes": list, "index": str, "maps_file": str, "runs": list,
    "competition": str, "image_cache": dict, "config": dict, "setup": dict, "metric": str,
}
_OWN_TYPES: dict[tuple[str, str], type] = {  # (schema, key) -> type where a schema uses a common key its own way
    ("thresholds", "classes"): dict,  # class name -> values
    ("package", "runs"): dict,  # packed run name -> source, checkpoints
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "predictions": ("task", "kind"),
    "run-config": ("config", "setup"),
    "checkpoint": ("task",),
}


def parse_meta(raw: bytes | str | None, where: str) -> Any:
    """The JSON of a table's `kcomp` metadata key (None when absent); malformed JSON is the file's fault."""
    import json

    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise BadInput(f"its kcomp metadata is not valid JSON ({why})", path=where) from None


def check_meta(meta: Any, accept: str | tuple[str, ...], where: str) -> dict[str, Any]:
    """Reject files of the wrong kind, from a newer kcomp, or with metadata of the wrong shape, with one line naming
    the file."""
    accept = (accept,) if isinstance(accept, str) else accept
    expected = " or ".join(accept)
    if not isinstance(meta, dict) or "schema" not in meta:
        raise BadInput(f"not a kcomp artifact (no kcomp metadata); expected {expected}", path=where)
    schema = meta["schema"]
    if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
        raise BadInput(f"kcomp metadata 'schema' is {_kind(schema)}, expected {{\"name\": ..., \"version\": ...}}; "
                       f"expected {expected}", path=where)
    name, version = schema["name"], schema.get("version")
    if name not in accept:
        raise BadInput(f"is a kcomp {name!r} file, expected {expected}", path=where)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BadInput(f"{name} schema version {version!r} is not a version number (an integer >= 1)", path=where)
    if version > SCHEMAS[name]:
        raise BadInput(
            f"{name} schema version {version} is newer than this kcomp ({__version__}) reads "
            f"(<= {SCHEMAS[name]}); upgrade kcomp",
            path=where,
        )
    for key in REQUIRED.get(name, ()):
        if meta.get(key) is None:
            raise BadInput(f"{name} metadata lacks {key!r}", path=where)
    for key, want in _TYPES.items():
        want = _OWN_TYPES.get((name, key), want)
        if meta.get(key) is not None and not isinstance(meta[key], want):
            raise BadInput(f"{name} metadata {key!r} is {_kind(meta[key])}, expected {want.__name__}", path=where)
    for key in ("classes", "runs"):
        if isinstance(meta.get(key), list) and not all(isinstance(v, str) for v in meta[key]):
            raise BadInput(f"{name} metadata {key!r} holds a non-string item", path=where)
    return meta


def plain(value: Any) -> Any:
    """numpy scalars as the Python values they hold, so a message shows 7, not np.int64(7)."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", None) == 0 else value


def _kind(value: Any) -> str:
    return "missing" if value is None else f"{value!r:.40} ({type(value).__name__})"
