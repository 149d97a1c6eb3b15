"""Unembed only the vocabulary columns a task's metric reads.

A patched pass that resumes near the top of the model is cheap except for the unembedding: for
SmolLM2 ``[b, d_model] @ [d_model, 49,152]`` reads a 113 MB matrix, 33 ms for 8 prompts on one AVX2
core, three times the cost of the last layer. A metric such as the logit difference reads two
columns of it. For such metrics (marked with ``circuits.tasks.task.reads_answer_logits``) a pass
computes the logits of the answer and wrong tokens alone, and the metric reads them through
answers and wrong ids renumbered into those columns: the same numbers, not an approximation
(the unembedding is a per-column product, and what follows it, Gemma's soft-capping, is per
element).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from circuits.hooks import replace_forward, restore
from circuits.models.adapter import Model
from circuits.tasks.task import Task, reads_only_answer_logits


@dataclass(frozen=True)
class AnswerColumns:
    """The vocabulary columns a metric reads, and the task's answer ids renumbered into them."""

    vocab: Tensor | None
    """``[c]`` token ids, sorted: the columns a pass unembeds; None for every column."""
    answers: Tensor
    """``[n, a]`` positions of ``task.answers`` in the logits a pass returns (−1 pads stay −1)."""
    wrong: Tensor
    """``[n, w]`` likewise for ``task.wrong``."""


def answer_columns(task: Task, *, every: bool = False) -> AnswerColumns:
    """The columns ``task``'s metric reads, and its answer ids into them; every column (``vocab`` None, the
    task's own ids) when the metric reads the whole vocabulary (a softmax), or with ``every``."""
    if every or not reads_only_answer_logits(task.metric_fn):
        return AnswerColumns(None, task.answers, task.wrong)
    ids = torch.cat([task.answers.flatten(), task.wrong.flatten()])
    vocab = torch.unique(ids[ids >= 0])

    def renumber(t: Tensor) -> Tensor:
        return torch.where(t >= 0, torch.searchsorted(vocab, t.clamp_min(0)), t)

    return AnswerColumns(vocab, renumber(task.answers), renumber(task.wrong))


@contextmanager
def unembed_only(model: Model, vocab: Tensor | None) -> Iterator[None]:
    """While inside, the model's unembedding returns the logits of ``vocab`` ``[c]`` only (last dim c);
    with None it is left alone."""
    if vocab is None:
        yield
        return
    head = model.module(model.spec.unembed)
    weight = head.weight[vocab.to(head.weight.device)]
    bias = getattr(head, "bias", None)
    bias = None if bias is None else bias[vocab.to(bias.device)]
    replaced = [replace_forward(head, lambda x: F.linear(x, weight, bias))]
    try:
        yield
    finally:
        restore([], replaced)
