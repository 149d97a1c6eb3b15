"""Attention-pattern probes: where each head attends, as ``[n_layers, n_heads]`` scores.

Patterns are read with eager attention on a batch; a score is the mean attention from given
query positions to given key positions. On random repeated tokens (``repeated_token_scores``):

- previous-token: from every position to the one before it;
- duplicate-token: from a token of the second copy to the same token in the first copy;
- induction: from a token of the second copy to the token *after* its first occurrence.

Attention sinks: many heads (SmolLM2's most of all) park the attention they do not use on
position 0 (Xiao et al., 2023, "Efficient streaming language models with attention sinks").
A head that puts 70% on the sink and 25% on the IO name reads almost only the IO name, and its
output is that name's value; ``without_sink`` renormalises each query's attention over the other
keys so a probe sees the share of what the head actually reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.models.adapter import Model


@torch.no_grad()
def attention_patterns(model: Model, ids: Tensor) -> Tensor:
    """Every head's attention ``[n_layers, batch, n_heads, n_pos(query), n_pos(key)]`` on ``ids`` ``[batch, n_pos]``.

    Needs eager attention (``load_model`` and ``tiny_model`` select it).
    """
    recorded = model.record_batch(ids, [("attn_pattern", layer) for layer in range(model.n_layers)])
    return torch.stack([recorded[("attn_pattern", layer)] for layer in range(model.n_layers)]).float()


def without_sink(patterns: Tensor, *, floor: float = 0.05) -> Tensor:
    """``patterns`` ``[..., n_pos(query), n_pos(key)]`` with key 0 dropped and each query's attention
    renormalised over the rest. A query that gives the sink more than ``1 - floor`` reads next to
    nothing, so its row is scaled by ``1 / floor`` at most rather than blown up from noise."""
    rest = patterns.clone()
    rest[..., 0] = 0
    return rest / rest.sum(-1, keepdim=True).clamp_min(floor)


def attention_score(patterns: Tensor, query: Tensor, key: Tensor) -> Tensor:
    """Mean attention from ``query`` to ``key`` positions: ``patterns`` ``[L, B, H, T, T]``;
    ``query``, ``key``: ``[B, Q]`` (or ``[B]``) → ``[L, H]``."""
    query = query.reshape(patterns.shape[1], -1)
    key = key.reshape(patterns.shape[1], -1)
    b = torch.arange(patterns.shape[1])[:, None].expand_as(query)
    picked = patterns.permute(1, 3, 4, 0, 2)[b, query, key]  # [B, Q, L, H]
    return picked.mean(dim=(0, 1))


def repeated_tokens(model: Model, *, n: int = 32, seq_len: int = 20, seed: int = 0) -> Tensor:
    """``[n, 1 + 2 seq_len]`` ids: a first token, then a random sequence twice."""
    gen = torch.Generator().manual_seed(seed)
    special = set(model.tokenizer.all_special_ids)
    vocab = torch.tensor([i for i in range(min(len(model.tokenizer), model.dims.d_vocab)) if i not in special])
    seq = vocab[torch.randint(len(vocab), (n, seq_len), generator=gen)]
    first = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else int(vocab[0])
    return torch.cat([torch.full((n, 1), first), seq, seq], 1)


def repeated_token_scores(model: Model, *, n: int = 32, seq_len: int = 20, seed: int = 0,
                          exclude_sink: bool = False) -> dict[str, Tensor]:
    """Previous-token, duplicate-token, induction and current-token (a position to itself) scores
    ``[n_layers, n_heads]`` on random repeats; ``exclude_sink``: shares of the non-sink attention."""
    ids = repeated_tokens(model, n=n, seq_len=seq_len, seed=seed)
    pat = attention_patterns(model, ids)
    if exclude_sink:
        pat = without_sink(pat)
    second = torch.arange(1 + seq_len, 1 + 2 * seq_len).expand(n, -1)  # positions of the second copy
    every = torch.arange(1, 1 + 2 * seq_len).expand(n, -1)
    return {
        "previous_token": attention_score(pat, every, every - 1),
        "duplicate_token": attention_score(pat, second, second - seq_len),
        "induction": attention_score(pat, second, second - seq_len + 1),
        "current_token": attention_score(pat, second, second),
    }


def top_heads(scores: Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The ``k`` largest entries of a ``[n_layers, n_heads]`` score as (layer, head, score)."""
    flat = scores.flatten()
    idx = flat.topk(min(k, flat.numel())).indices
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1], float(flat[i])) for i in idx]
