"""Transcoders: train, save and load per-layer and cross-layer transcoders (evaluating them runs the
replacement model, so it lives in ``circuits.replacement.evaluate``)."""

from transcoders.cache import cache_dir
from transcoders.corpus import Corpus, Document, fetch_packaged
from transcoders.harvest import NonFiniteError, harvest
from transcoders.hub import HubUnavailableError
from transcoders.io import (
    TranscoderLoadError,
    TranscoderModelMismatchError,
    load_transcoder_dir,
    save_transcoders,
)
from transcoders.model import (
    CrossLayerTranscoder,
    Encoded,
    PerLayerTranscoder,
    Transcoder,
    TranscoderConfig,
    TranscoderOutput,
    TranscoderShapeError,
    build_transcoder,
)
from transcoders.sets import PRESETS, Preset, load_transcoders
from transcoders.train import TrainConfig, train

__all__ = [
    "Corpus", "CrossLayerTranscoder", "Document", "Encoded", "PerLayerTranscoder", "Transcoder",
    "TranscoderConfig", "TranscoderOutput", "build_transcoder", "cache_dir", "fetch_packaged",
    # training, saving and loading
    "PRESETS", "HubUnavailableError", "NonFiniteError", "Preset", "TrainConfig",
    "TranscoderLoadError", "TranscoderModelMismatchError", "TranscoderShapeError", "harvest",
    "load_transcoder_dir", "load_transcoders", "save_transcoders", "train",
]
