"""The replacement model: transcoders in the MLP slots, everything else frozen, errors added back.

``replace_mlps`` runs the transcoders on the MLP inputs of a frozen forward pass and returns
their activations, masks and the error term per (layer, position): true MLP write minus
transcoder output, so that the replacement model reproduces the original exactly.

``run_replacement`` is the replacement model as an actual forward pass of the real model,
with hooks: frozen norms and attention patterns, and the transcoder write (plus error) in
place of each MLP's. It takes a batch of sources to substitute (feature activations, error
vectors, embeddings), which is how tests measure each edge by direct intervention, and how
patching will ablate nodes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from circuits.attribution.freeze import FrozenForward, FrozenNorm
from circuits.attribution.hooks import first_input, hooked, read_hook, write_hook
from circuits.models.adapter import Model
from circuits.models.arch import Location

_OUT = Location("", "output", None)


@dataclass
class MlpReplacement:
    """The transcoders' side of the replacement model for one prompt (compute dtype).

    Shapes: P positions, L layers, F features per layer, D = d_model.
    """

    pre_acts: Tensor
    """``[P, L, F]`` encoder pre-activations."""
    acts: Tensor
    """``[P, L, F]`` activations, ``pre_acts * mask``."""
    mask: Tensor
    """``[P, L, F]`` bool: which features are on. Frozen in the replacement model."""
    recon: Tensor
    """``[L, P, D]`` the transcoders' write (decoder, ``b_dec`` and skip)."""
    errors: Tensor
    """``[L, P, D]`` true MLP write minus ``recon``."""


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


@torch.no_grad()
def replace_mlps(transcoder: nn.Module, frozen: FrozenForward, *, device: torch.device,
                 dtype: torch.dtype) -> MlpReplacement:
    """Encode the frozen MLP inputs and measure the error at every (layer, position)."""
    x = frozen.mlp_in.to(device=device, dtype=dtype).transpose(0, 1)   # [P, L, D]
    with eval_mode(transcoder):
        out = transcoder(x)
    recon = out.recon.transpose(0, 1)
    errors = frozen.mlp_write.to(device=device, dtype=dtype) - recon
    return MlpReplacement(out.pre_acts, out.acts, out.acts != 0, recon, errors)


@dataclass
class ReplacementRun:
    """What a replacement forward pass saw, for a batch of B substitutions."""

    logits: Tensor
    """``[B, P, d_vocab]``."""
    final: Tensor
    """``[B, P, D]`` the final norm's output."""
    mlp_in: Tensor
    """``[B, L, P, D]`` each transcoder's input."""
    pre_acts: Tensor
    """``[B, P, L, F]`` every feature's encoder pre-activation on that input."""
    acts: Tensor
    """``[B, P, L, F]`` the activations the MLP slots wrote with."""


@torch.no_grad()
def run_replacement(model: Model, frozen: FrozenForward, transcoder: nn.Module, mlps: MlpReplacement, *,
                    acts: Tensor | None = None, errors: Tensor | None = None,
                    embed: Tensor | None = None) -> ReplacementRun:
    """The frozen replacement model as a hooked forward of the real model.

    Args:
        acts: ``[B, P, L, F]`` feature activations to write with, held fixed (direct effects).
            None: the replacement model computes them, ``pre_acts * frozen mask``.
        errors: ``[B, L, P, D]`` error vectors; None: the measured ones.
        embed: ``[B, P, D]`` residual stream entering layer 0; None: the real one.
    All run in the model's dtype; transcoder weights are cast to it.
    """
    spec, d = model.spec, model.dims
    L = d.n_layers
    dt, dev = model.dtype, model.device
    B = next((t.shape[0] for t in (acts, errors, embed) if t is not None), 1)
    tc = as_compute(transcoder, dev, dt)
    mask = mlps.mask.to(dev)
    err = (mlps.errors[None].expand(B, -1, -1, -1) if errors is None else errors).to(dev, dt)
    fixed = None if acts is None else acts.to(dev, dt)

    seen_in: dict[int, Tensor] = {}
    seen_acts: dict[int, Tensor] = {}
    final: list[Tensor] = []

    handles = frozen_attention_hooks(model, frozen, dev, dt)
    handles.append(read_hook(model.norm("ln_final"), _OUT, final.append))  # after the final norm's freeze

    if embed is not None:
        handles.append(write_hook(model.module("resid_pre", 0), spec.location("resid_pre", 0),
                                  lambda x: embed.to(dev, dt)))

    for layer in range(L):
        def keep_in(x: Tensor, layer: int = layer) -> None:
            seen_in[layer] = x
            if fixed is None:
                seen_acts[layer] = tc.pre_acts(x, layer) * mask[:, layer]
            else:
                seen_acts[layer] = fixed[:, :, layer]

        def mlp_write(_: Tensor, layer: int = layer) -> Tensor:
            return tc.output_at(seen_in[layer], seen_acts, layer) + err[:, layer]

        in_loc, out_loc = spec.location(frozen.input_site, layer), spec.location(frozen.output_site, layer)
        handles.append(read_hook(model.module(frozen.input_site, layer), in_loc, keep_in))
        handles.append(write_hook(model.module(frozen.output_site, layer), out_loc, mlp_write))

    ids = frozen.tokens[None].to(dev).expand(B, -1)
    with hooked(handles):
        logits = model.hf(ids).logits
    mlp_in = torch.stack([seen_in[l] for l in range(L)], dim=1)          # [B, L, P, D]
    pre = torch.stack([tc.pre_acts(mlp_in[:, l], l) for l in range(L)], dim=2)
    used = torch.stack([seen_acts[l] for l in range(L)], dim=2)
    return ReplacementRun(logits, final[-1], mlp_in, pre, used)


def frozen_attention_hooks(model: Model, frozen: FrozenForward, device: torch.device,
                           dtype: torch.dtype) -> list[RemovableHandle]:
    """Hooks that hold every norm's scale and every head's pattern at the clean prompt's values, so
    a pass is linear outside the MLP slots: each norm returns its frozen map of its input, and each
    head's output is the frozen pattern applied to this pass's V."""
    spec, d = model.spec, model.dims
    H, Hkv, dh = d.n_heads, d.n_kv_heads, d.d_head
    patterns = frozen.patterns.to(device, dtype)  # [L, H, P, P]
    handles: list[RemovableHandle] = []

    def freeze_norm(module: nn.Module, norm: FrozenNorm) -> None:
        handles.append(module.register_forward_hook(
            lambda m, a, kw, out: norm(first_input(a, kw)), with_kwargs=True))

    for role, per_layer in frozen.norms.items():
        for layer, norm in enumerate(per_layer):
            freeze_norm(model.norm(role, layer), norm)
    freeze_norm(model.norm("ln_final"), frozen.ln_final)

    seen_v: dict[int, Tensor] = {}
    for layer in range(d.n_layers):
        def keep_v(v: Tensor, layer: int = layer) -> None:
            if spec.v_chunk is not None:
                i, n = spec.v_chunk
                v = v.chunk(n, dim=-1)[i]
            seen_v[layer] = v

        def frozen_z(z: Tensor, layer: int = layer) -> Tensor:
            # z[b, q, h] = sum_k P[h, q, k] V[b, k, kv(h)]: the frozen pattern applied to this pass's V.
            v = seen_v[layer]
            v = v.reshape(*v.shape[:2], Hkv, 1, dh).expand(-1, -1, -1, H // Hkv, -1).reshape(*v.shape[:2], H, dh)
            mixed = torch.einsum("hqk,bkhe->bqhe", patterns[layer], v)
            return mixed.reshape(z.shape).contiguous()  # GPT-2's Conv1D views its input

        handles.append(read_hook(model.module(spec.v_proj, layer), _OUT, keep_v))
        handles.append(write_hook(model.module("attn_z", layer), spec.location("attn_z", layer), frozen_z))
    return handles
