"""kcomp: composable commands that take a Kaggle-style vision competition from raw data to a submission.

The library never imports typer, and nothing here imports torch at import time, so `kcomp --help` stays fast.
"""

__version__ = "0.1.0"
