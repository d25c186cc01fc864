"""Datasets, samplers, augmentation pipelines and file decoding."""
