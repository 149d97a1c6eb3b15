"""A task for circuit discovery: clean and corrupted prompts of equal length, and a metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

MetricFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(logits [n, n_positions, d_vocab], answers [n, a], wrong [n, w]) → scalar`` (differentiable). A metric
that reads only its answers' and wrong tokens' logits (no softmax) may be marked ``@reads_answer_logits``:
patching then unembeds those columns alone, and passes it logits ``[n, n_positions, c]`` with answers and
wrong renumbered into them."""


@dataclass(frozen=True)
class Task:
    """Paired prompts and a metric. Every prompt has the same token length, so a batch needs no
    padding and a corrupted prompt lines up token by token with its clean partner.

    The metric reads next-token logits at ``positions`` only: ``score`` takes those
    (``[n, n_positions, d_vocab]``), so patching computes the unembedding nowhere else;
    ``metric`` takes full logits ``[n, n_pos, d_vocab]``. Both average over prompts and are
    differentiable (EAP takes their gradient).
    """

    name: str
    clean: Tensor
    """``[n, n_pos]`` token ids."""
    corrupted: Tensor
    """``[n, n_pos]`` token ids of the paired corrupted prompts (resample ablation reads these)."""
    answers: Tensor
    """``[n, n_answers]`` correct next tokens (−1 pads rows of unequal length)."""
    wrong: Tensor
    """``[n, n_wrong]`` tokens the metric counts against (−1 pads; may have zero columns)."""
    positions: Tensor
    """``[n_positions]`` positions whose next-token prediction the metric reads (shared by all prompts)."""
    metric_fn: MetricFn
    clean_prompts: list[str] = field(default_factory=list)
    corrupted_prompts: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    """Plain facts: templates, word lists, token positions of names, what the metric means.
    Tensors and lists with one item per prompt are per-prompt facts and follow ``subset``; word
    lists are tuples."""
    groups: Tensor | None = None
    """``[n]`` ints from 0: prompts that share a template (token layout), or None for one layout.
    Mean ablation averages within a group (``circuits.ablation``); a prompt and its
    corrupted partner share a group."""

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape or self.clean.ndim != 2:
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} ids must "
                             "both be [n, n_pos]: build prompts of equal token length. Fix: pad or reword the "
                             "corrupted prompts so each has its clean partner's token count.")
        if len(self.positions) == 0:
            raise ValueError("a task needs at least one position for its metric")
        if self.answers.shape[0] != self.n or self.wrong.shape[0] != self.n:
            raise ValueError("answers and wrong need one row per prompt")
        if self.groups is not None and (self.groups.shape != (self.n,) or self.groups.dtype != torch.long
                                        or (self.n > 0 and int(self.groups.min()) < 0)):
            raise ValueError(f"groups must be [n] = [{self.n}] non-negative int64 ids, one per prompt; got "
                             f"{tuple(self.groups.shape)} {self.groups.dtype}")

    def check_fits(self, model: Any) -> None:
        """Refuse token ids outside ``model``'s vocabulary and prompts longer than its context (before
        they surface as an index error deep in a forward pass)."""
        d_vocab, n_ctx = model.dims.d_vocab, model.dims.n_ctx
        if self.n_pos > n_ctx:
            raise ValueError(f"task {self.name!r} has prompts of {self.n_pos} tokens but {model.name} has a context "
                             f"of {n_ctx}. Fix: build the task with shorter prompts.")
        for what, ids, pad in (("clean", self.clean, False), ("corrupted", self.corrupted, False),
                               ("answers", self.answers, True), ("wrong", self.wrong, True)):
            bad = (ids >= d_vocab) | (ids < (-1 if pad else 0))
            if bad.any():
                raise ValueError(f"task {self.name!r}: {what} holds token id {int(ids[bad][0])}, outside {model.name}'s "
                                 f"vocabulary 0..{d_vocab - 1}{' (-1 pads)' if pad else ''}. Fix: build the task with "
                                 "this model's tokenizer (e.g. ioi.dataset(model.tokenizer, ...)).")

    @property
    def n(self) -> int:
        return self.clean.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean.shape[1]

    def score(self, logits: Tensor) -> Tensor:
        """Logits at ``positions`` ``[n, n_positions, d_vocab]`` → the scalar metric."""
        return self.metric_fn(logits, self.answers.to(logits.device), self.wrong.to(logits.device))

    def metric(self, logits: Tensor) -> Tensor:
        """Full logits ``[n, n_pos, d_vocab]`` → the scalar metric."""
        return self.score(logits[:, self.positions.to(logits.device)])

    def subset(self, idx: Tensor | slice | list[int]) -> Task:
        """The task restricted to some prompts (per-prompt ``info`` entries and groups too)."""
        idx = idx if isinstance(idx, Tensor) else torch.arange(self.n)[idx]
        pick = idx.tolist()

        def per_prompt(v: Any) -> Any:
            if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == self.n:
                return v[idx]
            if isinstance(v, list) and len(v) == self.n:
                return [v[i] for i in pick]
            return v

        return Task(self.name, self.clean[idx], self.corrupted[idx], self.answers[idx], self.wrong[idx],
                    self.positions, self.metric_fn, [self.clean_prompts[i] for i in pick],
                    [self.corrupted_prompts[i] for i in pick], {k: per_prompt(v) for k, v in self.info.items()},
                    None if self.groups is None else self.groups[idx])


def reads_answer_logits(fn: MetricFn) -> MetricFn:
    """Mark a metric that reads only the logits of its ``answers`` and ``wrong`` tokens (no softmax over
    the vocabulary): patching then unembeds those columns alone (``circuits.patching.columns``)."""
    fn.reads_only_answer_logits = True  # type: ignore[attr-defined]
    return fn


def reads_only_answer_logits(fn: MetricFn) -> bool:
    return bool(getattr(fn, "reads_only_answer_logits", False))


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or wider if it already is (metrics of float64 test models stay exact)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@reads_answer_logits
def logit_diff(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    """Mean over prompts of ``logit(answers[:, 0]) − logit(wrong[:, 0])`` at the last metric position.

    ``logits``: ``[n, n_positions, d_vocab]``; ``answers``, ``wrong``: ``[n, ≥1]``.
    """
    last = at_least_float32(logits[:, -1])
    rows = torch.arange(last.shape[0], device=last.device)
    return (last[rows, answers[:, 0]] - last[rows, wrong[:, 0]]).mean()
