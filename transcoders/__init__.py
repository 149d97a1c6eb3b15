"""Transcoders: train, evaluate, save and load per-layer and cross-layer transcoders."""

from transcoders.cache import cache_dir

__all__ = ["cache_dir"]
