"""Model factories. A model built for training starts from the hub's pretrained weights through its library
(`kcomp.models.pretrained`), from a local weights file, or from random init, as its `Init` says."""

from kcomp.models._factory import Normalized, create_cls_model, load_pretrained, strip_prefixes
from kcomp.models.pretrained import Init

__all__ = ["Init", "Normalized", "create_cls_model", "load_pretrained", "strip_prefixes"]
