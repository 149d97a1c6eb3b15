"""OV probes: what a head writes when it reads a given vector (Wang et al.'s copying score).

A token's representation goes through one head's OV circuit alone, then the final norm and
the unembedding, as a direct logit contribution; the probe asks whether the unembedding ranks
a target token among its top ``k``. Name movers copy names (positive); negative name movers and
copy-suppression heads suppress them (``sign=-1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from circuits.models.adapter import Model
from circuits.patching.weights import output_weight, qkv_projections


@torch.no_grad()
def head_outputs(model: Model, layer: int, resid: Tensor) -> Tensor:
    """What each head of ``layer`` writes when it reads ``resid`` ``[n, d_model]`` with all its
    attention (through its own pre-norm and its OV circuit): ``[n, n_heads, d_model]``."""
    x = model.norm("ln_attn", layer)(resid.to(model.device, model.dtype))  # [n, d]
    x = x[None, :, None, :].expand(-1, -1, model.n_heads, -1)  # [1, n, H, d]
    _, _, v_proj = qkv_projections(model, layer)
    v = v_proj(x).reshape(1, resid.shape[0], model.n_heads, -1)  # [1, n, H, dh]
    return torch.einsum("bnhe,hed->bnhd", v, output_weight(model, layer))[0]


def top_k_hits(logits: Tensor, targets: Tensor, *, k: int) -> Tensor:
    """Per head ``[n_heads]``: the fraction of rows whose ``targets`` ``[n]`` token ranks in the top
    ``k`` of ``logits`` ``[n, n_heads, d_vocab]``."""
    hit = (logits.topk(k, dim=-1).indices == targets.to(logits.device).view(-1, 1, 1)).any(-1)
    return hit.float().mean(0).cpu()


@torch.no_grad()
def ov_copying(model: Model, layer: int, resid: Tensor, targets: Tensor, *, k: int = 5, sign: float = 1.0) -> Tensor:
    """For each head of ``layer``: the fraction of rows whose ``targets`` token ranks in the top ``k``
    of the unembedding of ``final_norm(sign * OV_h(norm(resid)))``.

    ``resid``: ``[n, d_model]`` residual vectors the head would read (through its own pre-norm);
    ``targets``: ``[n]`` token ids. Returns ``[n_heads]``.
    """
    logits = model.norm("ln_final")(sign * head_outputs(model, layer, resid)) @ model.W_U.T  # [n, H, vocab]
    return top_k_hits(logits, targets, k=k)


@torch.no_grad()
def copying_scores(model: Model, tokens: Sequence[int] | Tensor, *, k: int = 5, sign: float = 1.0) -> Tensor:
    """Copying score of every head ``[n_layers, n_heads]`` on bare token embeddings: does a head's OV
    circuit, fed a token's embedding, write that token? (Wang et al. feed GPT-2's embedding after
    MLP0; in deeper models names are better read from the residual stream, see ``residual_copying``.)"""
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=model.device)
    emb = model.W_E[tokens]
    if model.spec.scaled_embedding:
        emb = emb * model.d_model ** 0.5
    return torch.stack([ov_copying(model, layer, emb, tokens, k=k, sign=sign) for layer in range(model.n_layers)])


@torch.no_grad()
def residual_at(model: Model, ids: Tensor, positions: Tensor) -> Tensor:
    """The residual stream entering every layer at the given positions of each prompt, from one
    forward pass: ``positions`` ``[n]`` → ``[n_layers, n, d_model]``; ``[n, R]`` → ``[n_layers, n, R, d_model]``."""
    recorded = model.record_batch(ids, [("resid_pre", layer) for layer in range(model.n_layers)])
    stream = torch.stack([recorded[("resid_pre", layer)] for layer in range(model.n_layers)])  # [L, n, T, d]
    rows = torch.arange(ids.shape[0]).view(-1, *[1] * (positions.ndim - 1))
    return stream[:, rows.to(stream.device), positions.to(stream.device)]


def residual_copying(model: Model, resid: Tensor, targets: Tensor, *, k: int = 5, sign: float = 1.0) -> Tensor:
    """Copying score ``[n_layers, n_heads]`` on the residual stream: feed each head of layer l
    ``resid[l]`` (``[n_layers, n, d_model]``, e.g. from ``residual_at``) and count the rows whose
    ``targets`` (``[n]``) token is in the top ``k`` of ``sign`` times its direct logits."""
    return torch.stack([ov_copying(model, layer, resid[layer], targets, k=k, sign=sign)
                        for layer in range(model.n_layers)])


def residual_copying_both(model: Model, resid: Tensor, targets: Tensor, *, k: int = 5) -> tuple[Tensor, Tensor]:
    """``residual_copying`` with ``sign`` +1 and −1 (copying, suppression), ``[n_layers, n_heads]``
    each, from one pass of the unembedding: the logits are the cost, the two rankings are cheap.

    The final norm is odd but for its bias (LayerNorm; RMSNorm has none): norm(−o) = −(norm(o) − b) + b,
    so the suppression logits are the copying ones with the bias-free part negated."""
    final, W_U = model.norm("ln_final"), model.W_U
    bias = getattr(final, "bias", None)
    even = torch.zeros(W_U.shape[0], dtype=W_U.dtype, device=W_U.device) if bias is None else bias @ W_U.T  # [vocab]
    copy, suppress = [], []
    with torch.no_grad():
        for layer in range(model.n_layers):
            normed = final(head_outputs(model, layer, resid[layer]))  # [n, H, d]
            odd = (normed if bias is None else normed - bias) @ W_U.T  # [n, H, vocab]
            copy.append(top_k_hits(odd + even, targets, k=k))
            suppress.append(top_k_hits(even - odd, targets, k=k))
    return torch.stack(copy), torch.stack(suppress)
