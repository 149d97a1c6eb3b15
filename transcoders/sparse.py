"""Training kernels that touch only the active features: what makes training on a CPU affordable.

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

A TopK set's encoder needs the same care (``encode_active``): its pre-activations ``[N, L, F]`` are
found with one batched product and ``topk``, without autograd, and never turned into a dense
activation tensor; the encoder's gradient ``dW_enc[:, f] = Σ_{p: feat_p = f} dval_p · x[tok_p]`` is
the decoder gradient's ``embedding_bag`` again, with the MLP inputs as the table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

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
    """Every source layer's writes ``[n_layers, N, d_model]`` (no bias, no scale) from the active
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
        gather = _gather_dtype(decoders[0])
        # Layer-major, so that each pair adds into one contiguous [N, D] block.
        out = torch.zeros(L, N, D, dtype=decoders[0].dtype, device=decoders[0].device)
        for s, (pat, v, W) in enumerate(zip(pats, vals.to(gather).split(sizes), decoders, strict=True)):
            for t in range(W.shape[1]):
                out[s + t] += F.embedding_bag(pat.feat, W[:, t].to(gather), pat.tok_offsets, mode="sum",
                                              per_sample_weights=v)
        ctx.save_for_backward(vals, *weights)
        ctx.pats, ctx.sizes, ctx.stacked, ctx.gather = pats, sizes, stacked, gather
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        vals, *weights = ctx.saved_tensors
        decoders = _per_source(weights, ctx.stacked)
        # Layer-major, so each pair's slice of the gradient is one contiguous [N, D] table.
        go = grad_out.to(decoders[0].dtype).contiguous()  # [L, N, D]
        go_gather = go.to(ctx.gather)
        # A PLT's gradient is one [L, F, D] tensor: each layer's slice is written in place, not stacked after.
        g_stacked = torch.empty_like(weights[0]) if ctx.stacked else None
        g_vals, g_dec = [], []
        for s, (pat, v, W) in enumerate(zip(ctx.pats, vals.to(go.dtype).split(ctx.sizes), decoders, strict=True)):
            # The values' gradient stays in the decoders' dtype: sampled_addmm has no bf16 kernel. It is
            # the decode's largest part, and nothing needs it while the encoder is frozen.
            if ctx.needs_input_grad[0]:
                g_v = torch.zeros_like(v)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for t in range(W.shape[1]):
                        g_v += torch.sparse.sampled_addmm(pat.mask, go[s + t], W[:, t].t(), beta=0.0).values()
                g_vals.append(g_v)
            tok, v_f = pat.tok[pat.by_feat], v[pat.by_feat].to(ctx.gather)
            g_W = g_stacked[s][:, None, :] if g_stacked is not None else torch.empty_like(W)
            for t in range(W.shape[1]):
                g_W[:, t] = F.embedding_bag(tok, go_gather[s + t], pat.feat_offsets, mode="sum", per_sample_weights=v_f)
            g_dec.append(g_W)
        g_weights = [g_stacked] if g_stacked is not None else g_dec
        g_v_all = torch.cat(g_vals).to(vals.dtype) if g_vals else None
        return (g_v_all, None, None, None, *g_weights)


def _gather_dtype(weight: Tensor) -> torch.dtype:
    """The dtype the decode's gathers read: bf16 under a bf16 autocast, else the decoders' own.

    The ``embedding_bag`` gathers are bound by the bytes they move, so bf16 tables take less time even
    with the cast (one layer pair, 1,024 tokens, k = 64, one AVX-512 thread: forward 1.52 against 2.21
    ms, decoder gradient 2.16 against 2.92; benchmarks/sparse_decode.py). They accumulate in float32 and
    the result is added to a float32 output, as an autocast matmul's would be; the decoders and their
    gradients stay float32 for the optimiser.
    """
    device = weight.device.type
    if weight.dtype == torch.float32 and torch.is_autocast_enabled(device) and \
            torch.get_autocast_dtype(device) == torch.bfloat16:
        return torch.bfloat16
    return weight.dtype


def _per_source(weights: tuple[Tensor, ...], stacked: bool) -> list[Tensor]:
    """Each source layer's decoder ``[d_features, n_targets, d_model]``: a PLT's ``W_dec [L, F, D]``
    is one stacked tensor (one target each), a CLT's a tensor per source layer."""
    return [w[:, None, :] for w in weights[0]] if stacked else list(weights)


class ActiveEntries(NamedTuple):
    """A batch's active features, layer by layer: what the sparse kernels read instead of ``acts [N, L, F]``."""

    vals: Tensor
    """Active values ``[nnz]``, layer-major and sorted by token within a layer."""
    pats: list[_Pattern]
    """Which (token, feature) each layer's values sit at."""
    sizes: list[int]
    """Entries per layer (``vals.split(sizes)`` gives each layer's)."""

    def l0(self, n_tokens: int) -> Tensor:
        """Mean active features per token, per layer ``[n_layers]``."""
        return torch.tensor(self.sizes, dtype=torch.float32) / n_tokens

    def fired(self, d_features: int) -> Tensor:
        """Whether each feature is active anywhere in the batch, ``[n_layers, d_features]``."""
        return torch.stack([torch.bincount(p.feat, minlength=d_features) > 0 for p in self.pats])


def _entries(layer: Tensor, tok: Tensor, feat: Tensor, vals: Tensor, n_tokens: int, n_layers: int, d_features: int,
             dtype: torch.dtype) -> ActiveEntries:
    sizes = torch.bincount(layer, minlength=n_layers).tolist()
    pats = [_Pattern.of(t, f, n_tokens, d_features, dtype) for t, f in zip(tok.split(sizes), feat.split(sizes), strict=True)]
    return ActiveEntries(vals, pats, sizes)


def decode_normalised(tc: Transcoder, acts: ActiveEntries) -> Tensor:
    """What the active features and the decoder bias write, in training's normalised units (times
    ``tc.output_scale``), layer-major: ``[n_layers, N, d_model]``. ``tc.decode`` is this divided by
    the scale, token-major."""
    stacked = tc.cfg.kind == "plt"
    weights = (tc.W_dec,) if stacked else tuple(tc.W_dec)
    return _Decode.apply(acts.vals, acts.pats, acts.sizes, stacked, *weights) + tc.b_dec[:, None, :]


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
    acts = _entries(layer, tok, feat, by_layer[layer, tok, feat], N, L, n_feat, tc.b_dec.dtype)
    return (decode_normalised(tc, acts) / tc.output_scale[:, None, None]).transpose(0, 1)


def can_encode_active(tc: Transcoder) -> bool:
    """Whether ``encode_active`` applies: TopK while training, at a density the sparse kernels win."""
    return tc.cfg.activation == "topk" and tc.cfg.k / tc.cfg.d_features <= DENSITY_LIMIT


def encode_active(tc: Transcoder, xs: Tensor) -> ActiveEntries:
    """The TopK activations as active entries, never as ``[N, n_layers, d_features]``.

    ``xs [n_layers, N, d_model]``: MLP inputs times ``tc.input_scale``, layer-major
    (``normalised_inputs``). The same values as ``tc.encode(x).acts`` holds, differentiable with
    respect to the encoder (not ``xs``, which is data). The encoder's gradient reads only the active
    entries: a TopK passes nothing to the others, so the dense ``x^T @ grad_pre`` (as costly as the
    forward product, and 94% zeros at k/F = 6.25%) becomes an ``embedding_bag`` by feature with ``x``
    as the table, the kernel the decoder's gradient uses.
    """
    if not can_encode_active(tc):
        raise ValueError(f"encode_active needs a TopK transcoder with k/d_features <= {DENSITY_LIMIT}, "
                         f"not {tc.cfg.activation} with k={tc.cfg.k}, d_features={tc.cfg.d_features}.")
    L, N, _ = xs.shape
    with torch.no_grad():
        pre = torch.baddbmm(tc.b_enc[:, None, :], xs, tc.W_enc)  # [L, N, F]
        # Unsorted: nothing below needs each token's k values in order, and ordering them was a
        # third of the topk's time (121 against 86 ms for [30, 256, 1024], k = 128, one thread).
        values, idx = pre.topk(tc.cfg.k, dim=-1, sorted=False)  # [L, N, k]
        del pre
        keep = values > 0  # the ReLU after the TopK: a non-positive value is not a feature
        layer, tok, slot = keep.nonzero(as_tuple=True)
        feat = idx[layer, tok, slot]
        found = values[keep]
    acts = _entries(layer, tok, feat, found, N, L, tc.cfg.d_features, tc.b_dec.dtype)
    vals = _EncodeGrad.apply(found, xs, acts.pats, acts.sizes, tc.W_enc, tc.b_enc)
    return acts._replace(vals=vals)


def reconstruct_active(tc: Transcoder, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, ActiveEntries]:
    """A TopK set's reconstruction of the MLP outputs ``y`` from the inputs ``x`` (both ``[N, n_layers,
    d_model]``, model units) through the active-entry kernels: ``(recon, target, entries)``, the first two
    ``[n_layers, N, d_model]`` in training's normalised units (times ``tc.output_scale``), the skip
    included. Training's loss and fine-tuning's reconstruction term both read it."""
    xs = normalised_inputs(tc, x)  # [L, N, D]
    entries = encode_active(tc, xs)
    recon = decode_normalised(tc, entries)  # [L, N, D]
    if tc.W_skip is not None:
        recon = torch.baddbmm(recon, xs, tc.W_skip)
    return recon, y.transpose(0, 1) * tc.output_scale[:, None, None], entries


def normalised_inputs(tc: Transcoder, x: Tensor) -> Tensor:
    """``x [N, n_layers, d_model]`` times ``tc.input_scale``, layer-major ``[n_layers, N, d_model]``
    in the encoder's dtype: one copy, and every per-layer product after it reads one contiguous run."""
    xs = x.transpose(0, 1).to(tc.W_enc.dtype, memory_format=torch.contiguous_format, copy=True)
    return xs.mul_(tc.input_scale[:, None, None])


class _EncodeGrad(torch.autograd.Function):
    """The identity on the active pre-activations ``vals [nnz]`` (found without autograd), wired to
    the encoder: ``vals_p = xs[l, tok_p] · W_enc[l, :, feat_p] + b_enc[l, feat_p]``."""

    @staticmethod
    def forward(ctx, vals: Tensor, xs: Tensor, pats: list[_Pattern], sizes: list[int],  # type: ignore[override]
                W_enc: Tensor, b_enc: Tensor) -> Tensor:
        ctx.save_for_backward(xs)
        ctx.pats, ctx.sizes, ctx.shape, ctx.dtype = pats, sizes, W_enc.shape, W_enc.dtype
        return vals.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (xs,) = ctx.saved_tensors
        L, D, n_feat = ctx.shape
        g_w = torch.empty(L, n_feat, D, dtype=ctx.dtype, device=xs.device)
        g_b = torch.zeros(L, n_feat, dtype=ctx.dtype, device=xs.device)
        for layer, (pat, g) in enumerate(zip(ctx.pats, grad.to(ctx.dtype).split(ctx.sizes), strict=True)):
            g_w[layer] = F.embedding_bag(pat.tok[pat.by_feat], xs[layer].to(ctx.dtype), pat.feat_offsets,
                                         mode="sum", per_sample_weights=g[pat.by_feat])
            g_b[layer].index_add_(0, pat.feat, g)
        return None, None, None, None, g_w.transpose(1, 2).contiguous(), g_b
