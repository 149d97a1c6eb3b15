"""Transcoders: train, evaluate, save and load per-layer and cross-layer transcoders."""

from transcoders.cache import cache_dir
from transcoders.corpus import Corpus, Document, fetch_packaged
from transcoders.evaluate import Evaluation, evaluate
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
    # training, evaluation, saving and loading
    "PRESETS", "Evaluation", "HubUnavailableError", "NonFiniteError", "Preset", "TrainConfig",
    "TranscoderLoadError", "TranscoderModelMismatchError", "TranscoderShapeError", "evaluate", "harvest",
    "load_transcoder_dir", "load_transcoders", "save_transcoders", "train",
]
