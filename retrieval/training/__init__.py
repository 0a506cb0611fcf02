"""Datasets, cached features and training of the shared space and fusion heads."""
