"""One prompt's clean replacement model: its frozen forward pass and its MLP slots' clean values,
what every edit and every measured effect starts from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from circuits.models.adapter import Model
from circuits.replacement.freeze import FrozenForward, freeze
from circuits.replacement.slots import MlpReplacement, as_compute, replace_mlps
from transcoders.positions import FEATURE_START


@dataclass
class CleanState:
    """A prompt's clean replacement model, in the model's dtype and on its device."""

    model: Model
    transcoders: nn.Module
    """A compute copy of the transcoders (the caller's own module when dtype and device already match)."""
    frozen: FrozenForward
    mlps: MlpReplacement

    @classmethod
    @torch.no_grad()
    def of(cls, model: Model, transcoders: nn.Module, prompt: str | Sequence[int] | Tensor, *,
           feature_start: int = FEATURE_START) -> CleanState:
        ids = model.tokenize(prompt)
        cfg = transcoders.cfg
        frozen = freeze(model, ids, input_site=cfg.input_site, output_site=cfg.output_site)
        tc = as_compute(transcoders, model.device, model.dtype)
        mlps = replace_mlps(tc, frozen, device=model.device, dtype=model.dtype, feature_start=feature_start)
        return cls(model, tc, frozen, mlps)

    @property
    def n_pos(self) -> int:
        return self.frozen.n_pos

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    @property
    def d_features(self) -> int:
        return int(self.transcoders.cfg.d_features)

    @property
    def feature_start(self) -> int:
        return self.mlps.feature_start
