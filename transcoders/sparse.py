"""Decoding that touches only the active features: what makes training on a CPU affordable.

A dense decode costs ``d_features · d_model`` per token and layer (and a CLT's, summed
over every later layer, ``n_layers / 2`` times more); with k active features it is
``k · d_model``. ``F.embedding_bag`` with per-sample weights computes
``Σ_i act_i · W_dec[feature_i]`` without building the gathered rows, and its
backward gives both the decoder's and the activations' gradients.

The activations' gradient comes out only at active features. That is exact for TopK,
BatchTopK and ReLU, whose own backward passes nothing to inactive features, but not for
JumpReLU, whose threshold learns from features just *below* it: train those densely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from transcoders.model import Transcoder

DENSITY_LIMIT = 0.05  # above this fraction of active features a dense matmul is cheaper


def _bag(tok: Tensor, feat: Tensor, vals: Tensor, n_tokens: int, weight: Tensor) -> Tensor:
    """``Σ vals_i · weight[feat_i]`` into row ``tok_i`` (``tok`` sorted) of an ``[n_tokens, E]`` result."""
    counts = torch.bincount(tok, minlength=n_tokens)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(feat, weight, offsets, mode="sum", per_sample_weights=vals.to(weight.dtype))


def sparse_decode(tc: Transcoder, acts: Tensor) -> Tensor:
    """Exactly ``tc.decode(acts)`` for ``acts [N, n_layers, d_features]``, in ``O(active features)``."""
    if acts.ndim != 3 or (acts != 0).float().mean() > DENSITY_LIMIT:
        return tc.decode(acts)
    N, L, _ = acts.shape
    D = tc.cfg.d_model
    # One nonzero and one gather for all layers: indexing a layer out of `acts` first would make
    # autograd build a full-size zero gradient per layer.
    tok, layer, feat = acts.nonzero(as_tuple=True)  # ordered by token, so each layer's tokens are sorted
    vals = acts[tok, layer, feat]
    per_layer = [(tok[m], feat[m], vals[m]) for m in (layer == s for s in range(L))]
    if tc.cfg.kind == "plt":
        out = torch.stack([_bag(*per_layer[s], N, tc.W_dec[s]) for s in range(L)], dim=1)
    else:
        out = acts.new_zeros(N, L, D, dtype=tc.W_dec[0].dtype)
        for s in range(L):
            # In place on slices: autograd's backward is then a slice of the gradient, not a full-size copy.
            out[:, s:] += _bag(*per_layer[s], N, tc.W_dec[s].reshape(tc.cfg.d_features, -1)).reshape(N, L - s, D)
    return (out + tc.b_dec) / tc.output_scale[:, None]
