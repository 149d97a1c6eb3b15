"""Harvest (MLP input, MLP output) pairs for every layer from one batched model forward.

The model is duck-typed: anything with ``dims`` (``n_layers``, ``d_model``), ``device`` and
``record_batch(ids [B, T], [(site, layer), ...]) -> {(site, layer): [B, T, d_model]}`` (the key
``LOGITS`` for the logits ``[B, T, d_vocab]``), which ``circuits.models.Model`` provides.
``transcoders`` never imports ``circuits``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from transcoders.positions import FEATURE_START
from transcoders.precision import Precision, autocast


LOGITS = ("logits", -1)
"""``record_batch``'s key for the model's logits, read in the same forward as the sites."""


class NonFiniteError(ValueError):
    """Activations, a loss or weights hold NaN or infinity."""


class HarvestModel(Protocol):
    """What harvesting needs from a model (``circuits.models.Model`` has it)."""

    dims: Any
    name: str
    tokenizer: Any

    @property
    def device(self) -> torch.device: ...

    def record_batch(self, ids: Tensor, sites: Any, *, stop_early: bool = True) -> dict[tuple[str, int], Tensor]: ...


def harvest(model: HarvestModel, ids: Tensor, *, input_site: str = "mlp_in", output_site: str = "mlp_resid",
            precision: Precision = "auto", skip_first: int = FEATURE_START) -> tuple[Tensor, Tensor]:
    """MLP inputs and outputs of every layer for a batch of token rows.

    ``ids``: LongTensor ``[B, T]``. Returns ``x, y``: ``[B * (T - skip_first), n_layers, d_model]``,
    token-major. ``skip_first`` drops the first positions of every row: the first token is
    an attention sink whose MLP activations are tens of times larger than the rest, and
    would dominate the normalisation and the loss. Raises ``NonFiniteError`` on NaN/inf.
    """
    return _harvest(model, ids, input_site, output_site, precision, skip_first, logits=False)[:2]  # type: ignore[return-value]


def harvest_with_logits(model: HarvestModel, ids: Tensor, *, input_site: str = "mlp_in", output_site: str = "mlp_resid",
                        precision: Precision = "auto", skip_first: int = FEATURE_START) -> tuple[Tensor, Tensor, Tensor]:
    """``harvest``'s ``x, y`` and the model's logits ``[B, T, d_vocab]``, from one forward (which then runs
    to the end): evaluation and fine-tuning need both, and a second forward cost them a model pass."""
    return _harvest(model, ids, input_site, output_site, precision, skip_first, logits=True)  # type: ignore[return-value]


def _harvest(model: HarvestModel, ids: Tensor, input_site: str, output_site: str, precision: Precision,
             skip_first: int, logits: bool) -> tuple[Tensor, ...]:
    L = model.dims.n_layers
    if ids.ndim != 2 or ids.shape[1] <= skip_first:
        raise ValueError(f"harvest needs token rows [batch, n_pos > {skip_first}], got {tuple(ids.shape)}. "
                         "Fix: use longer rows (seq_len) or skip_first=0.")
    sites = [(s, layer) for layer in range(L) for s in (input_site, output_site)] + ([LOGITS] if logits else [])
    with autocast(model.device, precision):
        rec = model.record_batch(ids, sites)
    out = (rec[LOGITS],) if logits else ()
    # Stacking the sliced views gives the token-major layout in one copy (slicing after the stack
    # made the reshape copy everything again).
    x = torch.stack([rec[(input_site, layer)][:, skip_first:] for layer in range(L)], dim=2)
    y = torch.stack([rec[(output_site, layer)][:, skip_first:] for layer in range(L)], dim=2)
    x, y = x.reshape(-1, L, x.shape[-1]), y.reshape(-1, L, y.shape[-1])
    # A sum is NaN or infinite whenever a term is (or, rarely, when finite terms overflow, which the
    # full check below then clears): one read of each tensor instead of four passes and two masks.
    if bool(torch.isfinite(x.sum()) & torch.isfinite(y.sum())):
        return (x, y, *out)
    # Outputs first: a NaN born in layer l's MLP output reaches every later input, and the
    # earliest layer is the one worth naming.
    bad_y, bad_x = _bad_layers(y), _bad_layers(x)
    if bad_x or bad_y:
        site, bad = (output_site, bad_y) if bad_y and (not bad_x or bad_y[0] < bad_x[0]) else (input_site, bad_x)
        check_finite(y if site == output_site else x, f"{site} activations", "harvest")
    return (x, y, *out)


def _bad_layers(t: Tensor) -> list[int]:
    """Layers of ``t [N, n_layers, d]`` holding NaN/inf."""
    return (~torch.isfinite(t)).any(-1).any(0).nonzero().flatten().tolist()


def check_finite(t: Tensor, what: str, where: str) -> None:
    """Raise ``NonFiniteError`` naming the first bad layer when ``t [N, n_layers, d]`` holds NaN/inf."""
    bad = ~torch.isfinite(t)
    if not bad.any():
        return
    layers = _bad_layers(t.reshape(-1, *t.shape[-2:])) if t.ndim >= 2 else []
    raise NonFiniteError(
        f"{what} in {where} contain NaN or infinity (first at layer {layers[0] if layers else '?'}; "
        f"layers {layers[:8]}{'…' if len(layers) > 8 else ''}, "
        f"{int(bad.sum())} values). Fix: check the model's weights are finite; if it overflows in bf16, "
        "train in float32 (--precision fp32 / TrainConfig(precision='fp32')) or load the model in float32."
    )
