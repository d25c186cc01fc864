"""Code competitions: `kcomp pack` turns a finished local workflow into an offline inference package (wheels,
stripped weights, predict.sh and a notebook replaying the recorded chain, a manifest of sha256s)."""

from kcomp.pack.build import PackOptions, pack, verify
from kcomp.pack.estimate import describe as describe_estimate

__all__ = ["PackOptions", "describe_estimate", "pack", "verify"]
