"""``EdgePatcher``: a model, a task and an ablation, ready to score edge sets.

It records what every source outputs on the clean prompts and what it becomes when ablated
(zero, mean over a reference set, or resampled from the paired corrupted prompt), the metric
of the full model m(M) and of the empty circuit m(∅), and then evaluates any number of edge
sets, several per forward pass, in prompt chunks that fit a memory budget.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm import tqdm

from circuits.hooks import frozen_parameters
from circuits.models.adapter import Model
from circuits.patching.edges import (
    GradRequest,
    HeadWeights,
    Prefix,
    patched_forward,
)
from circuits.patching.columns import answer_columns
from circuits.patching.graph import HeadGraph
from circuits.ablation import group_counts, group_sums, rows_of
from circuits.patching.metrics import PerPromptMean, answer_prob, faithfulness, kl_to_clean
from circuits.tasks.task import Task

Ablation = Literal["zero", "mean", "resample"]
MetricName = Literal["task", "kl", "prob"]


@dataclass
class _Chunk:
    ids: Tensor          # [b, T]
    rows: slice          # which prompts of the task
    ablated: Tensor      # [n_src, b or 1, T, d]
    clean_logits: Tensor  # [b, P, d_vocab], or [b, P, c] for the patcher's ``vocab`` columns


class EdgePatcher(PerPromptMean):
    """Evaluate edge sets of ``model`` on ``task`` at head granularity.

    Args:
        ablation: what a removed edge carries instead of its source's output: ``"resample"`` (the
            paired corrupted prompt's output), ``"mean"`` (the per-position mean over ``reference``,
            default the task's corrupted prompts, i.e. Wang et al.'s ABC distribution, within each
            template when the task has ``groups``), ``"zero"``.
        metric: ``"task"`` (the task's metric), ``"kl"`` (KL divergence from the clean output,
            0 for the full model) or ``"prob"`` (probability of the first answer token).
        split_qkv: separate q, k and v inputs per head (ACDC, MIB) or one input per head.
        reference: ``[n_ref, T]`` prompts for mean ablation.
        batch_size: prompts per forward pass.
        memory_gb: bound on the patching buffers of one pass; sets how many edge sets share a pass.
    """

    def __init__(self, model: Model, task: Task, *, ablation: Ablation = "resample", metric: MetricName = "task",
                 split_qkv: bool = True, reference: Tensor | None = None, batch_size: int = 64,
                 memory_gb: float = 2.0) -> None:
        if ablation not in ("zero", "mean", "resample"):
            raise ValueError(f"unknown ablation {ablation!r}: use 'zero', 'mean' or 'resample'")
        if metric not in ("task", "kl", "prob"):
            raise ValueError(f"unknown metric {metric!r}: use 'task', 'kl' or 'prob'")
        task.check_fits(model)
        self.model, self.task, self.ablation, self.metric_name = model, task, ablation, metric
        # A metric that reads only the answers' logits: passes unembed those columns alone.
        self.columns = answer_columns(task, every=metric != "task")
        self.graph = HeadGraph.for_model(model, split_qkv)
        self.weights = HeadWeights.of(model)
        self.positions = task.positions
        self.batch_size = max(1, min(batch_size, task.n))
        per_set = self.graph.n_src * task.n_pos * model.d_model * torch.finfo(model.dtype).bits // 8
        self.max_rows = max(1, int(memory_gb * 2**30 // per_set))  # prompt-variants per pass
        self.batch_size = min(self.batch_size, self.max_rows)
        # A reference set of the caller's has no template labels: one mean over all of it.
        self.groups = task.groups if reference is None else None
        mean = self._mean_outputs(reference if reference is not None else task.corrupted) if ablation == "mean" else None
        self.chunks: list[_Chunk] = []
        for start in range(0, task.n, self.batch_size):
            rows = slice(start, min(start + self.batch_size, task.n))
            ids = task.clean[rows]
            clean = patched_forward(model, self.graph, ids, _zeros(self.graph, model), None, self.positions,
                                    weights=self.weights, vocab=self.vocab).logits[0]
            if ablation == "resample":
                abl = self.outputs(task.corrupted[rows])
            elif ablation == "mean":
                abl = rows_of(mean, self.groups, rows, dim=1)  # type: ignore[arg-type]
            else:
                abl = _zeros(self.graph, model)
            self.chunks.append(_Chunk(ids, rows, abl, clean))
        self.m_full = sum(float(self._metric(c.clean_logits, c)) * (c.rows.stop - c.rows.start) / task.n
                          for c in self.chunks)
        self.m_empty = float(self.evaluate(self.graph.valid)[0])

    # --- recording ------------------------------------------------------------------------

    def outputs(self, ids: Tensor) -> Tensor:
        """Every source's output on ``ids`` in the unpatched model: ``[n_src, b, T, d_model]``."""
        return patched_forward(self.model, self.graph, ids, None, None, self.positions[-1:], record=True,
                               weights=self.weights, vocab=self.vocab).outputs

    def _mean_outputs(self, ids: Tensor) -> Tensor:
        """``[n_src, n_groups (1 without groups), T, d_model]``: the sources' mean outputs on ``ids``."""
        if ids.shape[1] != self.task.n_pos:
            raise ValueError(f"reference prompts are {ids.shape[1]} tokens long, the task's {self.task.n_pos}: mean "
                             "ablation is per position, so pass a reference set of the task's length")
        groups = self.groups
        counts = group_counts(groups, ids.shape[0])
        total = None
        for start in range(0, ids.shape[0], self.batch_size):
            part = None if groups is None else groups[start:start + self.batch_size]
            out = group_sums(self.outputs(ids[start:start + self.batch_size]), part, len(counts), dim=1)
            total = out if total is None else total + out
        return total / counts.to(total).view(1, -1, 1, 1)

    # --- metrics --------------------------------------------------------------------------

    @property
    def vocab(self) -> Tensor | None:
        """``[c]`` the vocabulary columns every pass unembeds (None: all of them)."""
        return self.columns.vocab

    def _metric(self, logits: Tensor, chunk: _Chunk) -> Tensor:
        """``logits``: ``[b, P, d_vocab]`` for the prompts of ``chunk`` → scalar."""
        task = self.task
        if self.metric_name == "kl":
            return kl_to_clean(logits, chunk.clean_logits)
        c = self.columns
        answers, wrong = c.answers[chunk.rows].to(logits.device), c.wrong[chunk.rows].to(logits.device)
        if self.metric_name == "prob":
            return answer_prob(logits, answers)
        return task.metric_fn(logits, answers, wrong)

    # --- evaluation -----------------------------------------------------------------------

    def evaluate(self, removed: Tensor | None, *, start_layer: int = 0, prefixes: list[Prefix] | None = None,
                 progress: bool = False) -> Tensor:
        """The metric under each edge set: ``removed`` ``[K, n_src, n_dst]`` (or one ``[n_src, n_dst]``,
        or None for the full model) → ``[K]`` float64, each a mean over the task's prompts.

        ``start_layer``/``prefixes``: resume from ``prefix()`` runs (see ``patched_forward``).
        """
        if removed is None:
            removed = self.graph.empty()
        if removed.ndim == 2:
            removed = removed.unsqueeze(0)
        removed = removed & self.graph.valid
        K = removed.shape[0]
        per_pass = max(1, self.max_rows // self.batch_size)
        out = torch.zeros(K, dtype=torch.float64)
        steps = [(i, k) for i in range(len(self.chunks)) for k in range(0, K, per_pass)]
        for i, k in tqdm(steps, desc="patching", file=sys.stderr, disable=not progress):
            chunk = self.chunks[i]
            logits = patched_forward(self.model, self.graph, chunk.ids, chunk.ablated, removed[k:k + per_pass],
                                     self.positions, start_layer=start_layer,
                                     prefix=None if prefixes is None else prefixes[i], weights=self.weights,
                                     vocab=self.vocab).logits
            weight = (chunk.rows.stop - chunk.rows.start) / self.task.n
            for j in range(logits.shape[0]):
                out[k + j] += weight * float(self._metric(logits[j], chunk))
        return out

    def prompt_metrics(self, logits: Tensor, chunk: _Chunk) -> Tensor:
        """``logits`` ``[b, P, d_vocab]`` for the prompts of ``chunk`` → ``[b]`` float64: the metric of each
        prompt alone (the chunk's metric is their mean when ``per_prompt_mean``)."""
        one = [_Chunk(chunk.ids[i:i + 1], slice(r, r + 1), chunk.ablated, chunk.clean_logits[i:i + 1])
               for i, r in enumerate(range(chunk.rows.start, chunk.rows.stop))]
        return torch.stack([self._metric(logits[i:i + 1], c).double() for i, c in enumerate(one)]).cpu()

    keeps_variants = False
    """``chunk_metrics(keep_base=True)`` records only a single edge set run from layer 0."""

    def chunk_metrics(self, i: int, removed: Tensor, *, base: Prefix | None = None, start_layer: int = 0,
                      keep_base: bool = False) -> tuple[Tensor, list[Prefix] | None]:
        """Per-prompt metrics ``[K, b]`` of prompt chunk ``i`` under each edge set ``removed`` ``[K, n_src,
        n_dst]`` (or one), resumed at ``start_layer`` from ``base`` (a ``keep_base`` run of this chunk
        whose edge set agrees below that layer); with ``keep_base`` (K = 1, from layer 0) the run is also
        recorded (a list of that one)."""
        c = self.chunks[i]
        removed = (removed.unsqueeze(0) if removed.ndim == 2 else removed) & self.graph.valid
        per_pass = max(1, self.max_rows // (c.rows.stop - c.rows.start))
        values, prefix = [], None
        for k in range(0, removed.shape[0], per_pass):
            out = patched_forward(self.model, self.graph, c.ids, c.ablated, removed[k:k + per_pass], self.positions,
                                  start_layer=start_layer if base is not None else 0, prefix=base,
                                  keep_prefix=keep_base, weights=self.weights, vocab=self.vocab)
            values += [self.prompt_metrics(logits, c) for logits in out.logits]
            prefix = out.prefix
        return torch.stack(values), None if prefix is None else [prefix]

    def prefix(self, removed: Tensor) -> list[Prefix]:
        """Record a base run (one edge set) per prompt chunk, to resume later passes from."""
        return self.base_run(removed)[1]

    def base_run(self, removed: Tensor) -> tuple[float, list[Prefix]]:
        """The metric under one edge set, and that run recorded per prompt chunk (see ``prefix``)."""
        removed = removed & self.graph.valid
        value, prefixes = 0.0, []
        for c in self.chunks:
            out = patched_forward(self.model, self.graph, c.ids, c.ablated, removed, self.positions,
                                  keep_prefix=True, weights=self.weights, vocab=self.vocab)
            value += float(self._metric(out.logits[0], c)) * (c.rows.stop - c.rows.start) / self.task.n
            prefixes.append(out.prefix)  # type: ignore[arg-type]
        return value, prefixes

    def faithfulness(self, kept: Tensor) -> float:
        """f of the circuit whose edges are ``kept`` (``[n_src, n_dst]`` bool); every other edge is removed."""
        m = float(self.evaluate(self.graph.valid & ~kept)[0])
        return float(faithfulness(m, self.m_full, self.m_empty))

    # --- gradients ------------------------------------------------------------------------

    def edge_scores(self, method: Literal["eap", "eap-ig"] = "eap", *, steps: int = 5, batch_size: int = 16,
                    per_prompt: bool = False, progress: bool = False) -> Tensor:
        """Attribution scores ``[n_src, n_dst]`` (0 off the graph) estimating m(remove e) − m(M).

        EAP: ``(ablated_u − clean_u) · ∂m/∂x_v`` at the clean input, summed over positions and
        averaged over prompts (the metric is a mean, so its gradient already divides by n).
        EAP-IG: the same with ∂m/∂x_v averaged over ``steps`` inputs interpolated between the
        ablated and the clean embeddings (midpoint rule, α = (i + ½) / steps).
        ``per_prompt``: ``[n_prompts, n_src, n_dst]``, each prompt's own estimate of what removing the
        edge does to its metric (their mean is the scores; ACDC's control variates).
        """
        if method not in ("eap", "eap-ig"):
            raise ValueError(f"unknown method {method!r}: use 'eap' or 'eap-ig'")
        g, model = self.graph, self.model
        scores = torch.zeros(*((self.task.n,) if per_prompt else ()), g.n_src, g.n_dst, dtype=torch.float32)
        alphas = [1.0] if method == "eap" else [(i + 0.5) / steps for i in range(steps)]
        jobs = []
        for ci, chunk in enumerate(self.chunks):
            for s in range(0, chunk.ids.shape[0], batch_size):
                jobs.append((ci, s))
        with frozen_parameters(model):
            for ci, s in tqdm(jobs, desc=method, file=sys.stderr, disable=not progress):
                chunk = self.chunks[ci]
                ids = chunk.ids[s:s + batch_size]
                b = ids.shape[0]
                abl = chunk.ablated if chunk.ablated.shape[1] == 1 else chunk.ablated[:, s:s + batch_size]
                clean = self.outputs(ids)
                diff = (abl - clean).detach()
                sub_rows = slice(chunk.rows.start + s, chunk.rows.start + s + b)
                req = GradRequest(diff, scores[sub_rows], per_prompt=True) if per_prompt else GradRequest(diff, scores)
                sub = _Chunk(ids, sub_rows, abl, chunk.clean_logits[s:s + batch_size])
                for alpha in alphas:
                    override = None if alpha == 1.0 else (abl[0] + alpha * (clean[0] - abl[0])).expand(b, -1, -1)
                    logits = patched_forward(model, g, ids, abl, None, self.positions, grad=req,
                                             input_override=override, weights=self.weights, vocab=self.vocab).logits[0]
                    # The metric is a mean over the chunk; weight it to a mean over the task.
                    (self._metric(logits, sub) * (b / self.task.n) / len(alphas)).backward()
        # Each prompt's metric entered as 1/n of the task's: n × its share is its own.
        return scores * self.task.n * g.valid if per_prompt else scores * g.valid


def _zeros(graph: HeadGraph, model: Model) -> Tensor:
    return torch.zeros(graph.n_src, 1, 1, model.d_model, dtype=model.dtype, device=model.device)
