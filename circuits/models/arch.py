"""The architecture map: where every tensor we read or patch lives in each model family.

This is the only file that spells a module path of a model. Everything else asks
for a *site* (``"mlp_in"``, ``"attn_z"``, ...) at a layer and gets back the module,
or the nnsight envoy, that holds it.

Sites, for a layer ``l`` (shapes for one prompt; a batch dimension leads in practice):

- ``resid_pre``    [n_pos, d_model]  residual stream entering layer l (layer 0: the scaled embedding)
- ``ln_attn``      [n_pos, d_model]  output of the norm that feeds attention
- ``attn_z``       [n_pos, n_heads * d_head]  per-head attention outputs before the output
                   projection sums them (reshape to [n_pos, n_heads, d_head])
- ``attn_pattern`` [n_heads, n_pos(query), n_pos(key)]  softmaxed attention (eager attention only)
- ``attn_out``     [n_pos, d_model]  what attention adds to the residual stream
                   (after Gemma's post-attention norm)
- ``mlp_in``       [n_pos, d_model]  MLP input, after its norm
- ``mlp_out``      [n_pos, d_model]  MLP output as computed by the MLP module
- ``mlp_resid``    [n_pos, d_model]  what the MLP adds to the residual stream
                   (after Gemma's post-feedforward norm; same tensor as ``mlp_out`` elsewhere)
- ``resid_post``   [n_pos, d_model]  residual stream leaving layer l

Model-wide: ``embed`` (token embedding module), ``ln_final`` (final norm), ``unembed``.
The norm modules themselves (to freeze their scales) are listed in ``ArchSpec.norms``;
how they compute is ``ArchSpec.norm_kind``. Attention-OV paths read the value projection
``ArchSpec.v_proj`` (and ``v_chunk`` where one module computes Q, K and V together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Io = Literal["input", "output"]
# "rms": x * s * w (Llama, Qwen); "rms_offset": x * s * (1 + w) (Gemma);
# "layer": (x - mean x) * s * w + b (GPT-2's LayerNorm). s is a per-position scalar.
NormKind = Literal["rms", "rms_offset", "layer"]

# Sites in the order a forward pass produces them within one layer. nnsight only lets a
# trace read values in execution order, so requests are sorted by this.
SITE_ORDER: tuple[str, ...] = (
    "resid_pre",
    "ln_attn",
    "attn_z",
    "attn_pattern",
    "attn_out",
    "mlp_in",
    "mlp_out",
    "mlp_resid",
    "resid_post",
)


@dataclass(frozen=True)
class Location:
    """A tensor inside the model: module path, input or output, and the tuple index if any."""

    path: str
    io: Io
    index: int | None = None


@dataclass(frozen=True)
class ArchSpec:
    """One model family. Paths under a layer use ``{layer}``; model-wide paths do not."""

    family: str
    model_types: tuple[str, ...]
    sites: dict[str, Location]
    embed: str
    ln_final: str
    unembed: str
    # Norms whose scales a replacement model freezes, by role, each a path under a layer.
    norms: dict[str, str]
    # Config attribute names; GPT-2 spells them differently from everybody else.
    n_layers_attr: str = "num_hidden_layers"
    d_model_attr: str = "hidden_size"
    n_heads_attr: str = "num_attention_heads"
    n_kv_heads_attr: str | None = "num_key_value_heads"
    n_ctx_attrs: tuple[str, ...] = ("max_position_embeddings",)
    # Does the residual stream start from embedding * sqrt(d_model)? (Gemma does.)
    scaled_embedding: bool = False
    # Every norm of the family (per layer and final) computes this way.
    norm_kind: NormKind = "rms"
    # The module under a layer whose output holds V; ``v_chunk = (i, n)`` when V is the i-th
    # of n equal chunks of that output's last dim (GPT-2's fused c_attn: (2, 3)).
    v_proj: str = ""
    v_chunk: tuple[int, int] | None = None
    # The modules holding Q and K, where they are separate from V's (unused when v_chunk fuses them).
    q_proj: str = ""
    k_proj: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def location(self, site: str, layer: int | None = None) -> Location:
        """Where ``site`` lives at ``layer``; raises with the valid names for a typo."""
        if site not in self.sites:
            raise KeyError(f"unknown site {site!r}; valid sites: {', '.join(SITE_ORDER)}")
        loc = self.sites[site]
        if "{layer}" in loc.path:
            if layer is None:
                raise ValueError(f"site {site!r} is per layer: pass layer=")
            return Location(loc.path.format(layer=layer), loc.io, loc.index)
        return loc


def _decoder_sites(layers: str, attn: str, z_proj: str, mlp: str, attn_write: Location | None,
                   mlp_write: Location | None, ln_attn: str) -> dict[str, Location]:
    """The site table of a pre-norm decoder whose layers live at ``layers.{layer}``."""
    layer = f"{layers}.{{layer}}"
    return {
        "resid_pre": Location(layer, "input", 0),
        "ln_attn": Location(f"{layer}.{ln_attn}", "output"),
        "attn_z": Location(f"{layer}.{attn}.{z_proj}", "input", 0),
        "attn_pattern": Location(f"{layer}.{attn}", "output", 1),
        "attn_out": attn_write or Location(f"{layer}.{attn}", "output", 0),
        "mlp_in": Location(f"{layer}.{mlp}", "input", 0),
        "mlp_out": Location(f"{layer}.{mlp}", "output"),
        "mlp_resid": mlp_write or Location(f"{layer}.{mlp}", "output"),
        "resid_post": Location(layer, "output"),
    }


# Per-head norms of queries and keys (Qwen3, Gemma-3; absent from Llama, Qwen2, Gemma-2): QK attributions
# freeze their scales.
_QK_NORMS = {"q_norm": "model.layers.{layer}.self_attn.q_norm", "k_norm": "model.layers.{layer}.self_attn.k_norm"}

LLAMA = ArchSpec(
    family="llama",
    # SmolLM2, Llama, Mistral-style and Qwen2/3 share one layout.
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    sites=_decoder_sites("model.layers", "self_attn", "o_proj", "mlp", None, None,
                         "input_layernorm"),
    embed="model.embed_tokens",
    ln_final="model.norm",
    unembed="lm_head",
    norms={"ln_attn": "model.layers.{layer}.input_layernorm",
           "ln_mlp": "model.layers.{layer}.post_attention_layernorm"},
    v_proj="model.layers.{layer}.self_attn.v_proj",
    q_proj="model.layers.{layer}.self_attn.q_proj",
    k_proj="model.layers.{layer}.self_attn.k_proj",
    extra=_QK_NORMS,
)

GEMMA = ArchSpec(
    family="gemma",
    # Gemma-2/3 sandwich each sublayer between two norms; the second is part of the write.
    model_types=("gemma2", "gemma3_text", "gemma3"),
    sites=_decoder_sites(
        "model.layers", "self_attn", "o_proj", "mlp",
        Location("model.layers.{layer}.post_attention_layernorm", "output"),
        Location("model.layers.{layer}.post_feedforward_layernorm", "output"),
        "input_layernorm",
    ),
    embed="model.embed_tokens",
    ln_final="model.norm",
    unembed="lm_head",
    norms={"ln_attn": "model.layers.{layer}.input_layernorm",
           "ln_attn_post": "model.layers.{layer}.post_attention_layernorm",
           "ln_mlp": "model.layers.{layer}.pre_feedforward_layernorm",
           "ln_mlp_post": "model.layers.{layer}.post_feedforward_layernorm"},
    scaled_embedding=True,
    norm_kind="rms_offset",
    v_proj="model.layers.{layer}.self_attn.v_proj",
    q_proj="model.layers.{layer}.self_attn.q_proj",
    k_proj="model.layers.{layer}.self_attn.k_proj",
    extra=_QK_NORMS,
)

GPT2 = ArchSpec(
    family="gpt2",
    model_types=("gpt2",),
    sites=_decoder_sites("transformer.h", "attn", "c_proj", "mlp", None, None, "ln_1"),
    embed="transformer.wte",
    ln_final="transformer.ln_f",
    unembed="lm_head",
    norms={"ln_attn": "transformer.h.{layer}.ln_1", "ln_mlp": "transformer.h.{layer}.ln_2"},
    n_layers_attr="n_layer",
    d_model_attr="n_embd",
    n_heads_attr="n_head",
    n_kv_heads_attr=None,
    n_ctx_attrs=("n_positions",),
    norm_kind="layer",
    v_proj="transformer.h.{layer}.attn.c_attn",
    v_chunk=(2, 3),
    extra={"pos_embed": "transformer.wpe"},
)

ARCHITECTURES: tuple[ArchSpec, ...] = (LLAMA, GEMMA, GPT2)


class UnsupportedArchitectureError(ValueError):
    """The model's family has no entry in the architecture map."""


def spec_for(model_type: str) -> ArchSpec:
    """The map entry for a transformers ``config.model_type``."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    known = sorted(t for s in ARCHITECTURES for t in s.model_types)
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} is not in the architecture map (supported: {', '.join(known)}). "
        "Fix: use a supported model, or add an ArchSpec for it in circuits/models/arch.py."
    )
