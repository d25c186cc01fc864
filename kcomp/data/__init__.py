"""Datasets, samplers, augmentation pipelines and file decoding."""

import os

# albumentations asks PyPI for its latest version on every import (a request with a 2 s timeout, a warning when
# offline): kcomp never reaches for the network unasked. A user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
