"""Node patching in the replacement model, for feature-level discovery.

The nodes are the token embeddings (one per position), every transcoder feature (layer,
position, feature id) and every error (layer, position). Unlike ``trace``, which freezes one
prompt's attention and norms, discovery compares two prompts, so here the replacement model
stays live: attention, norms and the real MLPs all run, and each MLP slot's write is split as

    write_l = Σ_s a_s · dec[s→l] + b_dec_l + skip(x_l) + e_l,     e_l = MLP_l(x_l) − (the rest),

so with nothing patched the replacement model *is* the model, on clean and corrupted prompts
alike: the world of ``circuits.replacement.forward`` with ``attention="live", features="recompute",
errors="live"``, batched over a task's prompts and many circuits at once. A node is *ablated* by
fixing it to its ablated value (``circuits.ablation``: by default its value on the paired corrupted
prompt, resample ablation; or its per-position mean over the corrupted prompts within the task's
template groups; or zero); a kept node is computed live from whatever its inputs now are. Under
resample ablation, ablating every node gives exactly the corrupted run, so m(∅) is the corrupted
metric and m(M) the clean one. No features sit before ``feature_start`` (the one position policy).

The write is formed as ``MLP_l(x_l) + Σ (ablated − live) · direction``, so with nothing ablated
the change is exactly zero, not a rounding of a reconstruction.

Nodes are numbered ``[embeddings P | features L·P·F | errors L·P]`` (``NodeIndex``); a circuit
or a batch of K of them is a bool mask ``[K, n_nodes]``, True where the node is kept.

Kept errors are computed live from the circuit's own MLP input, so an ablated upstream node cannot
leak its clean value into the circuit through an error it feeds (as with SAE errors in Marks et
al.'s sparse feature circuits).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from circuits.ablation import position_means, rows_of
from circuits.attribution.checks import check_transcoders
from circuits.hooks import (
    detached,
    hooked,
    on_output,
    repeat_output,
    replace_forward,
    restore,
    write_hook,
)
from circuits.models.adapter import Model
from circuits.models.arch import Location
from circuits.replacement import as_compute
from circuits.replacement.forward import SlotEditor, forward
from circuits.replacement.slots import without_early_features
from circuits.tasks.task import Task
from transcoders.positions import FEATURE_START

Ablation = Literal["resample", "mean", "zero"]

_IN = Location("", "input", 0)


@dataclass(frozen=True)
class NodeIndex:
    """Flat numbering of the nodes: embeddings ``[P]``, features ``[L, P, F]``, errors ``[L, P]``."""

    n_layers: int
    n_pos: int
    d_features: int

    @property
    def n_features(self) -> int:
        return self.n_layers * self.n_pos * self.d_features

    @property
    def n_nodes(self) -> int:
        return self.n_pos + self.n_features + self.n_layers * self.n_pos

    def embed(self, pos: int) -> int:
        return pos

    def feature(self, layer: int, pos: int, feature: int) -> int:
        return self.n_pos + (layer * self.n_pos + pos) * self.d_features + feature

    def error(self, layer: int, pos: int) -> int:
        return self.n_pos + self.n_features + layer * self.n_pos + pos

    def describe(self, i: int) -> tuple[str, int, int, int]:
        """``(kind, layer, position, feature)`` of node ``i``; layer −1 for embeddings, feature −1
        where there is none."""
        P, F = self.n_pos, self.d_features
        if i < P:
            return "embedding", -1, i, -1
        i -= P
        if i < self.n_features:
            lp, f = divmod(i, F)
            layer, pos = divmod(lp, P)
            return "feature", layer, pos, f
        layer, pos = divmod(i - self.n_features, P)
        return "error", layer, pos, -1

    def layers(self) -> Tensor:
        """``[n_nodes]`` long: each node's layer (−1 for embeddings), for topological orders."""
        P, L, F = self.n_pos, self.n_layers, self.d_features
        feat = torch.arange(L).repeat_interleave(P * F)
        return torch.cat([torch.full((P,), -1), feat, torch.arange(L).repeat_interleave(P)])

    def split(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``v [..., n_nodes]`` → views ``[..., P]``, ``[..., L, P, F]``, ``[..., L, P]``."""
        P, L, F = self.n_pos, self.n_layers, self.d_features
        lead = v.shape[:-1]
        e, f, r = v.split([P, self.n_features, L * P], dim=-1)
        return e, f.reshape(*lead, L, P, F), r.reshape(*lead, L, P)


class Run(NamedTuple):
    """What one unpatched forward pass over all prompts produced (model dtype, on the model's device)."""

    embed: Tensor
    """``[n, P, D]`` the residual stream entering layer 0."""
    acts: Tensor
    """``[L, n, P, F]`` feature activations."""
    errors: Tensor
    """``[L, n, P, D]`` MLP write minus the transcoder's."""
    metric: float | None
    """None until measured (an ablated run that is no real prompt's)."""


class Grads(NamedTuple):
    """∂m/∂(node directions) for every prompt: m is the task metric (a mean over prompts)."""

    embed: Tensor
    """``[n, P, D]`` ∂m/∂(residual entering layer 0)."""
    write: Tensor
    """``[L, n, P, D]`` ∂m/∂(MLP slot write): the error nodes' gradient; features' is its
    projection on their decoder directions (``feature_grads``)."""


@dataclass
class Surgery:
    """Per-variant edits on top of ablation, for measuring edges (``edges``).

    ``writes``: layer → (``[K]`` bool, ``[K·b, P, D]``): in the variants marked, the slot writes
    the given value plus its transcoder skip of this pass's input (the skip is wire, not a node).
    ``nodes``: layer → ``(variant, position, feature, add)``: ``add`` (``[b]``) is added to that
    feature's activation, or for ``feature = −1`` (``[b, D]``) to that error.
    """

    writes: dict[int, tuple[Tensor, Tensor]]
    nodes: dict[int, list[tuple[int, int, int, Tensor]]]


class FeaturePatcher:
    """Evaluates node-ablated replacement models on a task, and takes the gradients EAP needs.

    Args:
        transcoders: a PLT or CLT set for ``model`` (cast to the model's device and dtype).
        batch_size: prompts per forward pass (times the number of variants evaluated at once).
    """

    def __init__(self, model: Model, task: Task, transcoders: nn.Module, *, ablation: Ablation = "resample",
                 batch_size: int = 16) -> None:
        check_transcoders(model, transcoders)
        task.check_fits(model)
        if ablation not in ("resample", "mean", "zero"):
            raise ValueError(f"unknown ablation {ablation!r}: use 'resample', 'mean' or 'zero' (circuits.ablation)")
        self.ablation = ablation
        self.model, self.task = model, task
        # eval(): BatchTopK keeps k per token at inference (as in trace).
        self.tc = as_compute(transcoders, model.device, model.dtype).eval()
        self.index = NodeIndex(model.n_layers, task.n_pos, transcoders.cfg.d_features)
        # The one position policy (circuits.replacement.slots): no features before it, whose nodes
        # stay in the numbering but are always zero, so ablating them changes nothing.
        self.feature_start = FEATURE_START
        self.batch_size = batch_size
        self.chunks = [slice(i, min(i + batch_size, task.n)) for i in range(0, task.n, batch_size)]
        self.clean = self._record(task.clean)
        self.ablated = self._ablated_values(self._record(task.corrupted))

    @property
    def acc_dtype(self) -> torch.dtype:
        """Scores and gradients are kept in at least float32 (float64 for float64 test models)."""
        return torch.promote_types(self.model.dtype, torch.float32)

    @property
    def m_full(self) -> float:
        return self.clean.metric

    @property
    def m_empty(self) -> float:
        """The metric with every node ablated: the corrupted run itself under resample ablation."""
        if self.ablated.metric is None:
            self.ablated = self.ablated._replace(metric=float(self.evaluate(~self.all_kept()[None])[0]))
        return self.ablated.metric

    def _ablated_values(self, corrupted: Run) -> Run:
        """What each node of each prompt becomes when ablated (``circuits.ablation``): its value on the
        paired corrupted prompt; its per-position mean over the corrupted prompts within the task's
        template groups; or zero. The metric of the all-ablated run is measured on first use."""
        if self.ablation == "resample":
            return corrupted
        if self.ablation == "zero":
            return Run(torch.zeros_like(corrupted.embed), torch.zeros_like(corrupted.acts),
                       torch.zeros_like(corrupted.errors), None)
        groups = self.task.groups
        everyone = slice(0, self.task.n)

        def mean(x: Tensor, dim: int) -> Tensor:   # each prompt's own group mean, per position
            return rows_of(position_means(x, groups, dim), groups, everyone, dim).expand_as(x)

        return Run(mean(corrupted.embed, 0), mean(corrupted.acts, 1), mean(corrupted.errors, 1), None)

    # --- evaluation ---------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, keep: Tensor, *, strength: float = 1.0, per_pass: int = 8, progress: bool = False,
                 base: list[list[Any]] | None = None, start_layer: int = 0) -> Tensor:
        """The metric of each circuit in ``keep [K, n_nodes]`` (True = kept live, False = ablated), ``[K]``.

        ``strength`` < 1 moves ablated nodes only that fraction of the way to their corrupted
        value (for first-order checks of attribution scores).
        ``base``/``start_layer``: replay the decoder layers below ``start_layer`` from ``base_run``,
        whose circuit must agree with every one of ``keep`` on the nodes below that layer (PLTs
        only: a CLT's later layers read earlier layers' activations, which a replay skips).
        """
        keep = keep.reshape(-1, self.index.n_nodes)
        if start_layer > 0 and (base is None or self.tc.writes_across_layers):
            raise ValueError("start_layer > 0 needs base= from base_run and per-layer transcoders (a CLT cannot "
                             "replay layers); pass start_layer=0")
        out = torch.zeros(keep.shape[0], dtype=torch.float64)
        steps = [(c, k) for c in range(len(self.chunks)) for k in range(0, keep.shape[0], per_pass)]
        for c, k in tqdm(steps, desc="patching features", file=sys.stderr, disable=not progress):
            part = keep[k:k + per_pass]
            replay = None if start_layer == 0 else (base[c], start_layer)  # type: ignore[index]
            logits = self._forward(c, part, strength=strength, replay=replay)
            b = self.chunks[c].stop - self.chunks[c].start
            for j in range(part.shape[0]):
                out[k + j] += float(self.score(c, logits[j * b:(j + 1) * b])) * b / self.task.n
        return out

    @torch.no_grad()
    def base_run(self, keep: Tensor) -> tuple[float, list[list[Any]]]:
        """The metric of one circuit ``keep [n_nodes]``, and every decoder layer's output in that run
        per prompt chunk, to resume later passes from (``evaluate(base=, start_layer=)``)."""
        value, bases = 0.0, []
        for c, rows in enumerate(self.chunks):
            outputs: list[Any] = []
            logits = self._forward(c, keep[None], record=outputs)
            value += float(self.score(c, logits)) * (rows.stop - rows.start) / self.task.n
            bases.append(outputs)
        return value, bases

    def score(self, chunk: int, logits: Tensor) -> Tensor:
        """The task metric of one chunk's prompts from logits at the metric positions
        ``[b, n_positions, d_vocab]`` (a mean over the chunk)."""
        rows, t = self.chunks[chunk], self.task
        return t.metric_fn(logits, t.answers[rows].to(logits.device), t.wrong[rows].to(logits.device))

    def error_part(self, x: Tensor, mlp_out: Tensor, layer: int, pos: int) -> Tensor:
        """The part of an error at ``pos`` that depends on its own MLP input: MLP(x) minus this layer's
        features (none before ``feature_start``) and skip (earlier CLT features are nodes of their own).
        ``x``, ``mlp_out``: ``[b, D]``."""
        tc = self.tc
        own = 0.0 if pos < self.feature_start else tc.encode(x, layer).acts @ tc.decoder_at(layer, layer)
        return mlp_out - own - tc.skip_layer(x, layer)

    def all_kept(self) -> Tensor:
        return torch.ones(self.index.n_nodes, dtype=torch.bool)

    # --- gradients ----------------------------------------------------------------------

    def gradients(self, alpha: float = 1.0) -> Grads:
        """∂m/∂(node directions) on inputs interpolated between corrupted (α=0) and clean (α=1)
        embeddings, every node live (EAP-IG's path; α=1 is plain EAP)."""
        n, P, D, L = self.task.n, self.task.n_pos, self.model.d_model, self.model.n_layers
        g_embed = torch.zeros(n, P, D, dtype=self.acc_dtype, device=self.model.device)
        g_write = torch.zeros(L, n, P, D, dtype=self.acc_dtype, device=self.model.device)
        for c, rows in enumerate(self.chunks):
            b = rows.stop - rows.start
            leaves = [torch.zeros(b, P, D, dtype=self.model.dtype, device=self.model.device, requires_grad=True)
                      for _ in range(L + 1)]
            with torch.enable_grad():
                logits = self._forward(c, None, alpha=alpha, leaves=leaves)
                m = self.score(c, logits) * (b / self.task.n)
                grads = torch.autograd.grad(m, leaves)
            g_embed[rows] = grads[0]
            for l in range(L):
                g_write[l, rows] = grads[l + 1]
        return Grads(g_embed, g_write)

    def feature_grads(self, write: Tensor) -> Tensor:
        """``write [L, n, P, D]`` (∂m/∂write) → ∂m/∂a ``[L, n, P, F]``: a feature moves every
        write it decodes into (its own layer for a PLT, every later one for a CLT)."""
        L = self.model.n_layers
        out = torch.zeros(L, *write.shape[1:3], self.index.d_features, dtype=write.dtype, device=write.device)
        for s in range(L):
            vecs = self.tc.decoder_vectors(s).detach().to(write.dtype)   # [F, n_targets, D]
            for t in range(vecs.shape[1]):
                out[s] += write[s + t] @ vecs[:, t].T
        return out

    # --- the forward pass ---------------------------------------------------------------

    @torch.no_grad()
    def _record(self, ids: Tensor) -> Run:
        """One unpatched pass over ``ids [n, P]``: embeddings, activations, errors, metric."""
        L = self.model.n_layers
        parts: list[tuple[Tensor, Tensor, Tensor]] = []
        metric = 0.0
        for c, rows in enumerate(self.chunks):
            seen: dict[str, Tensor] = {}
            logits = self._forward(c, None, ids=ids[rows], seen=seen)
            metric += float(self.score(c, logits)) * (rows.stop - rows.start) / self.task.n
            x = torch.stack([seen[f"in{l}"] for l in range(L)], dim=2)      # [b, P, L, D]
            acts = without_early_features(self.tc(x).acts, self.feature_start, pos_dim=1)
            recon = self.tc.decode(acts) + self.tc.skip(x)
            write = torch.stack([seen[f"out{l}"] for l in range(L)], dim=2)
            parts.append((seen["embed"], acts, write - recon))
        embed, acts, err = (torch.cat(t) for t in zip(*parts))
        return Run(embed, acts.permute(2, 0, 1, 3), err.permute(2, 0, 1, 3), metric)

    def _forward(self, chunk: int, keep: Tensor | None, *, strength: float = 1.0, alpha: float | None = None,
                 leaves: list[Tensor] | None = None, ids: Tensor | None = None,
                 seen: dict[str, Tensor] | None = None, direct: bool = False,
                 surgery: Surgery | None = None, replay: tuple[list[Any], int] | None = None,
                 record: list[Any] | None = None) -> Tensor:
        """Logits at the task's positions ``[K·b, n_positions, d_vocab]`` (variant-major): the one
        replacement forward (``circuits.replacement.forward``: live attention, recomputed features, live
        errors) with this task's circuits as a dense ``SlotEditor`` (``_CircuitEditor``).

        Args:
            keep: ``[K, n_nodes]`` bool; None patches nothing (K = 1).
            alpha: embeddings interpolated from ablated (0) to clean (1).
            leaves: ``L + 1`` zero tensors ``[b, P, D]`` added to the embedding and to each MLP
                write, so that their gradients are ∂m/∂(those)
            ids: token ids to run (default the chunk's clean prompts).
            seen: filled with ``embed``, ``in{l}`` and ``out{l}``: the MLP slot's input and the
                MLP's own write, as computed (still attached to the graph when gradients are on);
                with ``keep``, also ``write{l}`` (what the slot wrote) and ``acts{l}`` (live activations).
            direct: hold every MLP write at its value (detached) except for the skip path, so
                gradients to the leaves are direct effects through attention, norms and residual.
            surgery: edits for edge measurement (needs ``keep``).
            replay: (layer outputs of a base run, l): layers below l return their recorded output.
            record: filled with every decoder layer's output (detached).
        """
        K = 1 if keep is None else keep.shape[0]
        rows = self.chunks[chunk]
        ids = self.task.clean[rows] if ids is None else ids
        editor = _CircuitEditor(self, rows, keep, strength, alpha, leaves, seen, direct, surgery)
        positions = self.task.positions.to(self.model.device)
        # Unembed only the metric's positions: the unembedding's input is cut to them.
        cut = [write_hook(self.model.module(self.model.spec.unembed), _IN, lambda h: h[:, positions])]
        with self._layers(K, replay, record), hooked(cut):
            run = forward(self.model, self.tc, ids=ids.to(self.model.device).repeat(K, 1), attention="live",
                          features="recompute", errors="live", editor=editor, feature_start=self.feature_start,
                          keep_inputs=False, grad=None)
        return run.logits

    @contextmanager
    def _layers(self, K: int, replay: tuple[list[Any], int] | None, record: list[Any] | None) -> Iterator[None]:
        """Replay the layers below ``replay[1]`` from recorded outputs, and/or record every layer's output."""
        replaced: list[tuple[nn.Module, Any]] = []
        handles = []
        try:
            for layer in range(self.model.n_layers):
                module = self.model.module("resid_pre", layer)   # the decoder layer itself
                if replay is not None and layer < replay[1]:
                    cached = repeat_output(replay[0][layer], K)
                    replaced.append(replace_forward(module, lambda *a, _c=cached, **kw: _c))
                elif record is not None:
                    handles.append(on_output(module, lambda m, a, out: record.append(detached(out))))
            yield
        finally:
            restore(handles, replaced)


class _CircuitEditor(SlotEditor):
    """A batch of K circuits of one prompt chunk as dense edits of the replacement forward: every node
    a circuit ablates moves ``strength`` of the way from its live value to its ablated one (features,
    errors, token embeddings); plus EAP-IG's interpolated embeddings, gradient leaves, direct-effect
    passes and a ``Surgery``'s held writes and additions."""

    def __init__(self, p: FeaturePatcher, rows: slice, keep: Tensor | None, strength: float, alpha: float | None,
                 leaves: list[Tensor] | None, seen: dict[str, Tensor] | None, direct: bool,
                 surgery: Surgery | None) -> None:
        dev, dt = p.model.device, p.model.dtype
        self.p, self.rows, self.tc = p, rows, p.tc
        self.K = 1 if keep is None else keep.shape[0]
        self.b = rows.stop - rows.start
        self.n_rows = self.K * self.b
        self.alpha, self.leaves, self.seen, self.direct, self.surgery = alpha, leaves, seen, direct, surgery
        self.edits_embed = True
        self.keep = keep is not None
        if keep is not None:
            k_embed, k_feat, k_err = (m.to(dev) for m in p.index.split(keep))
            # Fraction of the way each node moves to its ablated value: [K, ...] in the model dtype.
            self.move_embed = (~k_embed).to(dt)[:, None, :, None] * strength      # [K, 1, P, 1]
            self.move_feat = (~k_feat).to(dt) * strength                           # [K, L, P, F]
            self.move_err = (~k_err).to(dt)[:, :, None, :, None] * strength       # [K, L, 1, P, 1]
        self.fixes = {layer: [f for f in fixes if f[2] >= 0] for layer, fixes in
                      (surgery.nodes.items() if surgery is not None else [])}
        self.err_fixes = {layer: [f for f in fixes if f[2] < 0] for layer, fixes in
                          (surgery.nodes.items() if surgery is not None else [])}
        self.natural: dict[int, Tensor] = {}

    def _variants(self, t: Tensor) -> Tensor:
        """``[b, ...]`` → ``[K·b, ...]`` (variant-major)."""
        return t.repeat(self.K, *([1] * (t.ndim - 1)))

    def _by_variant(self, t: Tensor) -> Tensor:
        return t.reshape(self.K, self.b, *t.shape[1:])

    def embed(self, x: Tensor) -> Tensor:
        if self.seen is not None:
            self.seen["embed"] = x
        if self.alpha is not None and self.alpha != 1.0:
            abl = self._variants(self.p.ablated.embed[self.rows])
            x = abl + self.alpha * (x - abl)
        if self.keep and bool(self.move_embed.any()):
            abl = self.p.ablated.embed[self.rows]
            x = x + (self.move_embed * (abl[None] - self._by_variant(x))).reshape(x.shape)
        if self.direct:
            x = x.detach()
        return x if self.leaves is None else x + self._variants(self.leaves[0])

    def real(self, layer: int, real: Tensor, x: Tensor) -> Tensor:
        if self.seen is not None:
            self.seen[f"in{layer}"], self.seen[f"out{layer}"] = x, real
        if self.direct:
            skip = self.tc.skip_layer(x, layer)
            real = real.detach() - skip.detach() + skip
        return real

    def features(self, layer: int, acts: Tensor) -> Tensor:
        self.natural[layer] = acts
        fixes = self.fixes.get(layer)
        if not self.keep and not fixes:
            return acts
        d = self._by_variant(acts)
        if self.keep:
            d = self.move_feat[:, layer, None] * (self.p.ablated.acts[layer, self.rows][None] - d)   # [K, b, P, F]
        else:
            d = torch.zeros_like(d)
        for k, pos, f, add in fixes or []:
            d[k, :, pos, f] += add.to(d.dtype)
        return acts + d.reshape(acts.shape)

    def edits_errors(self, layer: int) -> bool:
        return (self.keep and bool(self.move_err[:, layer].any())) or bool(self.err_fixes.get(layer))

    def error(self, layer: int, err: Tensor) -> Tensor:
        if self.keep:
            e = self._by_variant(err)
            err = err + (self.move_err[:, layer] * (self.p.ablated.errors[layer, self.rows][None] - e)).reshape(err.shape)
        for k, pos, _, add in self.err_fixes.get(layer, []):
            err = err.clone()
            err[k * self.b:(k + 1) * self.b, pos] += add.to(err.dtype)
        return err

    def write(self, layer: int, write: Tensor, x: Tensor, acts: Tensor) -> Tensor:
        if self.surgery is not None and layer in self.surgery.writes:
            mask, value = self.surgery.writes[layer]
            held = value + self.tc.skip_layer(x, layer)
            rows_held = mask.to(write.device).repeat_interleave(self.b)
            write = torch.where(rows_held[:, None, None], held, write)
        if self.seen is not None and self.keep:
            self.seen[f"write{layer}"], self.seen[f"acts{layer}"] = write, self.natural[layer]
        return write if self.leaves is None else write + self._variants(self.leaves[layer + 1])
