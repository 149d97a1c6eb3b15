"""The frozen replacement model's residual stream as a linear map, ready to run backwards.

With attention patterns, norm scales and feature masks frozen and the MLP slots cut (their
features and errors are nodes), what is left between two points of the residual stream is
linear: the identity, attention's OV circuit per head, and the transcoder skip. This module
reads those weights once and folds every norm gain, centering and transcoder scale into
them, so that propagating a batch of gradients through one layer is two matrix products and
a per-head mix over positions:

    grad at r_l   +=  sum over kv heads of  ( sum_q mix_h[k, q] (g[q] · W_O,h) , heads of the group ) · W_V
    grad at r'_l  +=  s_mlp[p] (g_write[p] · W_skip)

with ``mix_h[k, q] = s_attn[k] · pattern_h[q, k] · s_post[q]`` (norm scales per position).

Constants (biases) are kept as the writes they make: ``attn_const`` and ``mlp_const``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from circuits.replacement.freeze import FrozenForward, FrozenNorm, post_norm_role
from circuits.models.adapter import Model


def linear_weight(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """A projection's weight as ``[d_out, d_in]`` (``y = x Wᵀ + b``) and its bias ``[d_out]``.

    GPT-2's ``Conv1D`` stores the weight the other way round.
    """
    w = module.weight.detach()
    b = getattr(module, "bias", None)
    b = None if b is None else b.detach()
    return (w.T if isinstance(module, Conv1D) else w), b


def value_projection(model: Model, layer: int) -> tuple[Tensor, Tensor | None]:
    """The V projection of ``layer``: ``[n_kv_heads * d_head, d_model]`` and its bias."""
    spec = model.spec
    w, b = linear_weight(model.module(spec.v_proj, layer))
    if spec.v_chunk is not None:
        i, n = spec.v_chunk
        size = w.shape[0] // n
        w = w[i * size:(i + 1) * size]
        b = None if b is None else b[i * size:(i + 1) * size]
    return w, b


def _fold_gain(w: Tensor, norm: FrozenNorm) -> Tensor:
    """``w [n, d_model]`` times the norm gain along d_model, centered along d_model for LayerNorm:
    the rows of ``w`` pulled back through the norm (less its per-position scale)."""
    out = w * norm.weight.to(w)[None, :]
    return out - out.mean(-1, keepdim=True) if norm.centered else out


@dataclass
class ResidualMap:
    """Per-layer tensors of the frozen residual map, in the compute dtype and device.

    Shapes: L layers, P positions, D = d_model, H heads of size dh, Hkv kv heads. Grads are
    batch-major, ``[B, P', D]`` for the first P' positions.
    """

    mix: Tensor
    """``[L, H, P(key), P(query)]``: ``s_attn[k] * pattern[h, q, k] * s_post[q]``, the frozen pattern
    transposed with the attention-input norm's scale (and Gemma's post-attention norm scale) folded in."""
    W_O: Tensor
    """``[L, D, H*dh]``: residual grad → grad of the per-head outputs z (post-norm gain folded)."""
    W_V: Tensor
    """``[L, Hkv*dh, D]``: grad of V → grad of the attention norm's input (gain and centering folded)."""
    mlp_scale: Tensor
    """``[L, P]`` the MLP-input norm's scale."""
    write_mul: Tensor | None
    """``[L, P, D]`` scale times gain of a norm between the transcoders' output site and the residual
    (Gemma with ``output_site="mlp_out"``); None when they write to the residual directly."""
    W_skip: Tensor | None
    """``[L, D, D]``: grad at the write site → grad of the MLP norm's input through the skip (less its scale)."""
    attn_const: Tensor
    """``[L, P, D]`` attention's write with all sources zero (V, O and norm biases)."""
    mlp_const: Tensor
    """``[L, D]`` the MLP slot's write with all sources zero (``b_dec``, skip of the norm bias), at the write site."""
    mlp_norms: list[FrozenNorm]
    """The frozen MLP-input norm of each layer (for target vectors and their bias terms)."""
    ln_final: FrozenNorm
    n_kv_heads: int
    d_head: int

    @property
    def n_layers(self) -> int:
        return int(self.W_O.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.mix.shape[1])

    def write_grad(self, layer: int, g: Tensor) -> Tensor:
        """Grad at ``layer``'s write site from the residual grad ``g [B, P', D]`` after it."""
        return g if self.write_mul is None else g * self.write_mul[layer, :g.shape[1]]

    def attn_back_(self, layer: int, g: Tensor) -> None:
        """Add to ``g [B, P', D]`` (contiguous, in place) what it picks up through ``layer``'s attention OV.

        Only the first P' positions take part: causal patterns carry a query's grad to earlier
        keys only. Heads sharing a kv head are summed inside one product over (head, query).
        """
        b, n, D = g.shape
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        G = H // Hkv
        x = g.view(b * n, D)
        gz = (x @ self.W_O[layer]).view(b, n, H, dh).permute(2, 1, 0, 3).reshape(Hkv, G * n, b * dh)
        mix = self.mix[layer, :, :n, :n].reshape(Hkv, G, n, n).permute(0, 2, 1, 3).reshape(Hkv, n, G * n)
        gv = torch.bmm(mix, gz)                                         # [Hkv, n(key), b*dh]
        gv = gv.view(Hkv, n, b, dh).permute(2, 1, 0, 3).reshape(b * n, Hkv * dh)
        x.addmm_(gv, self.W_V[layer])


def build_residual_map(model: Model, frozen: FrozenForward, transcoder: nn.Module, *, device: torch.device,
                       dtype: torch.dtype) -> ResidualMap:
    """Read and fold the frozen map's weights for ``model`` with ``transcoder`` in its MLP slots."""
    spec, d = model.spec, model.dims
    L, H, Hkv, dh = d.n_layers, d.n_heads, d.n_kv_heads, d.d_head
    P = frozen.n_pos

    def cast(t: Tensor) -> Tensor:
        return t.detach().to(device=device, dtype=dtype)

    norms = {role: [n.to(device, dtype) for n in per_layer] for role, per_layer in frozen.norms.items()}
    ln_attn, ln_mlp = norms["ln_attn"], norms["ln_mlp"]
    attn_post = norms.get("ln_attn_post")

    W_O, W_V, attn_const = [], [], []
    for layer in range(L):
        wo, bo = (cast(t) if t is not None else None for t in linear_weight(model.module("attn_z", layer)))
        wv, bv = (cast(t) if t is not None else None for t in value_projection(model, layer))
        post = attn_post[layer] if attn_post is not None else None
        W_O.append(wo * post.weight[:, None] if post is not None else wo)
        W_V.append(_fold_gain(wv, ln_attn[layer]))
        # Attention's constant write: V of the norm's bias (plus V's bias), mixed by the pattern.
        v0 = wv @ ln_attn[layer].bias if ln_attn[layer].bias is not None else torch.zeros(wv.shape[0], **_like(wv))
        v0 = v0 + bv if bv is not None else v0
        v0 = v0.view(Hkv, 1, dh).expand(Hkv, H // Hkv, dh).reshape(H, dh)
        z0 = cast(frozen.patterns[layer]).sum(-1)[:, :, None] * v0[:, None, :]   # [H, P, dh]
        out0 = z0.permute(1, 0, 2).reshape(P, H * dh) @ wo.T
        out0 = out0 + bo if bo is not None else out0
        attn_const.append(post(out0) if post is not None else out0)

    write_role = post_norm_role(spec, frozen.output_site)
    write = norms[write_role] if write_role else None

    tc = transcoder
    in_scale, out_scale = cast(tc.input_scale), cast(tc.output_scale)
    b_dec = cast(tc.b_dec) / out_scale[:, None]                         # [L, D]
    W_skip = None
    mlp_const = b_dec.clone()
    if getattr(tc, "W_skip", None) is not None:
        ws = cast(tc.W_skip)                                             # [L, D_in, D_out]
        W_skip = torch.stack([
            _fold_gain(ws[l].T, ln_mlp[l]) * (in_scale[l] / out_scale[l]) for l in range(L)
        ])
        for l in range(L):
            if ln_mlp[l].bias is not None:
                mlp_const[l] += (ln_mlp[l].bias * in_scale[l]) @ ws[l] / out_scale[l]

    # mix[l, h, k, q] = s_attn[k] * pattern[h, q, k] * s_post[q]: transposed and cast in one copy,
    # scaled in place, as [L, H, P, P] is the largest tensor of a long prompt's map.
    mix = torch.empty(frozen.patterns.shape, device=device, dtype=dtype)
    mix.copy_(frozen.patterns.transpose(-1, -2))
    mix.mul_(torch.stack([n.scale for n in ln_attn])[:, None, :, None])
    if attn_post is not None:
        mix.mul_(torch.stack([n.scale for n in attn_post])[:, None, None, :])
    return ResidualMap(
        mix=mix,
        W_O=torch.stack(W_O).contiguous(),
        W_V=torch.stack(W_V).contiguous(),
        mlp_scale=torch.stack([n.scale for n in ln_mlp]),
        write_mul=torch.stack([n.scale[:, None] * n.weight for n in write]) if write else None,
        W_skip=W_skip,
        attn_const=torch.stack(attn_const),
        mlp_const=mlp_const,
        mlp_norms=ln_mlp,
        ln_final=frozen.ln_final.to(device, dtype),
        n_kv_heads=Hkv,
        d_head=dh,
    )


def _like(t: Tensor) -> dict:
    return {"device": t.device, "dtype": t.dtype}
