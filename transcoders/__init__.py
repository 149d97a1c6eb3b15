"""Transcoders: train, evaluate, save and load per-layer and cross-layer transcoders."""

from transcoders.cache import cache_dir
from transcoders.corpus import Corpus, Document, fetch_packaged
from transcoders.model import (
    CrossLayerTranscoder,
    Encoded,
    PerLayerTranscoder,
    Transcoder,
    TranscoderConfig,
    TranscoderOutput,
    build_transcoder,
)

__all__ = [
    "Corpus", "CrossLayerTranscoder", "Document", "Encoded", "PerLayerTranscoder", "Transcoder",
    "TranscoderConfig", "TranscoderOutput", "build_transcoder", "cache_dir", "fetch_packaged",
]
