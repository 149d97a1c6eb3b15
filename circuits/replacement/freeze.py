"""Freeze one forward pass: attention patterns, norm scales and the MLP slot's input and write.

A replacement model for a prompt keeps every nonlinearity outside the MLPs at the value it
took on that prompt. What is frozen is read off a real forward pass through hooks at
architecture-map locations; norm scales are fitted to each norm's own input and output and
checked, so a wrong ``norm_kind`` in the map fails here rather than giving wrong graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from circuits.hooks import hooked, read_hook
from circuits.models.adapter import Model
from circuits.models.arch import ArchSpec, Location, NormKind

# Norm modules are read directly rather than through a site: input 0 and the output.
_IN = Location("", "input", 0)
_OUT = Location("", "output", None)


class FreezeError(RuntimeError):
    """The forward pass did not expose what a replacement model must freeze."""


@dataclass
class FrozenNorm:
    """A norm whose per-position scale is fixed, so that it is an affine map of its input:
    ``y = center(x) * scale[:, None] * weight + bias`` (centering and bias for LayerNorm only)."""

    kind: NormKind
    scale: Tensor
    """``[n_pos]``: 1/rms (or 1/std) of the input at each position on this prompt."""
    weight: Tensor
    """``[d_model]``: the effective gain (``1 + w`` for Gemma)."""
    bias: Tensor | None
    """``[d_model]`` or None."""

    @property
    def centered(self) -> bool:
        return self.kind == "layer"

    def __call__(self, x: Tensor) -> Tensor:
        """``x [..., n_pos, d_model]`` -> frozen norm output, same shape."""
        if self.centered:
            x = x - x.mean(-1, keepdim=True)
        y = x * self.scale[:, None].to(x.dtype) * self.weight.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> FrozenNorm:
        return replace(self, scale=self.scale.to(device, dtype), weight=self.weight.to(device, dtype),
                       bias=None if self.bias is None else self.bias.to(device, dtype))


def effective_weight(module: nn.Module, kind: NormKind, d_model: int) -> tuple[Tensor, Tensor | None]:
    """The gain and bias a norm module applies after scaling, ``([d_model], [d_model] | None)``."""
    w = getattr(module, "weight", None)
    w = torch.ones(d_model) if w is None else w.detach()
    if kind == "rms_offset":
        w = 1.0 + w.double()
    b = getattr(module, "bias", None) if kind == "layer" else None
    return w.double(), None if b is None else b.detach().double()


def fit_norm(module: nn.Module, kind: NormKind, x: Tensor, y: Tensor, name: str) -> FrozenNorm:
    """Fit the per-position scale of ``module`` from its input ``x`` and output ``y`` ``[n_pos, d_model]``.

    A least-squares fit rather than the textbook formula: it needs no epsilon and absorbs how
    the module rounds (Llama and Gemma compute the scale in float32 whatever the dtype).
    """
    w, b = effective_weight(module, kind, x.shape[-1])
    x, y = x.double(), y.double()
    w, b = w.to(x.device), None if b is None else b.to(x.device)
    base = (x - x.mean(-1, keepdim=True) if kind == "layer" else x) * w
    target = y if b is None else y - b
    scale = (base * target).sum(-1) / (base * base).sum(-1).clamp_min(1e-300)
    norm = FrozenNorm(kind, scale, w, b)
    err = float((norm(x) - y).abs().max() / y.abs().max().clamp_min(1e-30))
    if err > _fit_tolerance(module_dtype(module)):
        raise FreezeError(
            f"the norm {name} does not compute as a {kind!r} norm (fit error {err:.1e}). "
            "Fix: set norm_kind for this family in circuits/models/arch.py."
        )
    return norm


def module_dtype(module: nn.Module) -> torch.dtype:
    p = next(module.parameters(), None)
    return torch.float32 if p is None else p.dtype


def _fit_tolerance(dtype: torch.dtype) -> float:
    # Norms compute their scale in float32 even in float64 models; half precision rounds more.
    return {torch.float64: 1e-5, torch.float32: 1e-4}.get(dtype, 3e-2)


def post_norm_role(spec: ArchSpec, output_site: str) -> str | None:
    """The norm between a transcoder's output site and the residual stream, if any.

    Gemma's MLP output (``mlp_out``) passes its post-feedforward norm before the residual;
    ``mlp_resid`` is already past it.
    """
    if output_site == "mlp_out" and spec.sites["mlp_out"] != spec.sites["mlp_resid"] and "ln_mlp_post" in spec.norms:
        return "ln_mlp_post"
    return None


@dataclass
class FrozenForward:
    """Everything one forward pass fixes for a prompt of ``n_pos`` tokens (batch dim dropped)."""

    tokens: Tensor
    """``[n_pos]`` token ids."""
    logits: Tensor
    """``[d_vocab]`` the original model's logits at the last position."""
    embed: Tensor
    """``[n_pos, d_model]`` the residual stream entering layer 0 (scaled, plus positions for GPT-2)."""
    patterns: Tensor
    """``[n_layers, n_heads, n_pos(query), n_pos(key)]`` softmaxed attention."""
    norms: dict[str, list[FrozenNorm]]
    """Per-layer norms by role (``ln_attn``, ``ln_mlp``, Gemma's ``ln_attn_post``, ``ln_mlp_post``)."""
    ln_final: FrozenNorm
    mlp_in: Tensor
    """``[n_layers, n_pos, d_model]`` the transcoders' input (at ``input_site``)."""
    mlp_write: Tensor
    """``[n_layers, n_pos, d_model]`` what the MLP wrote (at ``output_site``)."""
    final: Tensor
    """``[n_pos, d_model]`` the final norm's output."""
    input_site: str
    output_site: str

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])


@torch.no_grad()
def freeze(model: Model, ids: Tensor, *, input_site: str = "mlp_in", output_site: str = "mlp_resid") -> FrozenForward:
    """Run ``model`` once on ``ids [1, n_pos]`` and record what a replacement model freezes."""
    spec, n_layers = model.spec, model.n_layers
    seen: dict[tuple[str, int], Tensor] = {}
    handles = []

    def keep(key: tuple[str, int]):
        def fn(t: Tensor | None) -> None:
            # Fused attention kernels return no pattern (None): reported below, with the fix.
            seen[key] = None if t is None else t.detach()[0]
        return fn

    def add(site_or_module: str | nn.Module, loc, key: tuple[str, int]) -> None:
        module = site_or_module if isinstance(site_or_module, nn.Module) else model.module(site_or_module, key[1])
        handles.append(read_hook(module, loc, keep(key)))

    add("resid_pre", spec.location("resid_pre", 0), ("embed", 0))
    for layer in range(n_layers):
        add("attn_pattern", spec.location("attn_pattern", layer), ("pattern", layer))
        add(input_site, spec.location(input_site, layer), ("mlp_in", layer))
        add(output_site, spec.location(output_site, layer), ("mlp_write", layer))
        for role in spec.norms:
            norm = model.norm(role, layer)
            add(norm, _IN, (f"{role}:in", layer))
            add(norm, _OUT, (f"{role}:out", layer))
    add(model.norm("ln_final"), _IN, ("ln_final:in", -1))
    add(model.norm("ln_final"), _OUT, ("ln_final:out", -1))
    with hooked(handles):
        logits = model.hf(ids).logits[0, -1].clone()  # not a view that keeps every position's [P, d_vocab] alive

    missing = [k for k in [("pattern", l) for l in range(n_layers)] if seen.get(k) is None]
    if missing:
        raise FreezeError(
            "the attention modules returned no patterns, so they cannot be frozen. "
            "Fix: load the model with attn_implementation='eager' (load_model does), or call "
            "model.hf.set_attn_implementation('eager')."
        )
    kind = spec.norm_kind
    norms = {role: [fit_norm(model.norm(role, l), kind, seen[(f"{role}:in", l)], seen[(f"{role}:out", l)],
                             f"{role} of layer {l}") for l in range(n_layers)]
             for role in spec.norms}
    ln_final = fit_norm(model.norm("ln_final"), kind, seen[("ln_final:in", -1)], seen[("ln_final:out", -1)],
                        "ln_final")
    return FrozenForward(
        tokens=ids[0].detach(),
        logits=logits.detach(),
        embed=seen[("embed", 0)],
        patterns=torch.stack([seen[("pattern", l)] for l in range(n_layers)]),
        norms=norms,
        ln_final=ln_final,
        mlp_in=torch.stack([seen[("mlp_in", l)] for l in range(n_layers)]),
        mlp_write=torch.stack([seen[("mlp_write", l)] for l in range(n_layers)]),
        final=seen[("ln_final:out", -1)],
        input_site=input_site,
        output_site=output_site,
    )
