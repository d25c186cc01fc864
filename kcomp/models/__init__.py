"""Model factories. Weights only ever come from local files; without one, models start from random init."""

from kcomp.models._factory import Normalized, create_cls_model, load_pretrained, strip_prefixes

__all__ = ["Normalized", "create_cls_model", "load_pretrained", "strip_prefixes"]
