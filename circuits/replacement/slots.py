"""The MLP slots of the replacement model: transcoders encode each MLP's input, and an error term
per (layer, position) makes the slot's write equal the true MLP's on the prompt.

One position policy holds everywhere the replacement model is built: positions before
``feature_start`` (``transcoders.positions.FEATURE_START``, the first token: an attention sink
with outsized activations, where the transcoders are neither trained nor evaluated) have no
features; their MLP output is kept exactly, in their error term (plus the transcoder's bias and
skip, which are wire). Harvest, training, evaluation and labels skip the same positions.

In a graph, that error is no transcoder failure (nothing there was meant to be explained), so
``trace`` by default holds it as a constant, in each target's bias, rather than as an error node
(``early_errors``): the accounting circuit-tracer uses when it zeroes the error at the BOS, but
exact. The replacement model is the same either way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from circuits.replacement.freeze import FrozenForward
from transcoders.positions import FEATURE_START


@dataclass
class MlpReplacement:
    """The transcoders' side of the replacement model for one prompt (compute dtype).

    Shapes: P positions, L layers, F features per layer, D = d_model.
    """

    pre_acts: Tensor
    """``[P, L, F]`` encoder pre-activations."""
    acts: Tensor
    """``[P, L, F]`` activations, ``pre_acts * mask`` (zero before ``feature_start``)."""
    mask: Tensor
    """``[P, L, F]`` bool: which features are on. Frozen in the replacement model."""
    recon: Tensor
    """``[L, P, D]`` the transcoders' write (decoder, ``b_dec`` and skip)."""
    errors: Tensor
    """``[L, P, D]`` true MLP write minus ``recon``."""
    feature_start: int = FEATURE_START
    """Positions before this have no features (the module docstring)."""


def as_compute(transcoder: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``transcoder`` on ``device`` in ``dtype``: itself when it already is, else a copy (never moved in place)."""
    p = next(transcoder.parameters())
    if p.device == device and p.dtype == dtype:
        return transcoder
    return copy.deepcopy(transcoder).to(device=device, dtype=dtype)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """BatchTopK keeps k per token only in eval mode; restore the caller's mode after."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


def check_feature_start(feature_start: int) -> int:
    if isinstance(feature_start, bool) or not isinstance(feature_start, int) or feature_start < 0:
        raise ValueError(f"feature_start must be a whole number >= 0 (positions before it have no features), "
                         f"got {feature_start!r}. Fix: leave the default ({FEATURE_START}), or pass 0 for features "
                         "at every position.")
    return feature_start


def without_early_features(acts: Tensor, feature_start: int, pos_dim: int) -> Tensor:
    """``acts`` with every feature before position ``feature_start`` (along ``pos_dim``) set to zero."""
    if feature_start == 0:
        return acts
    acts = acts.clone()
    acts.narrow(pos_dim, 0, min(feature_start, acts.shape[pos_dim])).zero_()
    return acts


def early_errors(errors: Tensor, feature_start: int) -> tuple[Tensor, Tensor | None]:
    """Split ``errors [L, P, D]`` into error nodes and constants: ``(errors with every position before
    feature_start zeroed, the errors there [L, P, D] with the rest zeroed)``, which sum to ``errors``;
    ``(errors, None)`` when nothing is held."""
    if feature_start == 0:
        return errors, None
    held = torch.zeros_like(errors)
    held[:, :feature_start] = errors[:, :feature_start]
    return errors - held, held


@torch.no_grad()
def replace_mlps(transcoder: nn.Module, frozen: FrozenForward, *, device: torch.device, dtype: torch.dtype,
                 feature_start: int = FEATURE_START) -> MlpReplacement:
    """Encode the frozen MLP inputs and measure the error at every (layer, position)."""
    check_feature_start(feature_start)
    x = frozen.mlp_in.to(device=device, dtype=dtype).transpose(0, 1)   # [P, L, D]
    with eval_mode(transcoder):
        out = transcoder(x)
        acts, recon = out.acts, out.recon
        if feature_start:
            acts = without_early_features(acts, feature_start, pos_dim=0)
            recon = transcoder.decode(acts) + transcoder.skip(x)
    recon = recon.transpose(0, 1)
    errors = frozen.mlp_write.to(device=device, dtype=dtype) - recon
    return MlpReplacement(out.pre_acts, acts, acts != 0, recon, errors, feature_start)
