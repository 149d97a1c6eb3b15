"""Induction on repeated random tokens: [BOS] + seq + seq, where the second copy is predictable
only by looking back at the first.

Metric: mean log-probability of the correct next token over the second copy (every position
whose next token is determined by the first copy). Corruption (same length, aligned):

- ``"first_half"`` (default): [BOS] + other + seq. The tokens at the metric positions are the
  same as in the clean prompt, only the earlier occurrence to copy from is gone, which
  isolates the induction mechanism from bigram statistics of the current token.
- ``"second_half"``: [BOS] + seq + other.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuits.tasks.task import Task, at_least_float32


def next_token_logprob(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    """Mean over prompts and positions of log p(answers[:, i]) at metric position i.

    ``logits``: ``[n, n_positions, d_vocab]``; ``answers``: ``[n, n_positions]``.
    """
    logp = at_least_float32(logits).log_softmax(-1)
    return logp.gather(2, answers.unsqueeze(-1)).mean()


def dataset(tokenizer: PreTrainedTokenizerBase, n: int = 64, seed: int = 0, *, seq_len: int = 10,
            corruption: Literal["first_half", "second_half"] = "first_half", bos: int | None | Literal["auto"] = "auto",
            vocab: Tensor | None = None) -> Task:
    """``n`` repeated random sequences of ``seq_len`` tokens.

    Args:
        bos: the first token; ``"auto"``: the BOS token if the tokenizer adds one to text itself, else none.
        vocab: the token ids to draw from; default every id that is not a special token.
    """
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2 for the second copy to have predictable tokens")
    if bos == "auto":  # the token the tokenizer itself puts first (Gemma: <bos>; SmolLM2, GPT-2: none)
        first = tokenizer("a")["input_ids"][0]
        bos = first if first == tokenizer.bos_token_id else None
    if vocab is None:
        special = set(tokenizer.all_special_ids)
        vocab = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    if len(vocab) < 2 * seq_len:
        raise ValueError(f"a vocabulary of {len(vocab)} tokens is too small for sequences of {seq_len}: pass vocab=")
    gen = torch.Generator().manual_seed(seed)

    def draw() -> Tensor:  # [n, seq_len], no repeats within a sequence so the next token is unambiguous
        return torch.stack([vocab[torch.randperm(len(vocab), generator=gen)[:seq_len]] for _ in range(n)])

    seq, other = draw(), draw()
    head = torch.full((n, 1), bos, dtype=torch.long) if bos is not None else torch.zeros(n, 0, dtype=torch.long)
    clean = torch.cat([head, seq, seq], 1)
    corrupted = torch.cat([head, other, seq], 1) if corruption == "first_half" else torch.cat([head, seq, other], 1)
    o = head.shape[1]
    positions = torch.arange(o + seq_len, o + 2 * seq_len - 1)
    decode = lambda rows: [tokenizer.decode(r) for r in rows.tolist()]
    return Task(
        name="induction", clean=clean, corrupted=corrupted, answers=seq[:, 1:], wrong=torch.zeros(n, 0, dtype=torch.long),
        positions=positions, metric_fn=next_token_logprob, clean_prompts=decode(clean),
        corrupted_prompts=decode(corrupted),
        info={"metric": "mean log p(correct next token) over the second copy", "seq_len": seq_len,
              "corruption": corruption, "bos": bos, "seed": seed},
    )
