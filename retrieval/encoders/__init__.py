"""Frozen pretrained encoders and safe image opening: pixels and text in, features out."""
