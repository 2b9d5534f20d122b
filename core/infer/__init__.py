"""Inference: generation, decoding, metrics."""
