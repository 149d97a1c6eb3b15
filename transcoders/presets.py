"""Named training recipes, and the default set each known model loads.

``transcoders train --preset NAME`` trains a preset and saves it to
``cache_dir("transcoders", NAME)``, where ``load_transcoders(model)`` finds the default one.
The figures in each ``cost`` were measured on a shared 2-core CPU (see BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transcoders.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # the model's name as circuits.load_model reports it
    config: TrainConfig
    cost: str  # what building it takes, for error messages and the CLI's help
    default: bool = False  # the set load_transcoders(model) picks

    def train_config(self, **overrides: object) -> TrainConfig:
        return dataclasses.replace(self.config, **overrides)


_SMOLLM2 = "smollm2-135m-instruct"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "smollm2-quick", _SMOLLM2,
        TrainConfig(kind="plt", d_features=1024, activation="topk", k=64, skip=True, n_tokens=150_000,
                    seq_len=128, model_batch=8, chunk_batches=16, batch_tokens=1024, lr=2e-3,
                    warmup_steps=10, checkpoint_every=10, num_threads=2),
        cost="about 10 min on 2 idle AVX-512 CPU cores, about 20 on AVX2", default=True),
    Preset(
        "smollm2-clt", _SMOLLM2,
        # The quick preset's recipe and budget, with cross-layer decoders: same width, same k
        # (so the same L0 per layer), same tokens. Its skip is saved as W_skip_{i}, which
        # circuit-tracer's CLT loader does not read.
        TrainConfig(kind="clt", d_features=1024, activation="topk", k=64, skip=True, n_tokens=150_000,
                    seq_len=128, model_batch=8, chunk_batches=16, batch_tokens=1024, lr=2e-3,
                    warmup_steps=10, checkpoint_every=10, num_threads=2),
        cost="several hours on 2 CPU cores"),
)}


def default_preset(model_name: str) -> Preset | None:
    """The preset whose set ``load_transcoders(model)`` loads for a model of this name."""
    key = model_name.rstrip("/").split("/")[-1].lower()
    return next((p for p in PRESETS.values() if p.default and p.model == key), None)
