"""Batched prediction, TTA transforms and their inverses."""
