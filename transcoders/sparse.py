"""Decoding that touches only the active features: what makes training on a CPU affordable.

A dense decode costs ``d_features · d_model`` per token and target layer; with k active
features it is ``k · d_model``. A CLT's features write to every later layer, so its decode is
``n_layers / 2`` times a PLT's (15.5× for 30 layers) and dominates its training step. Sparse
kernels pay more per multiply-add than a dense matmul, so what wins is keeping every one of them
inside the cache: the work is cut into (source layer, target layer) pairs, each of which reads one
``[d_features, d_model]`` slice of the decoder (2.4 MB at width 1,024 for SmolLM2).

Per pair, with ``p`` running over the active (token, feature) entries of the source layer:

- forward: ``out[tok_p] += val_p · W[feat_p]``, an ``embedding_bag`` with the entries as bags by token;
- the decoder's gradient: ``dW[f] = Σ_{p: feat_p = f} val_p · dout[tok_p]``, the same ``embedding_bag``
  with the roles swapped (bags by feature, ``dout`` as the table);
- the values' gradient: ``dval_p = dout[tok_p] · W[feat_p]``, a sampled matmul (``sampled_addmm``).

All three are exact. The values' gradient comes out only at active features. That is exact for
TopK, BatchTopK and ReLU, whose own backward passes nothing to inactive features, but not for
JumpReLU, whose threshold learns from features just *below* it: train those densely.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from transcoders.model import Transcoder

# Above this fraction of active features a dense decode runs. benchmarks/sparse_decode.py times one
# pair both ways: on an AVX2 CPU the sparse kernels take 0.27× the dense time at 6.25% and 0.74× at
# 25% (sparse work grows with density, dense does not); 15% keeps a margin.
DENSITY_LIMIT = 0.15


@dataclass(frozen=True)
class _Pattern:
    """Which (token, feature) entries of one source layer are active, indexed both ways."""

    tok: Tensor  # [nnz] sorted
    feat: Tensor  # [nnz]
    tok_offsets: Tensor  # [N]: where each token's entries start
    by_feat: Tensor  # [nnz]: the permutation that sorts the entries by feature
    feat_offsets: Tensor  # [d_features]
    mask: Tensor  # [N, d_features] CSR of ones: the entries, for the sampled matmul

    @classmethod
    def of(cls, tok: Tensor, feat: Tensor, n_tokens: int, d_features: int, dtype: torch.dtype) -> _Pattern:
        def starts(index: Tensor, n: int) -> Tensor:
            counts = torch.bincount(index, minlength=n)
            return torch.cumsum(counts, 0) - counts

        tok_offsets = starts(tok, n_tokens)
        crow = torch.cat([tok_offsets, tok.new_tensor([tok.numel()])])
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            mask = torch.sparse_csr_tensor(crow, feat, torch.ones(feat.numel(), dtype=dtype, device=feat.device),
                                           (n_tokens, d_features))
        return cls(tok, feat, tok_offsets, torch.argsort(feat, stable=True), starts(feat, d_features), mask)


class _Decode(torch.autograd.Function):
    """Every source layer's writes ``[N, n_layers, d_model]`` (no bias, no scale) from the active
    values ``vals [nnz]`` (grouped by source layer, ``sizes`` entries each) and the decoders.

    One function for the whole decode, so that autograd never sees a slice of the output or a
    layer of a stacked decoder: either would make its backward fill a full-size zero gradient
    per layer, which costs more than the decode itself.
    """

    @staticmethod
    def forward(ctx, vals: Tensor, pats: list[_Pattern], sizes: list[int], stacked: bool,  # type: ignore[override]
                *weights: Tensor) -> Tensor:
        decoders = _per_source(weights, stacked)
        N, L, D = pats[0].tok_offsets.numel(), len(decoders), decoders[0].shape[-1]
        # Layer-major, so that each pair adds into one contiguous [N, D] block.
        out = torch.zeros(L, N, D, dtype=decoders[0].dtype, device=decoders[0].device)
        for s, (pat, v, W) in enumerate(zip(pats, vals.to(out.dtype).split(sizes), decoders, strict=True)):
            for t in range(W.shape[1]):
                out[s + t] += F.embedding_bag(pat.feat, W[:, t], pat.tok_offsets, mode="sum", per_sample_weights=v)
        ctx.save_for_backward(vals, *weights)
        ctx.pats, ctx.sizes, ctx.stacked = pats, sizes, stacked
        return out.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        vals, *weights = ctx.saved_tensors
        decoders = _per_source(weights, ctx.stacked)
        # Layer-major, so each pair's slice of the gradient is one contiguous [N, D] table.
        go = grad_out.to(decoders[0].dtype).transpose(0, 1).contiguous()  # [L, N, D]
        g_vals, g_dec = [], []
        for s, (pat, v, W) in enumerate(zip(ctx.pats, vals.to(go.dtype).split(ctx.sizes), decoders, strict=True)):
            g_v = torch.zeros_like(v)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for t in range(W.shape[1]):
                    g_v += torch.sparse.sampled_addmm(pat.mask, go[s + t], W[:, t].t(), beta=0.0).values()
            g_vals.append(g_v)
            tok, v_f = pat.tok[pat.by_feat], v[pat.by_feat]
            g_dec.append(torch.stack([F.embedding_bag(tok, go[s + t], pat.feat_offsets, mode="sum",
                                                      per_sample_weights=v_f) for t in range(W.shape[1])], dim=1))
        g_weights = [torch.stack([g[:, 0] for g in g_dec])] if ctx.stacked else g_dec
        return (torch.cat(g_vals).to(vals.dtype), None, None, None, *g_weights)


def _per_source(weights: tuple[Tensor, ...], stacked: bool) -> list[Tensor]:
    """Each source layer's decoder ``[d_features, n_targets, d_model]``: a PLT's ``W_dec [L, F, D]``
    is one stacked tensor (one target each), a CLT's a tensor per source layer."""
    return [w[:, None, :] for w in weights[0]] if stacked else list(weights)


def sparse_decode(tc: Transcoder, acts: Tensor) -> Tensor:
    """Exactly ``tc.decode(acts)`` for ``acts [N, n_layers, d_features]``, in ``O(active features)``."""
    if acts.ndim != 3 or (acts != 0).float().mean() > DENSITY_LIMIT:
        return tc.decode(acts)
    N, L, n_feat = acts.shape
    # One nonzero and one gather for all layers, layer-major so that each layer's entries are one
    # run (sorted by token within it); indexing a layer out of `acts` would make autograd build a
    # full-size zero gradient per layer.
    by_layer = acts.transpose(0, 1)
    layer, tok, feat = by_layer.nonzero(as_tuple=True)
    vals = by_layer[layer, tok, feat]
    sizes = torch.bincount(layer, minlength=L).tolist()
    dtype = tc.b_dec.dtype
    pats = [_Pattern.of(t, f, N, n_feat, dtype) for t, f in zip(tok.split(sizes), feat.split(sizes), strict=True)]
    stacked = tc.cfg.kind == "plt"
    weights = (tc.W_dec,) if stacked else tuple(tc.W_dec)
    out = _Decode.apply(vals, pats, sizes, stacked, *weights)
    return (out + tc.b_dec) / tc.output_scale[:, None]
