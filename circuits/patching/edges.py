"""Edge patching in the original model, many edge sets per forward pass.

The residual stream entering any node is a sum of source outputs (plus constants such as
biases). An edge (u → v) is *removed* when v reads u's ablated output instead of its actual
one, so v's input becomes

    x_v = resid_v + Σ_{u removed into v} (ablated_u − actual_u),

where ``actual_u`` is u's output in this very run (which itself may differ from the clean
run when u's own inputs were patched) — the semantics of ACDC, auto-circuit and EAP-IG.
x_v is formed *before* v's own pre-norm, which then runs on it: the norm is nonlinear, so
patching after it would not be the same intervention.

Each attention head needs its own q, k and v inputs, which the model's attention module
cannot take, so hooks compute per-head q/k/v from the per-head normed inputs and replace
the projections' outputs (GQA is ungrouped for the pass: every query head gets its own k
and v, computed from its own input with its group's weights). Everything else (RoPE,
q/k norms, softcapping, masks) stays the model's own code.

Batching: ``removed`` is ``[K, n_src, n_dst]``; the K variants are stacked along the batch
dimension (variant-major), so one forward pass evaluates K edge sets.

Fast path (``fast=True``, the default; the same intervention): a source u whose every outgoing
edge is removed is *folded*: its write into the residual stream itself is replaced by its
ablated value (ablated_u − actual_u is added to the attention or MLP output, or to the
embeddings), as node patching does. Every destination then reads it ablated with no correction
of its own, so the correction of destination v becomes

    x_v = resid_v + Σ_{u upstream of v} (removed[u, v] − folded[u]) (ablated_u − actual_u),

non-zero only for v with a removed edge from a source that is not folded. Only those
destinations get their own per-head q/k/v inputs; the other heads of the layer use the
model's shared projections of the (folded) residual stream. A destination whose own node is
folded needs nothing either: its output is replaced anyway (except a head under Gemma's
post-attention norm, whose output sets the norm's scale for the layer's other heads).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from circuits.hooks import (
    first_tensor,
    on_input,
    on_output,
    repeat_output,
    replace_forward,
    restore,
    with_first,
    write_hook,
)
from circuits.models.adapter import Model
from circuits.patching.columns import unembed_only
from circuits.patching.graph import HeadGraph
from circuits.patching.weights import (
    HeadProjection,
    output_weight,
    post_attention_norm,
    projection_modules,
    qkv_projections,
    rms_offset_factor,
)


@dataclass(frozen=True)
class HeadWeights:
    """Per-head weights of every layer, read once per model (see ``circuits.patching.weights``)."""

    qkv: list[tuple[HeadProjection, HeadProjection, HeadProjection]]
    W_O: list[Tensor]
    """per layer ``[n_heads, d_head, d_model]``"""

    @classmethod
    def of(cls, model: Model) -> HeadWeights:
        with torch.no_grad():
            return cls([qkv_projections(model, l) for l in range(model.n_layers)],
                       [output_weight(model, l) for l in range(model.n_layers)])


@dataclass
class GradRequest:
    """Ask a forward pass for EAP scores: on backward, ``scores[u, v] += Σ diff_u · ∂m/∂x_v``."""

    diff: Tensor
    """``[n_src, batch, n_pos, d_model]``: ablated minus clean output of every source."""
    scores: Tensor
    """``[n_src, n_dst]`` float32 accumulator, updated in place during backward; ``[batch, n_src, n_dst]``
    with ``per_prompt``."""
    per_prompt: bool = False
    """Each prompt's sum apart (over its positions only)."""


@dataclass
class Prefix:
    """A recorded base run to resume from: what the layers before ``start`` produced."""

    layer_outputs: list[Any]
    """What each decoder layer returned in the base run (batch ``B``)."""
    diff: Tensor
    """``[n_src, B, n_pos, d_model]`` ablated minus actual outputs in the base run."""
    totals: Tensor
    """``[n_layers + 1, B * n_pos * d_model]``: row l sums ``diff`` over the unfolded sources before layer l."""
    folded: Tensor
    """``[n_src]`` bool: the sources whose ablated value the recorded residual stream carries (fast path)."""


@dataclass
class PatchOutput:
    logits: Tensor
    """``[K, batch, n_positions, d_vocab]`` next-token logits at the requested positions."""
    outputs: Tensor | None = None
    """``[n_src, batch, n_pos, d_model]`` every source's output (``record=True``)."""
    prefix: Prefix | None = None
    """The run's per-layer outputs and differences (``keep_prefix=True``)."""


class _Pass:
    """The hooks and buffers of one patched forward pass."""

    def __init__(self, model: Model, graph: HeadGraph, batch: int, n_pos: int, ablated: Tensor,
                 removed: Tensor | None, grad: GradRequest | None, input_override: Tensor | None,
                 prefix: Prefix | None, start: int, keep_prefix: bool, weights: HeadWeights,
                 record: bool, fast: bool) -> None:
        self.model, self.g = model, graph
        self.K = 1 if removed is None else removed.shape[0]
        self.B, self.T, self.d = batch, n_pos, model.d_model
        dtype, dev = model.dtype, model.device
        self.ablated = ablated.to(dev, dtype)
        self.grad, self.input_override = grad, input_override
        self.prefix, self.start, self.keep_prefix = prefix, start, keep_prefix
        self.weights, self.fast = weights, fast
        self.n_base = graph.layer_src(start - 1).stop if prefix is not None and start > 0 else 0
        # folded[k, u]: the residual stream carries u's ablated value in variant k (module docstring).
        # Below ``start`` that is whatever the replayed base run folded.
        self.fold = torch.zeros(self.K, graph.n_src, dtype=torch.bool, device=dev)
        if self.n_base:
            # A variant may keep an edge of a source the base run folded: its weight is then −1
            # (the base run recorded that source's actual output, its inputs corrected: see _needed).
            self.fold[:, : self.n_base] = prefix.folded[: self.n_base].to(dev)  # type: ignore[union-attr]
        if fast and removed is not None:
            whole = (removed.to(dev) | ~graph.valid.to(dev)).all(-1)  # [K, n_src]
            self.fold[:, self.n_base:] = whole[:, self.n_base:]
        if self.fold.any() and removed is None:  # the full model resumed from a base that folded sources
            removed = torch.zeros(1, graph.n_src, graph.n_dst, dtype=torch.bool)
        self.removed = None if removed is None or not (removed.any() or self.fold.any()) else removed.to(dev)
        # Heads whose output sets a shared post-attention norm's scale (Gemma) cannot skip their inputs.
        self.post_norm = [post_attention_norm(model, l) is not None for l in range(graph.n_layers)]
        self.owner = torch.as_tensor(graph.dst_node, device=dev)  # [n_dst] the source of each input's node
        # diff[k, u] = ablated_u - actual_u in variant k. Layout [K, n_src, B*T*d] so that a
        # destination's correction is one batched matmul over its upstream sources. Only a pass
        # that patches, records or keeps a prefix needs it; each slot is written before it is read.
        # A resumed pass reads the sources before ``start`` from the base run (``self.base``,
        # shared by all K variants, never copied) and stores only the later ones.
        self.keep_diff = self.removed is not None or record or keep_prefix
        n_diff = graph.n_src - self.n_base if self.keep_diff else 0
        BTd = batch * n_pos * self.d
        self.base = prefix.diff[: self.n_base].reshape(self.n_base, BTd) if prefix is not None else None
        self.diff = torch.empty(self.K, n_diff, BTd, dtype=dtype, device=dev)
        self.total = torch.zeros(self.K, BTd if self.keep_diff else 0, dtype=dtype, device=dev)
        self.written = self.n_base
        if self.n_base and self.keep_diff:
            self.total += prefix.totals[start]  # type: ignore[union-attr]
        self.resid: dict[int, Tensor] = {}
        self.attn_fold: dict[int, Tensor | None] = {}  # per layer, until attention's write is formed
        # Per layer, for q, k and v: (heads with their own input [c], their projections [KB, T, c, d_head]).
        self.qkv: dict[int, list[tuple[Tensor, Tensor]] | None] = {}
        self.layer_outputs: list[Any] = []

    # --- bookkeeping ----------------------------------------------------------------------

    def _write(self, first: int, diff: Tensor) -> Tensor | None:
        """Store sources ``first .. first + n`` (``diff``: ``[K or 1, n, B*T*d]``), in order; returns what
        folding them adds to the residual stream, ``[K*B, T, d]`` (None when none is folded)."""
        assert first == self.written, "sources must be written in topological order"
        n = diff.shape[1]
        self.written = first + n
        if not self.keep_diff:
            return None
        if self.removed is None:
            diff = diff.detach()  # nothing reads it in this pass but EAP's scores, which use their own
            self.diff[:, first - self.n_base:first - self.n_base + n] = diff
            return None
        fold = self.fold[:, first:first + n]  # [K, n]
        diff = diff.expand(self.K, -1, -1)
        # A source folded in every variant is never read again (its weight is 0 everywhere): not
        # stored, except by a base run, which later passes may resume with the source unfolded.
        store = torch.ones(n, dtype=torch.bool) if self.keep_prefix else ~fold.all(0).cpu()
        if bool(store.all()):
            self.diff[:, first - self.n_base:first - self.n_base + n] = diff
        elif bool(store.any()):
            rows = store.nonzero().squeeze(1)
            self.diff[:, first - self.n_base + rows] = diff[:, rows]
        # Only corrections read the running sum, of the sources not folded.
        self.total += torch.einsum("kn,knx->kx", (~fold).to(diff.dtype), diff)
        if not fold.any():
            return None
        add = torch.einsum("kn,knx->kx", fold.to(diff.dtype), diff)
        return add.reshape(self.K * self.B, self.T, self.d)

    def _write_actual(self, first: int, actual: Tensor) -> Tensor | None:
        """``actual``: ``[K, n, B, T, d]`` outputs of sources ``first .. first + n`` in this run; returns
        what folding them adds to the residual stream (``_write``)."""
        n = actual.shape[1]
        if not self.keep_diff:
            self.written = first + n
            return None
        abl = self.ablated[first:first + n]  # [n, B or 1, T or 1, d]
        return self._write(first, (abl.unsqueeze(0) - actual).reshape(self.K, n, -1))

    def _delta(self, dsts: slice | int, cols: Tensor | None = None) -> Tensor | None:
        """``[K, C, B*T*d]`` correction for destinations ``dsts`` (all with the same upstream set), or
        for the columns ``cols`` (``[c]`` indices) of them only; None when every one is zero."""
        if self.removed is None:
            return None
        n = self.written
        removed = self.removed[:, :n, dsts]  # [K, n_up, C] bool
        if removed.ndim == 2:
            removed = removed.unsqueeze(-1)
        if cols is not None:
            removed = removed[:, :, cols]
        dtype = self.diff.dtype
        w = removed.to(dtype) - self.fold[:, :n, None].to(dtype)  # removed − folded, in {-1, 0, 1}
        rows = (w != 0).any(-1).any(0)
        if not rows.any():
            return None
        any_kept = (~removed).any(-1).any(0)
        # Δ = Σ w·diff = Σ_unfolded diff − Σ_kept diff (a folded source has every edge removed, and
        # total sums the unfolded ones): sum over whichever set of rows is smaller.
        if int(rows.sum()) <= int(any_kept.sum()):
            return self._weighted_sum(w, rows.nonzero().squeeze(1))
        total = self.total.unsqueeze(1).expand(-1, removed.shape[-1], -1)
        idx = any_kept.nonzero().squeeze(1)
        return total - self._weighted_sum((~removed).to(dtype), idx) if len(idx) else total

    def _needed(self, dsts: slice | int) -> Tensor:
        """``[C]`` bool: which of ``dsts`` read something other than the (folded) residual stream."""
        removed = self.removed[:, : self.written, dsts]  # type: ignore[index]
        if removed.ndim == 2:
            removed = removed.unsqueeze(-1)
        if not self.fast:  # the general path: every destination of a touched layer gets its own input
            return removed.any().expand(removed.shape[-1]).clone()
        need = (removed != self.fold[:, : self.written, None]).any(1).any(0)
        if self.keep_prefix:
            return need  # a base run records every source's actual output, for passes that unfold it
        # A destination of a node folded in every variant: its output is replaced whatever it reads.
        owners = self.owner[dsts].reshape(-1)
        layer = self.g.dst_layer(dsts.start if isinstance(dsts, slice) else dsts)
        heads = self.g.n_layers > layer and not isinstance(dsts, int)
        if not (heads and self.post_norm[layer]):
            dead = (owners >= 0) & self.fold[:, owners.clamp(min=0)].all(0)
            need &= ~dead
        return need

    def _weighted_sum(self, weights: Tensor, idx: Tensor) -> Tensor:
        """``Σ_{u ∈ idx} weights[k, u, c] · diff[k, u]`` → ``[K, C, B*T*d]`` (``weights``: ``[K, n_up, C]``)."""
        m = weights[:, idx].to(self.diff.dtype).transpose(1, 2)  # [K, C, n_idx]
        old = idx < self.n_base
        out = torch.bmm(m[:, :, ~old], self.diff[:, idx[~old] - self.n_base])
        if old.any():  # sources of the base run, the same in every variant
            out = out + m[:, :, old] @ self.base[idx[old]]  # type: ignore[index]
        return out

    def _as_inputs(self, delta: Tensor, C: int) -> Tensor:
        """``[K, C, B*T*d]`` → ``[K*B, T, C, d]``."""
        return delta.reshape(self.K, C, self.B, self.T, self.d).permute(0, 2, 3, 1, 4).reshape(
            self.K * self.B, self.T, C, self.d)

    def _watch(self, x: Tensor, dsts: slice | int, n_up: int) -> None:
        """On backward, add ``Σ diff_u · grad`` for every source u upstream of ``dsts``."""
        if self.grad is None:
            return
        diff = self.grad.diff[:n_up].reshape(n_up, -1)  # [n_up, B*T*d]
        scores = self.grad.scores

        def hook(g: Tensor) -> None:
            if g.ndim == 3:  # one destination: [B, T, d]
                scores[:n_up, dsts] += (diff @ g.reshape(-1).to(diff.dtype)).float()
            else:  # [B, T, C, d]
                gc = g.permute(2, 0, 1, 3).reshape(g.shape[2], -1).to(diff.dtype)
                scores[:n_up, dsts] += (diff @ gc.T).float()

        def per_prompt(g: Tensor) -> None:
            B = g.shape[0]
            d = diff.view(n_up, B, -1).transpose(0, 1)  # [B, n_up, T*d]
            if g.ndim == 3:  # one destination
                scores[:, :n_up, dsts] += torch.bmm(d, g.reshape(B, -1, 1).to(d.dtype))[:, :, 0].float()
            else:  # [B, T, C, d] → [B, T*d, C]
                gc = g.permute(0, 1, 3, 2).reshape(B, -1, g.shape[2]).to(d.dtype)
                scores[:, :n_up, dsts] += torch.bmm(d, gc).float()

        x.register_hook(per_prompt if self.grad.per_prompt else hook)

    # --- hooks ----------------------------------------------------------------------------

    def layer_pre(self, layer: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if layer < self.start:
            return None
        x, where = first_tensor(args, kwargs)
        if layer == 0:
            if self.input_override is not None:
                x = self.input_override.to(x.dtype).repeat(self.K, 1, 1)
            if self.grad is not None:
                # The graph must reach back to the embeddings; parameters are frozen meanwhile.
                x = x.detach().requires_grad_(True)
            fold = self._write_actual(0, x.reshape(self.K, 1, self.B, self.T, self.d))
            if fold is not None:
                x = x + fold
        self.resid[layer] = x
        return with_first(args, kwargs, where, x)

    def layer_post(self, layer: int, output: Any) -> None:
        if self.keep_prefix:
            self.layer_outputs.append(output)

    def attn_pre(self, layer: int) -> None:
        """Per-head q/k/v from per-head corrected inputs, for the projection hooks to return: for
        every head with ``grad``, else for the heads that read something other than the residual stream."""
        g = self.g
        dsts = g.head_dsts(layer)
        n_up = int(g.n_upstream[dsts.start])
        assert n_up == self.written, "attention read before its upstream sources were written"
        C = g.heads_per_layer_dst
        if self.grad is not None:
            cols = torch.arange(C, device=self.model.device)
        elif self.removed is None:
            cols = None
        else:
            cols = self._needed(dsts).nonzero().squeeze(1)
        if cols is None or len(cols) == 0:
            self.qkv[layer] = None  # nothing patched: the projections run as they are
            return
        resid = self.resid[layer]
        delta = self._delta(dsts, cols if len(cols) < C else None)
        if delta is None:
            x = resid.unsqueeze(2).expand(-1, -1, len(cols), -1)
        else:
            x = resid.unsqueeze(2) + self._as_inputs(delta, len(cols))
        self._watch(x, dsts, n_up)
        normed = self.model.norm("ln_attn", layer)(x)  # [KB, T, c, d], each input through the norm
        heads, ports = cols // g.n_ports, cols % g.n_ports
        out = []
        for p, proj in enumerate(self.weights.qkv[layer]):
            mine = (ports == p) if g.split_qkv else torch.ones_like(ports, dtype=torch.bool)
            h = heads[mine]
            if len(h) == 0:
                out.append((h, normed[:, :, :0]))  # no head of this port reads its own input
                continue
            sub = HeadProjection(proj.weight[h], None if proj.bias is None else proj.bias[h])
            out.append((h, sub(normed[:, :, mine]).reshape(*normed.shape[:2], len(h), -1)))
        self.qkv[layer] = out

    def proj_forward(self, module: nn.Module, layer: int, which: int, n_chunks: int, x: Tensor) -> Tensor:
        """Stands in for the q (0), k (1) or v (2) projection, or all three when fused: the shared
        projection of ``x`` (k/v ungrouped), with the heads ``attn_pre`` computed on their own inputs
        overwritten; the shared one is not computed when every head has its own."""
        computed = self.qkv[layer]
        H, dh = self.model.n_heads, self.model.dims.d_head
        if computed is not None and n_chunks == 1 and len(computed[which][0]) == H:
            return computed[which][1].reshape(*x.shape[:-1], H * dh)  # per head, in head order
        output = type(module).forward(module, x)
        parts = list(output.chunk(n_chunks, dim=-1)) if n_chunks > 1 else [output]
        roles = range(3) if n_chunks > 1 else [which]
        for i, role in enumerate(roles):
            o = parts[i]
            if role > 0 and self.ungroup and o.shape[-1] != H * dh:
                # k/v of a grouped model while GQA is ungrouped: repeat each kv head per group.
                o = o.reshape(*o.shape[:-1], -1, dh).repeat_interleave(H // (o.shape[-1] // dh), dim=-2)
                o = o.reshape(*o.shape[:-2], H * dh)
            if computed is not None and len(computed[role][0]):
                heads, values = computed[role]
                o = o.reshape(*o.shape[:-1], H, dh).clone()
                o[..., heads, :] = values
                o = o.reshape(*o.shape[:-2], H * dh)
            parts[i] = o
        return parts[0] if n_chunks == 1 else torch.cat(parts, dim=-1)

    def o_proj_post(self, layer: int, z: Tensor, out: Tensor) -> None:
        """Record each head's write into the residual stream."""
        if layer < self.start:
            return
        H, dh = self.g.n_heads, self.model.dims.d_head
        KBT = z.shape[0] * z.shape[1]
        zh = z.reshape(KBT, H, dh).transpose(0, 1)  # [H, KBT, dh]
        heads = torch.bmm(zh, self.weights.W_O[layer])  # [H, KBT, d]
        heads = heads.reshape(H, self.K, self.B, self.T, self.d).transpose(0, 1)
        post = post_attention_norm(self.model, layer)
        if post is not None:  # Gemma: the residual sees post_norm(Σ heads), linear once its scale is fixed
            heads = heads * rms_offset_factor(post, out).reshape(self.K, 1, self.B, self.T, self.d)
        self.attn_fold[layer] = self._write_actual(self.g.head_src(layer, 0), heads)

    def attn_out_post(self, layer: int, out: Tensor) -> Tensor:
        """Attention's write into the residual stream, with its folded heads' ablated values."""
        fold = self.attn_fold.pop(layer, None)
        return out if fold is None else out + fold

    def mlp_norm_pre(self, layer: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if layer < self.start:
            return None
        x, where = first_tensor(args, kwargs)
        dst = self.g.mlp_dst(layer)
        x = self._corrected(x, dst)
        return with_first(args, kwargs, where, x)

    def _corrected(self, x: Tensor, dst: int) -> Tensor:
        """The input ``[KB, T, d]`` of a single destination (MLP or logits) after its removed edges."""
        delta = self._delta(dst) if self.removed is not None and bool(self._needed(dst).all()) else None
        if delta is not None:
            x = x + self._as_inputs(delta, 1).squeeze(2)
        elif self.grad is not None:
            x = x.clone()  # its own autograd node: the residual branch must not add to this gradient
        self._watch(x, dst, self.written)
        return x

    def mlp_post(self, layer: int, out: Tensor) -> Tensor:
        """Record the MLP's write; return it with the ablated value where the MLP is folded."""
        if layer < self.start:
            return out
        src = self.g.mlp_src(layer)
        fold = self._write_actual(src, out.reshape(self.K, 1, self.B, self.T, self.d))
        return out if fold is None else out + fold

    def final_norm_pre(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x, where = first_tensor(args, kwargs)
        return with_first(args, kwargs, where, self._corrected(x, self.g.logits_dst))

    # --- installation ---------------------------------------------------------------------

    @contextmanager
    def installed(self) -> Iterator[None]:
        model, g = self.model, self.g
        handles: list[RemovableHandle] = []
        replaced: list[tuple[nn.Module, Any]] = []
        grouped: list[nn.Module] = []
        self.ungroup = model.n_kv_heads != model.n_heads
        try:
            for l in range(g.n_layers):
                layer = model.module("resid_pre", l)
                handles.append(on_input(layer,
                    lambda m, a, kw, l=l: self.layer_pre(l, a, kw)))
                if l < self.start:
                    # Resume: the layer returns what it returned in the base run.
                    cached = repeat_output(self.prefix.layer_outputs[l], self.K)  # type: ignore[union-attr]
                    replaced.append(replace_forward(layer, lambda *a, _c=cached, **kw: _c))
                    continue
                if self.keep_prefix:
                    handles.append(on_output(layer, lambda m, a, out, l=l: self.layer_post(l, out)))
                attn = model.module("attn_pattern", l)
                handles.append(on_input(attn, lambda m, a, kw, l=l: self.attn_pre(l)))
                if self.ungroup:
                    attn.num_key_value_groups = 1  # every query head has its own k and v this pass
                    grouped.append(attn)
                for role, (module, _chunk, n) in enumerate(projection_modules(model, l)):
                    if n > 1 and role > 0:
                        continue  # fused: one call returns q, k and v together
                    replaced.append(replace_forward(
                        module, lambda x, *a, _m=module, l=l, r=role, n=n, **kw: self.proj_forward(_m, l, r, n, x)))
                handles.append(on_output(model.module("attn_z", l),
                    lambda m, a, out, l=l: self.o_proj_post(l, first_tensor(a, {})[0], out)))
                handles.append(write_hook(model.module("attn_out", l), model.spec.location("attn_out", l),
                    lambda out, l=l: self.attn_out_post(l, out)))
                handles.append(on_input(model.norm("ln_mlp", l),
                    lambda m, a, kw, l=l: self.mlp_norm_pre(l, a, kw)))
                handles.append(write_hook(model.module("mlp_resid", l), model.spec.location("mlp_resid", l),
                    lambda out, l=l: self.mlp_post(l, out)))
            handles.append(on_input(model.norm("ln_final"),
                lambda m, a, kw: self.final_norm_pre(a, kw)))
            yield
        finally:
            restore(handles, replaced)
            for attn in grouped:
                attn.num_key_value_groups = model.n_heads // model.n_kv_heads


def patched_forward(model: Model, graph: HeadGraph, ids: Tensor, ablated: Tensor, removed: Tensor | None,
                    positions: Tensor, *, grad: GradRequest | None = None, input_override: Tensor | None = None,
                    prefix: Prefix | None = None, start_layer: int = 0, record: bool = False,
                    keep_prefix: bool = False, weights: HeadWeights | None = None, fast: bool = True,
                    vocab: Tensor | None = None) -> PatchOutput:
    """One forward pass of ``ids`` under K edge sets.

    Args:
        ids: ``[B, T]`` token ids (equal lengths, no padding).
        ablated: ``[n_src, B or 1, T, d_model]`` what each source's output becomes on a removed edge.
        removed: ``[K, n_src, n_dst]`` bool, True = edge removed; None = the unpatched model.
        positions: ``[P]`` positions whose next-token logits to return.
        grad: accumulate EAP scores on backward (call ``.backward()`` on a metric of the logits).
        input_override: ``[B, T, d_model]`` residual stream entering layer 0 (EAP-IG's interpolation).
        prefix, start_layer: skip layers below ``start_layer``, replaying ``prefix`` (a base run
            whose removed edges all agree with ``removed`` below that layer).
        record: also return every source's output (``removed`` must be None).
        keep_prefix: also return this run as a ``Prefix`` (needs K = 1).
        weights: ``HeadWeights.of(model)``, to reuse across passes.
        fast: fold sources whose every edge is removed into the residual stream and give only the
            destinations that need it their own input (module docstring); False corrects every
            destination of a touched layer (the same intervention, for tests).
        vocab: ``[c]`` unembed only these columns (``circuits.patching.columns``): the logits are then
            ``[K, B, P, c]``.
    """
    ids = torch.as_tensor(ids, dtype=torch.long, device=model.device)
    B, T = ids.shape
    if removed is not None and removed.ndim == 2:
        removed = removed.unsqueeze(0)
    if removed is not None and removed.shape[1:] != (graph.n_src, graph.n_dst):
        raise ValueError(f"removed has shape {tuple(removed.shape)}; expected [K, {graph.n_src}, {graph.n_dst}] "
                         "for this graph: build edge sets with graph.empty()")
    if start_layer > 0 and prefix is None:
        raise ValueError("start_layer > 0 needs the base run's prefix: pass prefix=")
    if record:
        if removed is not None:
            raise ValueError("record=True reads the unpatched model: pass removed=None")
        ablated = torch.zeros(graph.n_src, 1, 1, 1, dtype=model.dtype, device=model.device)
    weights = weights if weights is not None else HeadWeights.of(model)
    state = _Pass(model, graph, B, T, ablated, removed, grad, input_override, prefix, start_layer, keep_prefix,
                  weights, record, fast)
    K = state.K
    run_ids = ids.repeat(K, 1) if K > 1 else ids
    positions = torch.as_tensor(positions, dtype=torch.long, device=model.device)
    ctx = torch.enable_grad() if grad is not None else torch.no_grad()
    with ctx, state.installed(), unembed_only(model, vocab):
        logits = model.hf(run_ids, logits_to_keep=positions, use_cache=False).logits
    out = PatchOutput(logits.reshape(K, B, len(positions), -1))
    if record:
        out.outputs = (-state.diff[0]).reshape(graph.n_src, B, T, -1)
    if keep_prefix:
        if K != 1:
            raise ValueError("keep_prefix=True needs a single edge set")
        diff = state.diff[0]
        folded = state.fold[0]
        unfolded = diff * (~folded).to(diff.dtype)[:, None]
        bounds = [0] + [graph.layer_src(l).start for l in range(1, graph.n_layers)] + [graph.n_src]
        groups = torch.stack([unfolded[a:b].sum(0) for a, b in pairwise(bounds)])
        # Row l: the sum over the unfolded sources before layer l (row 0 is never read: nothing resumes at 0).
        totals = torch.cat([torch.zeros_like(groups[:1]), groups.cumsum(0)])
        out.prefix = Prefix(state.layer_outputs, diff.reshape(graph.n_src, B, T, -1), totals, folded.cpu())
    return out
