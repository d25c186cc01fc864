"""Pretrained weights the way timm, smp and effdet users get them: the library's own loading code reads the file
from the library's own cache (the Hugging Face hub cache for timm and smp, the torch hub cache for effdet's COCO
detectors), so anything a user already downloaded with those libraries is used as is.

kcomp adds three things around the library call, so that a run never starts from random weights by surprise and
never hangs on a network that is not there:
- `fetch` first looks the file up in the cache. Only when it is missing does it go to the network, and only if
  the network is allowed (`HF_HUB_OFFLINE` unset) and reachable (one TCP connection to the hub or the proxy, with
  a short timeout); then the library's own downloader fills the cache. Otherwise it raises `BadUsage` (exit 2),
  naming where it looked and that `--no-pretrained` trains from scratch. (huggingface_hub alone retries for ~20 s
  before failing on a machine without network; torch hub's download has no timeout at all.)
- `hub_offline` runs the library's load with the hub switched offline, so a cached file costs no network round
  trip (huggingface_hub otherwise asks the hub whether a newer revision exists).
- `record` says where the weights came from (hub id or URL, the file, its sha256) for the run's config.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kcomp.errors import BadUsage

# timm reads model.safetensors and falls back to pytorch_model.bin when a repo has no safetensors file
HF_SAFE, HF_BIN = "model.safetensors", "pytorch_model.bin"
PROBE_TIMEOUT = 3.0  # seconds to open one TCP connection to the hub before calling the network unreachable
FROM_SCRATCH = "--no-pretrained trains from scratch"
FILL = "run once with network to fill that cache (or copy it there)"


@dataclass
class Init:
    """How a model built for training takes its first weights: `pretrained` from the hub through the library,
    a local `weights` file (kcomp's loader; `partial` lets it fill less of the model), or random init (neither).
    The factories write where the weights came from to `source` (the run's config.json `weights_source`)."""

    pretrained: bool = False
    weights: str | None = None
    partial: bool = False
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "random"})


@dataclass(frozen=True)
class Source:
    """Where a library looks for pretrained weights: a Hugging Face hub repo (`kind` "hf-hub", `id` the repo,
    `files` the weights file first and any other file the library also reads) or a URL cached by torch hub
    (`kind` "url"). `fallback`: the weights file a library reads instead when the repo lacks `files[0]`."""

    kind: str
    id: str
    what: str  # how errors name the model, e.g. "timm resnet18.a1_in1k"
    revision: str | None = None
    files: tuple[str, ...] = (HF_SAFE,)
    fallback: str | None = None


def timm_source(name: str) -> Source:
    """Where timm's `pretrained=True` loads `name` (with its tag, if any) from: the same choice as timm's
    `_resolve_pretrained_source` (the hub when the model has a hub id, else its URL)."""
    cfg = timm_cfg(name)
    hub_id, url = (getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)) if cfg is not None else (None, None)
    what = f"timm {name}"
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        filename = getattr(cfg, "hf_hub_filename", None)
        return Source("hf-hub", repo, what, revision or None, (filename,) if filename else (HF_SAFE,),
                      None if filename else HF_BIN)
    if url:
        return Source("url", url, what)
    raise BadUsage(f"--model {name}: timm has no pretrained weights for it (timm.list_pretrained() lists those "
                   f"that have); {FROM_SCRATCH}")


def timm_cfg(name: str) -> Any:
    """timm's pretrained config of `name`; an unknown tag is a usage error listing the model's tags."""
    import timm
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag
        arch, _, tag = name.partition(".")
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        raise BadUsage(f"--model {name}: timm has no pretrained weights tagged {tag!r} for {arch} (tags: "
                       f"{', '.join(tags) or 'none'})") from None


def smp_source(encoder: str, weights: str) -> Source:
    """Where smp loads its own encoder `encoder`'s `weights` (e.g. imagenet) from: a pinned hub revision."""
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder]["pretrained_settings"]
    if weights not in settings:
        raise BadUsage(f"--pretrained-tag {weights}: smp encoder {encoder} has weights {', '.join(settings)}")
    s = settings[weights]
    return Source("hf-hub", s["repo_id"], f"smp encoder {encoder} ({weights})", s.get("revision"),
                  (HF_SAFE, "config.json"))


def url_source(url: str, what: str) -> Source:
    return Source("url", url, what)


# ----------------------------------------------------------------------------------------------- the cache


def cached(src: Source) -> Path | None:
    """The weights file the library would read, if every file it needs is in the cache; else None."""
    if src.kind == "url":
        path = url_cache_path(src.id)
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    for files in (src.files, (src.fallback, *src.files[1:]) if src.fallback else None):
        if files is None:
            continue
        found = [try_to_load_from_cache(src.id, f, revision=src.revision) for f in files]
        if all(isinstance(p, str) for p in found):
            return Path(found[0])
    return None


def url_cache_path(url: str) -> Path:
    """Where torch hub (timm's and effdet's `load_state_dict_from_url`) keeps a downloaded URL."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(url).path)


def cache_place(src: Source) -> str:
    if src.kind == "url":
        return str(url_cache_path(src.id))
    from huggingface_hub import constants

    return str(Path(constants.HF_HUB_CACHE) / f"models--{src.id.replace('/', '--')}")


def fetch(src: Source) -> Path:
    """The cached weights file of `src`, downloaded first by the library's own downloader when missing and the
    network is allowed and reachable; `BadUsage` naming the cache and `--no-pretrained` otherwise."""
    path = cached(src)
    if path is not None:
        return path
    where = f"{src.id} on the Hugging Face hub" if src.kind == "hf-hub" else src.id
    missing = f"pretrained weights of {src.what} ({where}) are not in the cache {cache_place(src)}"
    if offline():
        raise BadUsage(f"{missing} and HF_HUB_OFFLINE is set: {FILL}; {FROM_SCRATCH}")
    endpoint = _endpoint(src)
    if not reachable(endpoint):
        raise BadUsage(f"{missing} and {urlsplit(endpoint).hostname} cannot be reached (no network?): {FILL}; "
                       f"{FROM_SCRATCH}")
    try:
        _download(src)
    except Exception as e:  # noqa: BLE001 - any library/network failure becomes the one-line answer below
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BadUsage(f"pretrained weights of {src.what} could not be downloaded from {where}: {first}; "
                       f"{FROM_SCRATCH}") from None
    path = cached(src)
    if path is None:
        raise BadUsage(f"pretrained weights of {src.what}: downloaded, yet not found in {cache_place(src)}")
    return path


def _download(src: Source) -> None:
    from kcomp import console

    console.log(f"pretrained: downloading {src.what} from {src.id} into {cache_place(src)}")
    if src.kind == "url":
        import torch.hub

        dest = url_cache_path(src.id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(src.id, str(dest), progress=False)  # writes a temp file, then renames
        return
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    files = src.files
    try:
        hf_hub_download(src.id, files[0], revision=src.revision)
    except EntryNotFoundError:
        if src.fallback is None:
            raise
        hf_hub_download(src.id, src.fallback, revision=src.revision)
    for f in files[1:]:
        hf_hub_download(src.id, f, revision=src.revision)


def offline() -> bool:
    """The Hugging Face ecosystem's switch (`HF_HUB_OFFLINE=1`), honoured for torch hub URLs too."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _endpoint(src: Source) -> str:
    if src.kind == "url":
        return src.id
    from huggingface_hub import constants

    return constants.ENDPOINT


def reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether one TCP connection to `url`'s host (or the proxy the environment names for it) opens within
    `timeout` seconds. Run on a daemon thread so that a resolver that hangs cannot hang the command."""
    import urllib.request

    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "//" in proxy else f"http://{proxy}")
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    ok: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            ok.append(True)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(ok)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub offline for the duration: files come from the cache, no request is made."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


# ----------------------------------------------------------------------------------------------- loading


def load_with(src: Source, init: Init, build: Callable[[], Any], library: str) -> Any:
    """`build()` (a library call with its pretrained switch on) once `src`'s files are in the cache, with the hub
    offline; `init.source` records where the weights came from."""
    path = fetch(src)
    with hub_offline():
        out = build()
    loaded(init, src, path, library)
    return out


def loaded(init: Init, src: Source, path: Path, library: str) -> None:
    """Record (and log) that `path` of `src` gave the model its first weights."""
    from kcomp import console

    init.source = record(src, path, library)
    console.log(f"pretrained: {src.what} from {src.id} ({path}, sha256 {init.source['sha256'][:12]})")


def record(src: Source, path: Path, library: str) -> dict[str, Any]:
    """What config.json keeps of the weights: hub repo (and the snapshot the file resolved to) or URL, the cached
    file and its sha256."""
    out: dict[str, Any] = {"kind": src.kind, "library": library, "id": src.id}
    if src.kind == "hf-hub":
        parts = path.parts
        out["revision"] = parts[parts.index("snapshots") + 1] if "snapshots" in parts else src.revision
    return out | {"file": str(path), "sha256": sha256(path)}


def file_record(path: str | Path) -> dict[str, Any]:
    """The record of a local `--weights` file."""
    p = Path(path).resolve()
    return {"kind": "file", "id": str(p), "file": str(p), "sha256": sha256(p)}


def sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two records name the same starting weights: the same kind and content (cache paths may differ between
    machines training the folds of one run)."""
    return (a.get("kind"), a.get("sha256")) == (b.get("kind"), b.get("sha256"))


def with_tag(name: str, tag: str | None) -> str:
    """A timm model name with a pretrained tag (`--pretrained-tag a1_in1k` or `.a1_in1k`)."""
    if not tag:
        return name
    if "." in name:
        raise BadUsage(f"--pretrained-tag {tag}: --model {name} already names a tag; give one of the two")
    return f"{name}.{tag.lstrip('.')}"
