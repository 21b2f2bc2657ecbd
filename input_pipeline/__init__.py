"""Datasets (TFDS builders, array_record), preprocessing, splits and grain input."""
