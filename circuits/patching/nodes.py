"""Node patching in the original model: ablate whole attention heads and MLPs.

A node is removed when its output is replaced, everywhere downstream, by its ablated value
(zero, the per-position mean over a reference set, or the paired corrupted prompt's own
output). That is the head-level circuit of Wang et al. (2022): the circuit's heads run, every
other head is mean-ablated over the ABC distribution. Removing a node is the same as
removing all of its outgoing edges in ``HeadGraph`` terms (``EdgePatcher``), but it needs no
per-head q/k/v inputs, so a pass costs what a plain forward costs; ``NodePatcher`` is the
engine behind node-level ACDC.

Where the replacement happens: a head's output is its slice of the input to the attention
output projection (``attn_z``), so the projection, and any post-attention norm, run on the
patched value; an MLP's is its write to the residual stream (``mlp_resid``).

Resuming: a pass that changes nothing below layer l can replay the layers below l from a
recorded base run (each layer module returns its recorded output), as ``EdgePatcher`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from circuits.hooks import (
    detached,
    first_tensor,
    frozen_parameters,
    on_input,
    on_output,
    repeat_output,
    replace_forward,
    restore,
    with_first,
)
from circuits.models.adapter import Model
from circuits.patching.columns import answer_columns, unembed_only
from circuits.patching.graph import HeadGraph
from circuits.ablation import group_counts, group_sums, rows_of
from circuits.patching.metrics import PerPromptMean, faithfulness, kl_to_clean
from circuits.tasks.task import Task
from transcoders.precision import Precision, autocast, use_bf16

NodeAblation = Literal["zero", "mean", "resample"]


@dataclass
class NodeValues:
    """What every node outputs on a batch of prompts.

    Shapes: B prompts (or 1 for a mean), T positions, H query heads of width d_head, D = d_model.
    """

    z: list[Tensor]
    """Per layer ``[B, T, H, d_head]``: each head's output before the output projection."""
    mlp: list[Tensor]
    """Per layer ``[B, T, D]``: the MLP's write to the residual stream."""
    embed: list[Tensor] = field(default_factory=list)
    """``[B, T, D]`` (one entry): the residual stream entering layer 0, the ``input`` node."""

    def _map(self, fn: Any) -> NodeValues:
        return NodeValues(*([fn(t) for t in ts] for ts in (self.z, self.mlp, self.embed)))

    def mean(self, groups: Tensor | None = None) -> NodeValues:
        """The per-position mean over prompts: ``[1, ...]``, or ``[n_groups, ...]`` within each
        group of ``groups`` ``[B]`` (see ``circuits.ablation``)."""
        counts = group_counts(groups, self.z[0].shape[0])
        return self._map(lambda t: group_sums(t, groups, len(counts)) / counts.to(t).view(-1, *[1] * (t.ndim - 1)))

    def rows(self, groups: Tensor | None, rows: slice) -> NodeValues:
        """Of group means (``mean(groups)``), the one each prompt of ``rows`` is ablated to."""
        return self._map(lambda t: rows_of(t, groups, rows))

    def zeros(self) -> NodeValues:
        return self._map(lambda t: torch.zeros_like(t[:1]))


@dataclass
class NodeBase:
    """A recorded pass to resume from: each decoder layer's output (per prompt chunk)."""

    layer_outputs: list[Any]
    metric: float


class _NodePass:
    """Hooks for one forward pass of B prompts under K node sets (variant-major along the batch)."""

    def __init__(self, model: Model, graph: HeadGraph, removed: Tensor | None, ablated: NodeValues | None,
                 record: bool, base: list[Any] | None, start: int, keep: bool) -> None:
        self.model, self.g, self.removed, self.ablated = model, graph, removed, ablated
        self.K = 1 if removed is None else removed.shape[0]
        self.record = NodeValues([], []) if record else None
        self.base, self.start, self.keep = base, start, keep
        self.layer_outputs: list[Any] = []
        self.grad_probes: NodeValues | None = None  # zero tensors added to every node's output, for ∂m/∂output

    def _probe(self, x: Tensor, store: list[Tensor]) -> Tensor:
        if self.grad_probes is None:
            return x
        delta = torch.zeros_like(x, requires_grad=True)
        store.append(delta)
        return x + delta

    def embed_pre(self, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x, where = first_tensor(args, kwargs)
        if self.record is not None:
            self.record.embed.append(x.detach().clone())
        if self.grad_probes is not None:
            return with_first(args, kwargs, where, self._probe(x, self.grad_probes.embed))
        if self.removed is None or not self.removed[:, 0].any():
            return None
        KB = x.shape[0]
        xk = x.reshape(self.K, KB // self.K, *x.shape[1:])
        abl = self.ablated.embed[0].to(xk.dtype).unsqueeze(0)  # type: ignore[union-attr]
        new = torch.where(self.removed[:, 0, None, None, None], abl, xk).reshape(x.shape)
        return with_first(args, kwargs, where, new)

    def z_pre(self, layer: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        z, where = first_tensor(args, kwargs)
        H = self.g.n_heads
        zh = z.reshape(*z.shape[:-1], H, -1)  # [K*B, T, H, d_head]
        if self.record is not None:
            self.record.z.append(zh.detach().clone())
        if self.grad_probes is not None:
            return with_first(args, kwargs, where, self._probe(zh, self.grad_probes.z).reshape(z.shape))
        if self.removed is None:
            return None
        mask = self.removed[:, [self.g.head_src(layer, h) for h in range(H)]]  # [K, H]
        if not mask.any():
            return None
        KB, T = zh.shape[:2]
        zk = zh.reshape(self.K, KB // self.K, T, H, -1)
        abl = self.ablated.z[layer].to(zk.dtype).unsqueeze(0)  # type: ignore[union-attr]  # [1, B|1, T, H, dh]
        new = torch.where(mask[:, None, None, :, None], abl, zk)
        return with_first(args, kwargs, where, new.reshape(z.shape))

    def mlp_post(self, layer: int, out: Any) -> Any:
        y = out[0] if isinstance(out, tuple) else out
        if self.record is not None:
            self.record.mlp.append(y.detach().clone())
        if self.grad_probes is not None:
            new = self._probe(y, self.grad_probes.mlp)
            return (new, *out[1:]) if isinstance(out, tuple) else new
        if self.removed is None:
            return None
        mask = self.removed[:, self.g.mlp_src(layer)]  # [K]
        if not mask.any():
            return None
        KB = y.shape[0]
        yk = y.reshape(self.K, KB // self.K, *y.shape[1:])
        abl = self.ablated.mlp[layer].to(yk.dtype).unsqueeze(0)  # type: ignore[union-attr]
        new = torch.where(mask[:, None, None, None], abl, yk).reshape(y.shape)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    @contextmanager
    def installed(self) -> Iterator[None]:
        model = self.model
        handles: list[RemovableHandle] = []
        replaced: list[tuple[nn.Module, Any]] = []
        try:
            for l in range(self.g.n_layers):
                layer = model.module("resid_pre", l)
                if l < self.start:
                    cached = repeat_output(self.base[l], self.K)  # type: ignore[index]
                    replaced.append(replace_forward(layer, lambda *a, _c=cached, **kw: _c))
                    continue
                if l == 0:
                    handles.append(on_input(layer, lambda m, a, kw: self.embed_pre(a, kw)))
                if self.keep:
                    handles.append(on_output(layer,
                        lambda m, a, out: self.layer_outputs.append(detached(out))))
                handles.append(on_input(model.module("attn_z", l),
                    lambda m, a, kw, l=l: self.z_pre(l, a, kw)))
                handles.append(on_output(model.module("mlp_resid", l),
                    lambda m, a, out, l=l: self.mlp_post(l, out)))
            yield
        finally:
            restore(handles, replaced)


def node_forward(model: Model, graph: HeadGraph, ids: Tensor, positions: Tensor, *, removed: Tensor | None = None,
                 ablated: NodeValues | None = None, record: bool = False, base: list[Any] | None = None,
                 start_layer: int = 0, keep_base: bool = False,
                 vocab: Tensor | None = None) -> tuple[Tensor, NodeValues | None, list[Any]]:
    """One pass of ``ids`` ``[B, T]`` under K node sets ``removed`` ``[K, n_src]`` (True = ablated).

    Returns next-token logits at ``positions`` ``[K, B, P, d_vocab]`` (``[K, B, P, c]``: only the
    columns ``vocab`` ``[c]`` when given), every node's output when ``record`` (the unpatched model
    only), and the output of each layer from ``start_layer`` on when ``keep_base`` (``[K * B, ...]``,
    the sets stacked variant-major: ``variant_output`` takes one apart).
    """
    if removed is not None and removed.ndim == 1:
        removed = removed.unsqueeze(0)
    if start_layer > 0 and base is None:
        raise ValueError("start_layer > 0 needs a recorded base run: pass base=")
    state = _NodePass(model, graph, removed, ablated, record, base, start_layer, keep_base)
    B = ids.shape[0]
    run_ids = ids.repeat(state.K, 1) if state.K > 1 else ids
    with torch.no_grad(), state.installed(), unembed_only(model, vocab):
        logits = model.hf(run_ids.to(model.device), logits_to_keep=positions.to(model.device), use_cache=False).logits
    return logits.reshape(state.K, B, len(positions), -1), state.record, state.layer_outputs


def variant_output(output: Any, k: int, K: int) -> Any:
    """Of a module output (tensor or tuple of them) for K node sets stacked variant-major along the
    batch, set ``k``'s part: ``[B, ...]`` of ``[K * B, ...]``."""
    if isinstance(output, Tensor):
        B = output.shape[0] // K
        return output if K == 1 else output[k * B:(k + 1) * B]
    if isinstance(output, tuple):
        return tuple(variant_output(o, k, K) for o in output)
    return output


def droppable_nodes(graph: HeadGraph, include_mlps: bool) -> tuple[Tensor, Tensor]:
    """``([n_src] the nodes a circuit may leave out, [n_src] the MLPs)``: every head, and every MLP
    when ``include_mlps``; never the embeddings (source 0)."""
    is_mlp = torch.zeros(graph.n_src, dtype=torch.bool)
    is_mlp[[graph.mlp_src(l) for l in range(graph.n_layers)]] = True
    droppable = torch.ones(graph.n_src, dtype=torch.bool)
    droppable[0] = False
    return (droppable & ~is_mlp if not include_mlps else droppable), is_mlp


def strongest_nodes(scores: Tensor, allowed: Tensor, n: int) -> Tensor:
    """``[n_src]`` bool: the ``n`` nodes of largest |score| among ``allowed``."""
    order = [i for i in scores.abs().argsort(descending=True).tolist() if allowed[i]][:n]
    chosen = torch.zeros_like(allowed)
    chosen[order] = True
    return chosen


@dataclass
class _Chunk:
    ids: Tensor  # [b, T]
    rows: slice
    ablated: NodeValues
    clean_logits: Tensor  # [b, P, d_vocab], or [b, P, c] for the patcher's ``vocab`` columns


class NodePatcher(PerPromptMean):
    """Evaluate node sets (which heads and MLPs are ablated) of ``model`` on ``task``.

    Nodes are indexed as ``HeadGraph`` sources (``graph.head_src(l, h)``, ``graph.mlp_src(l)``, 0 for
    the embeddings). A node set is a bool ``[n_src]`` (True = ablated).

    Args:
        ablation: ``"mean"`` (per-position mean over ``reference``, default the task's corrupted
            prompts: Wang et al.'s ABC mean, taken within each template when the task has
            ``groups``), ``"resample"`` (each prompt's corrupted partner), ``"zero"``.
        metric: ``"task"`` or ``"kl"`` (to the clean output).
        batch_size: prompts per forward pass.
        precision: ``"fp32"`` (default: the model's own dtype), ``"auto"`` (bf16 autocast only where
            the hardware runs it faster: about 2.5x on an AVX-512 BF16 CPU, 50x slower on AVX2) or
            ``"bf16"``; see ``transcoders.precision``. ``self.bf16`` says what was chosen.
        scores: also take ``node_scores()`` now: the clean pass the patcher runs anyway is their gradient
            pass's forward, so this saves a forward pass over every prompt.
    """

    def __init__(self, model: Model, task: Task, *, ablation: NodeAblation = "mean",
                 metric: Literal["task", "kl"] = "task", reference: Tensor | None = None, batch_size: int = 64,
                 precision: Precision = "fp32", scores: bool = False) -> None:
        if ablation not in ("zero", "mean", "resample"):
            raise ValueError(f"unknown ablation {ablation!r}: use 'zero', 'mean' or 'resample'")
        if metric not in ("task", "kl"):
            raise ValueError(f"unknown metric {metric!r}: use 'task' or 'kl'")
        task.check_fits(model)
        self.model, self.task, self.ablation, self.metric_name = model, task, ablation, metric
        # A metric that reads only the answers' logits: passes unembed those columns alone.
        self.columns = answer_columns(task, every=metric != "task")
        self.graph = HeadGraph.for_model(model, split_qkv=False)
        self.positions = task.positions
        self.bf16 = use_bf16(model.device, precision)
        self.batch_size = max(1, min(batch_size, task.n))
        mean = None
        self.reference = reference  # kept so a second patcher (e.g. float32 after a bf16 search) ablates alike
        # A reference set of the caller's has no template labels: one mean over all of it.
        self.groups = task.groups if reference is None else None
        if ablation == "mean":
            ref = reference if reference is not None else task.corrupted
            if ref.shape[1] != task.n_pos:
                raise ValueError(f"reference prompts are {ref.shape[1]} tokens long, the task's {task.n_pos}: mean "
                                 "ablation is per position, so pass a reference set of the task's length")
            mean = self._record(ref).mean(self.groups)
        self.chunks: list[_Chunk] = []
        parts: list[Tensor] = []  # [b, n_src] per chunk: the per-prompt node scores, with ``scores``
        for start in range(0, task.n, self.batch_size):
            rows = slice(start, min(start + self.batch_size, task.n))
            ids = task.clean[rows]
            if scores:
                logits, rec, probes = self._gradient_pass(ids, rows)
            else:
                with self._precision():
                    out, rec, _ = node_forward(model, self.graph, ids, self.positions, record=ablation == "zero",
                                               vocab=self.vocab)
                logits = out[0]
            if ablation == "resample":
                abl = self._record(task.corrupted[rows])
            elif ablation == "mean":
                abl = mean.rows(self.groups, rows)  # type: ignore[union-attr]
            else:
                abl = rec.zeros()  # type: ignore[union-attr]
            self.chunks.append(_Chunk(ids, rows, abl, logits))
            if scores:
                parts.append(self._chunk_scores(self.chunks[-1], rec, probes))  # type: ignore[arg-type]
        self._prompt_scores = torch.cat(parts) if scores else None
        self.m_full = self._mean_over_chunks(lambda c: float(self._metric(c.clean_logits, c)))
        self.m_empty = self._empty_metric(mean)

    def _empty_metric(self, mean: NodeValues | None) -> float:
        """m(∅): every node ablated, the embeddings too, as the edge-level empty circuit (every edge removed).
        A prompt's logits then depend on its ablated values alone, not on its tokens, so under mean or zero
        ablation, where prompts share them (a template's mean, or zeros), one row per shared value is run."""
        everything = torch.ones(self.graph.n_src, dtype=torch.bool)
        if self.ablation == "resample":
            return float(self.evaluate(everything)[0])
        shared = mean if mean is not None else self.chunks[0].ablated  # [G, ...]: per group, or one
        G = shared.z[0].shape[0]
        with self._precision():
            logits, _, _ = node_forward(self.model, self.graph, self.task.clean[:G], self.positions,
                                        removed=everything, ablated=shared, vocab=self.vocab)
        which = self.groups if G > 1 else torch.zeros(self.task.n, dtype=torch.long)
        per_prompt = logits[0][which.to(logits.device)]  # type: ignore[union-attr]  # [N, P, c]
        return self._mean_over_chunks(lambda c: float(self._metric(per_prompt[c.rows], c)))

    @property
    def nodes(self) -> list[int]:
        """Every ablatable node (heads and MLPs), in topological order."""
        return list(range(1, self.graph.n_src))

    def _precision(self) -> Any:
        return autocast(self.model.device, "bf16") if self.bf16 else nullcontext()

    def _record(self, ids: Tensor) -> NodeValues:
        parts = []
        for s in range(0, ids.shape[0], self.batch_size):
            with self._precision():
                _, rec, _ = node_forward(self.model, self.graph, ids[s:s + self.batch_size], self.positions,
                                         record=True, vocab=self.vocab)
            parts.append(rec)
        dt = self.model.dtype  # the model's own precision, even when the passes ran in bf16
        return NodeValues(*([torch.cat([getattr(p, kind)[i] for p in parts]).to(dt)  # type: ignore[union-attr]
                              for i in range(len(getattr(parts[0], kind)))] for kind in ("z", "mlp", "embed")))

    @property
    def vocab(self) -> Tensor | None:
        """``[c]`` the vocabulary columns every pass unembeds (None: all of them)."""
        return self.columns.vocab

    def _metric(self, logits: Tensor, chunk: _Chunk) -> Tensor:
        """``logits`` ``[b, P, d_vocab]`` for the prompts of ``chunk`` → scalar (mean over them)."""
        if self.metric_name == "kl":
            return kl_to_clean(logits, chunk.clean_logits)
        c = self.columns
        return self.task.metric_fn(logits, c.answers[chunk.rows].to(logits.device), c.wrong[chunk.rows].to(logits.device))

    def _mean_over_chunks(self, fn: Any) -> float:
        return sum(fn(c) * (c.rows.stop - c.rows.start) / self.task.n for c in self.chunks)

    def evaluate(self, removed: Tensor, *, base: list[NodeBase] | None = None, start_layer: int = 0) -> Tensor:
        """The metric under each node set ``removed`` ``[K, n_src]`` (or ``[n_src]``) → ``[K]`` float64.

        ``base``/``start_layer``: replay layers below ``start_layer`` from ``base_run`` (whose node
        set must agree with every one of ``removed`` below that layer).
        """
        if removed.ndim == 1:
            removed = removed.unsqueeze(0)
        out = torch.zeros(removed.shape[0], dtype=torch.float64)
        for i, c in enumerate(self.chunks):
            with self._precision():
                logits, _, _ = node_forward(self.model, self.graph, c.ids, self.positions, removed=removed,
                                            ablated=c.ablated, base=None if base is None else base[i].layer_outputs,
                                            start_layer=start_layer, vocab=self.vocab)
            w = (c.rows.stop - c.rows.start) / self.task.n
            for k in range(logits.shape[0]):
                out[k] += w * float(self._metric(logits[k], c))
        return out

    def prompt_metrics(self, logits: Tensor, chunk: _Chunk) -> Tensor:
        """``logits`` ``[b, P, d_vocab]`` for the prompts of ``chunk`` → ``[b]`` float64: the metric of each
        prompt alone (the chunk's metric is their mean when ``per_prompt_mean``)."""
        rows = range(chunk.rows.start, chunk.rows.stop)
        t = self.task
        if self.metric_name == "kl":
            vals = [kl_to_clean(logits[i:i + 1], chunk.clean_logits[i:i + 1]) for i in range(len(rows))]
        else:
            ans, wrong = self.columns.answers.to(logits.device), self.columns.wrong.to(logits.device)
            vals = [t.metric_fn(logits[i:i + 1], ans[r:r + 1], wrong[r:r + 1]) for i, r in enumerate(rows)]
        return torch.stack([v.double() for v in vals]).cpu()

    keeps_variants = True
    """``chunk_metrics(keep_base=True)`` records every node set of a batched, resumed pass (ACDC keeps
    each chunk's run current through its removals instead of recording it again)."""

    def chunk_metrics(self, i: int, removed: Tensor, *, base: NodeBase | None = None, start_layer: int = 0,
                      keep_base: bool = False) -> tuple[Tensor, list[NodeBase] | None]:
        """Per-prompt metrics ``[K, b]`` of prompt chunk ``i`` under each node set ``removed`` ``[K, n_src]``,
        resumed at ``start_layer`` from ``base`` (see ``evaluate``); with ``keep_base`` each set's run is
        also recorded (K of them, the layers below ``start_layer`` taken from ``base``) to resume from later."""
        c = self.chunks[i]
        removed = removed.unsqueeze(0) if removed.ndim == 1 else removed
        start = start_layer if base is not None else 0
        with self._precision():
            logits, _, outs = node_forward(self.model, self.graph, c.ids, self.positions, removed=removed,
                                           ablated=c.ablated, base=None if base is None else base.layer_outputs,
                                           start_layer=start, keep_base=keep_base, vocab=self.vocab)
        K = logits.shape[0]
        values = torch.stack([self.prompt_metrics(logits[k], c) for k in range(K)])
        if not keep_base:
            return values, None
        below = [] if base is None else base.layer_outputs[:start]
        return values, [NodeBase(below + [variant_output(o, k, K) for o in outs], float(values[k].mean()))
                        for k in range(K)]

    def base_run(self, removed: Tensor) -> tuple[float, list[NodeBase]]:
        """The metric under one node set, and that run recorded per prompt chunk to resume from."""
        value, bases = 0.0, []
        for c in self.chunks:
            with self._precision():
                logits, _, outs = node_forward(self.model, self.graph, c.ids, self.positions,
                                               removed=removed, ablated=c.ablated, keep_base=True, vocab=self.vocab)
            m = float(self._metric(logits[0], c))
            value += m * (c.rows.stop - c.rows.start) / self.task.n
            bases.append(NodeBase(outs, m))
        return value, bases

    def node_scores(self) -> Tensor:
        """EAP per node ``[n_src]``: Σ over positions, mean over prompts, of (ablated − clean output) ·
        ∂m/∂output at the clean input, a first-order estimate of m(remove the node alone) − m(M)."""
        return self.prompt_scores().mean(0)

    def prompt_scores(self) -> Tensor:
        """``[n_prompts, n_src]`` float64: each prompt's node EAP scores, the first-order estimate of what
        removing the node alone does to that prompt's metric (``node_scores`` is their mean; ACDC uses
        them as control variates, ``circuits.discovery.heads.chunked``)."""
        if self._prompt_scores is not None:  # taken in the clean pass (``scores=True``)
            return self._prompt_scores.clone()
        parts = []
        for c in self.chunks:
            _, rec, probes = self._gradient_pass(c.ids, c.rows)
            parts.append(self._chunk_scores(c, rec, probes))
        return torch.cat(parts)

    def _gradient_pass(self, ids: Tensor, rows: slice) -> tuple[Tensor, NodeValues, NodeValues]:
        """The clean run of prompts ``rows`` (``ids`` ``[b, T]``), with ∂m/∂(every node's output): (logits
        ``[b, P, d_vocab]``, every node's output, zero probes on them whose ``.grad`` holds the gradients);
        m is weighted by the prompts' share of the task."""
        state = _NodePass(self.model, self.graph, None, None, True, None, 0, False)
        state.grad_probes = NodeValues([], [])
        with frozen_parameters(self.model):  # activation gradients only
            with torch.enable_grad(), state.installed(), self._precision(), unembed_only(self.model, self.vocab):
                logits = self.model.hf(ids.to(self.model.device), logits_to_keep=self.positions.to(
                    self.model.device), use_cache=False).logits
                chunk = _Chunk(ids, rows, None, logits.detach())  # type: ignore[arg-type]  # the metric reads rows
                m = self._metric(logits, chunk) * (rows.stop - rows.start) / self.task.n
            m.backward()
        return logits.detach(), state.record, state.grad_probes  # type: ignore[return-value]

    def _chunk_scores(self, c: _Chunk, rec: NodeValues, probes: NodeValues) -> Tensor:
        """``[b, n_src]`` the node scores of chunk ``c``'s prompts, from its ``_gradient_pass``."""
        g = self.graph
        # The pass's m is each prompt's metric / N (``per_prompt_mean``), so N × its gradient is the prompt's own.
        n = float(self.task.n)
        scores = torch.zeros(c.ids.shape[0], g.n_src, dtype=torch.float64)
        for l in range(g.n_layers):
            dz = (c.ablated.z[l].double() - rec.z[l].double()) * probes.z[l].grad.double()  # type: ignore[union-attr]
            per_head = dz.sum(dim=(1, 3)) * n  # [b, H]
            for h in range(g.n_heads):
                scores[:, g.head_src(l, h)] = per_head[:, h]
            dm = (c.ablated.mlp[l].double() - rec.mlp[l].double()) * probes.mlp[l].grad.double()  # type: ignore[union-attr]
            scores[:, g.mlp_src(l)] = dm.sum(dim=(1, 2)) * n
        de = (c.ablated.embed[0].double() - rec.embed[0].double()) * probes.embed[0].grad.double()  # type: ignore[union-attr]
        scores[:, 0] = de.sum(dim=(1, 2)) * n
        return scores

    def faithfulness(self, kept: Tensor) -> float:
        """f = (m(C) − m(∅)) / (m(M) − m(∅)) of the circuit whose nodes are ``kept`` (``[n_src]`` bool)."""
        m = float(self.evaluate(~kept)[0])
        return faithfulness(m, self.m_full, self.m_empty)
