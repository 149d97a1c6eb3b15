"""Edges by batched backward passes through the frozen residual map, with no autograd.

A batch of targets starts as read-out vectors at the residual points they read (a feature at
its layer's MLP input, a logit after the last layer) and walks down the layers. At each
layer the grads first meet that layer's MLP slot, where every source written there (feature
decoder vectors times activations, error vectors) reads off its edge as a dot product; then
they pick up the skip and attention-OV paths; targets of that layer join the batch. At the
bottom the token embeddings read off theirs. Biases met on the way add up to each target's
constant term.

Work is only spent where grads can be nonzero:

- a batch is sorted by layer, highest first, so at layer j the targets above j are a prefix
  of the batch and the matrix products run on that prefix only;
- a batch only walks the positions up to its last target's (attention is causal).

Each layer's readout is one batched product over positions whose output lands in a block of
edge-matrix columns ("slots", in node order with padding), so nothing is scattered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from circuits.attribution.residual_map import ResidualMap


@dataclass
class Targets:
    """Nodes that get rows: each reads the residual stream at one (layer, position)."""

    layer: Tensor
    """``[n]`` long: the layer whose MLP input it reads; ``n_layers`` for logits (after the last layer)."""
    pos: Tensor
    """``[n]`` long."""
    vec: Tensor
    """``[n, D]`` its read-out direction pulled back through the frozen norm it reads through."""
    const: Tensor
    """``[n]`` what no residual path carries: encoder bias, the norm's bias read out, unembedding bias."""
    head: Tensor | None = None
    """``[n]`` long, for head channels only (``circuits.attribution.heads``): target i is then what head
    ``head[i]`` of layer ``layer[i]`` moves from every key position to query ``pos[i]``; ``vec[i]`` is the
    grad already pulled back through that head's OV, spread over the keys by the head's frozen mix and
    injected below the layer's attention (at its input residual stream)."""
    below: bool = False
    """Whether every target reads the residual stream entering its layer's attention (a query or key, for QK
    attributions) rather than the MLP input after it. Head channels always read below."""

    def __len__(self) -> int:
        return int(self.layer.shape[0])

    @property
    def below_attention(self) -> bool:
        return self.below or self.head is not None

    def take(self, idx: Tensor) -> Targets:
        return Targets(self.layer[idx], self.pos[idx], self.vec[idx], self.const[idx],
                       None if self.head is None else self.head[idx], self.below)

    def resolve(self) -> Targets:
        return self


@dataclass
class FeatureTargets:
    """Feature targets whose read-out vectors are built only for the batch at hand: for every
    active feature they would take ``[n_active, D]``, more than the rest of a long prompt's trace."""

    rmap: ResidualMap
    transcoder: nn.Module
    layer: Tensor
    """``[n]`` long."""
    pos: Tensor
    """``[n]`` long."""
    feature: Tensor
    """``[n]`` long."""

    def __len__(self) -> int:
        return int(self.layer.shape[0])

    def take(self, idx: Tensor) -> FeatureTargets:
        return FeatureTargets(self.rmap, self.transcoder, self.layer[idx], self.pos[idx], self.feature[idx])

    def resolve(self) -> Targets:
        return feature_targets(self.rmap, self.transcoder, self.layer, self.pos, self.feature)


@dataclass
class Sources:
    """Nodes that get columns: features, then errors, then tokens — and where each is read off.

    Every layer's MLP slot has a readout table: one batched product of the grads at its write
    site with ``table[j] [P, D, m_j]`` gives, per position, the edges of the per-layer features
    written there (PLT), the edge of the error there, and the slot's constant term. Cross-layer
    features are read off separately (``dec``), once per batch, summing their writes.

    The edge matrix a batch fills has ``n_slots`` columns; ``col_of[slot]`` is each slot's
    node column (-1 for padding, which always reads zero).
    """

    table: list[Tensor]
    """Per layer j: ``[P, D, m_j]``: ``f_max[j]`` padded feature decoder vectors times activation (PLT
    only), then the error vector, then the slot's constant write."""
    f_max: list[int]
    """Per layer: feature slots per position in ``table`` (0 for a CLT)."""
    slot0: list[int]
    """Per layer: the first edge-matrix slot of its per-layer features (position-major)."""
    dec: list[Tensor]
    """CLT only, per source layer s: ``[n_s, L - s, D]`` activation times decoder vectors to layers s.. L-1."""
    starts: list[list[int]]
    """CLT only, per source layer: ``[P + 1]`` row offsets of each position's block in ``dec[s]``."""
    col0: list[int]
    """Per source layer: the node column (= edge-matrix slot, for a CLT) of its first feature."""
    err_slot0: int
    """Error (l, p) is slot ``err_slot0 + l * P + p``; token p is ``tok_slot0 + p``."""
    tok_slot0: int
    embed: Tensor
    """``[P, D]`` the token nodes' vectors: the residual stream entering layer 0."""
    n_slots: int
    col_of: Tensor
    """``[n_slots]`` long, on the CPU."""

    @property
    def cross_layer(self) -> bool:
        return bool(self.dec)


def feature_targets(rmap: ResidualMap, transcoder: nn.Module, layer: Tensor, pos: Tensor, feature: Tensor) -> Targets:
    """Targets for features ``(layer, pos, feature)`` ``[n]``: their encoder rows through the frozen MLP norm."""
    W_enc, b_enc = transcoder.W_enc.detach(), transcoder.b_enc.detach()
    in_scale = transcoder.input_scale
    n, D = layer.shape[0], W_enc.shape[1]
    vec = W_enc.new_empty(n, D)
    const = W_enc.new_empty(n)
    for l in torch.unique(layer).tolist():
        idx = (layer == l).nonzero().squeeze(1)
        enc = W_enc[l][:, feature[idx]].T * in_scale[l]                     # [m, D]
        norm = rmap.mlp_norms[l]
        folded = enc * norm.weight
        if norm.centered:
            folded = folded - folded.mean(-1, keepdim=True)
        vec[idx] = folded * norm.scale[pos[idx], None]
        const[idx] = b_enc[l, feature[idx]] + (enc @ norm.bias if norm.bias is not None else 0.0)
    return Targets(layer, pos, vec, const)


def logit_targets(rmap: ResidualMap, u: Tensor, u_bias: Tensor | None, n_pos: int) -> Targets:
    """Targets for logits at the last position, given their unembedding rows minus the mean row
    ``u [n, D]`` (and unembedding biases minus their mean ``[n]``), read through the frozen final norm."""
    norm = rmap.ln_final
    folded = u * norm.weight
    if norm.centered:
        folded = folded - folded.mean(-1, keepdim=True)
    const = u @ norm.bias if norm.bias is not None else u.new_zeros(u.shape[0])
    if u_bias is not None:
        const = const + u_bias
    n = u.shape[0]
    layer = torch.full((n,), rmap.n_layers, dtype=torch.long, device=u.device)
    pos = torch.full((n,), n_pos - 1, dtype=torch.long, device=u.device)
    return Targets(layer, pos, folded * norm.scale[n_pos - 1], const)


def build_sources(transcoder: nn.Module, layer: Tensor, pos: Tensor, feature: Tensor, act: Tensor,
                  errors: Tensor, embed: Tensor, mlp_const: Tensor) -> Sources:
    """Sources for features ``[n]`` sorted by (layer, pos, feature), errors ``[L, P, D]``, token
    embeddings ``[P, D]``; ``mlp_const`` ``[L, D]`` or ``[L, P, D]`` is each MLP slot's constant write."""
    L, P, D = errors.shape
    n_f = int(layer.shape[0])
    key = layer * P + pos
    if n_f and bool((key[1:] < key[:-1]).any()):
        raise ValueError("features must be sorted by (layer, position)")
    cross = transcoder.writes_across_layers
    bounds = torch.searchsorted(layer, torch.arange(L + 1, device=layer.device)).tolist()
    tables, f_max, slot0, dec, starts, col_of = [], [], [], [], [], []
    next_slot = 0 if not cross else n_f
    for s in range(L):
        lo, hi = bounds[s], bounds[s + 1]
        vecs = transcoder.decoder_vectors(s).detach()[feature[lo:hi]] * act[lo:hi, None, None]  # [m, n_t, D]
        counts = torch.bincount(pos[lo:hi], minlength=P)
        offsets = torch.cumsum(counts, 0) - counts
        extra = torch.stack([errors[s], mlp_const[s].expand(P, D)], dim=-1)                    # [P, D, 2]
        if cross:
            dec.append(vecs.contiguous())
            starts.append([0] + torch.cumsum(counts, 0).tolist())
            tables.append(extra.contiguous())
            f_max.append(0)
            slot0.append(0)
            continue
        width = int(counts.max()) if hi > lo else 0
        slot = torch.arange(hi - lo, device=layer.device) - offsets[pos[lo:hi]]
        table = errors.new_zeros(P, width, D)
        table[pos[lo:hi], slot] = vecs[:, 0]
        tables.append(torch.cat([table.transpose(1, 2), extra], dim=-1).contiguous())
        cols = torch.full((P, width), -1, dtype=torch.long)
        cols[pos[lo:hi].cpu(), slot.cpu()] = torch.arange(lo, hi)
        col_of.append(cols.reshape(-1))
        f_max.append(width)
        slot0.append(next_slot)
        next_slot += P * width
    feature_cols = torch.arange(n_f) if cross else torch.cat(col_of) if col_of else torch.zeros(0, dtype=torch.long)
    rest = n_f + torch.arange(L * P + P)
    return Sources(tables, f_max, slot0, dec, starts, bounds[:L], next_slot, next_slot + L * P, embed,
                   next_slot + L * P + P, torch.cat([feature_cols, rest]))


class Attributor:
    """Computes rows of the adjacency for batches of targets."""

    def __init__(self, rmap: ResidualMap, sources: Sources) -> None:
        self.rmap = rmap
        self.src = sources

    @torch.no_grad()
    def rows(self, targets: Targets, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(edges [B, n_slots], bias [B])`` for a batch of targets sorted by layer, highest first:
        each row's direct effect of every source (columns ``src.col_of``), and its constant term.

        ``out``: a ``[>= B, n_slots]`` buffer the edges are written to (its first B rows are returned).
        A loop over batches passes the same one each time: a fresh ``[B, n_slots]`` per batch lands
        on new pages, which a VM serves slowly (on the IOI full graph, one buffer saved 300k page
        faults and a few seconds of a 64-71 s edge phase; BENCHMARKS.md).
        """
        rmap, src = self.rmap, self.src
        layer = targets.layer
        if bool((layer[1:] > layer[:-1]).any()):
            raise ValueError("targets in a batch must be sorted by layer, highest first")
        B, D, L = len(targets), targets.vec.shape[1], rmap.n_layers
        top, n = int(layer[0]), int(targets.pos.max()) + 1
        # reach[j]: targets reading at or after layer j; those at layer j are rows reach[j+1]:reach[j].
        counts = torch.bincount(layer, minlength=L + 1).tolist()
        reach = [0] * (L + 2)
        for j in range(L, -1, -1):
            reach[j] = reach[j + 1] + counts[j]
        g = targets.vec.new_zeros(B, n, D)                                  # residual grad, [target, pos, d]
        edges = targets.vec.new_zeros(B, src.n_slots) if out is None else out[:B].zero_()
        bias = targets.const.clone()
        stacked = targets.vec.new_empty(B, n, top, D) if src.cross_layer else None

        def inject(j: int) -> None:
            lo, hi = reach[j + 1], reach[j]
            if hi > lo and not targets.below_attention:
                rows = torch.arange(lo, hi, device=g.device)
                g[rows, targets.pos[lo:hi]] += targets.vec[lo:hi]

        def inject_below_attention(j: int) -> None:
            lo, hi = reach[j + 1], reach[j]
            if hi > lo and targets.head is not None:
                spread = rmap.mix[j][targets.head[lo:hi], :n, targets.pos[lo:hi]]   # [m, n(key)]
                g[lo:hi] += spread[:, :, None] * targets.vec[lo:hi, None, :]
            elif hi > lo and targets.below:
                rows = torch.arange(lo, hi, device=g.device)
                g[rows, targets.pos[lo:hi]] += targets.vec[lo:hi]

        inject(L)
        for j in range(min(top, L - 1), -1, -1):
            a = reach[j + 1]                                                # the prefix reading after layer j
            if j < top:
                gw = rmap.write_grad(j, g[:a])                             # grad at layer j's write site
                if stacked is not None:
                    stacked[:a, :, j] = gw
                    stacked[a:, :, j] = 0
                self._read_layer(j, gw, edges, bias)
                if rmap.W_skip is not None:
                    scaled = gw * rmap.mlp_scale[j, :n, None]
                    g[:a].view(a * n, D).addmm_(scaled.view(a * n, D), rmap.W_skip[j])
            inject(j)
            a = reach[j]
            bias[:a] += g[:a].view(a, n * D) @ rmap.attn_const[j, :n].reshape(n * D)
            rmap.attn_back_(j, g[:a])
            inject_below_attention(j)
        edges[:, src.tok_slot0:src.tok_slot0 + n] = (g * src.embed[:n]).sum(-1)
        if stacked is not None:
            self._read_stacked(stacked, edges, n, top)
        return edges, bias

    def _read_layer(self, j: int, gw: Tensor, edges: Tensor, bias: Tensor) -> None:
        """Read off layer ``j``'s MLP slot: its per-layer features, its errors and its constant,
        from the grads at its write site ``gw [a, n, D]``, in one batched product over positions."""
        src = self.src
        a, n, _ = gw.shape
        f = src.f_max[j]
        out = torch.bmm(gw.transpose(0, 1), src.table[j][:n])             # [n, a, f + 2]
        if f:
            edges[:a, src.slot0[j]:src.slot0[j] + n * f] = out[:, :, :f].transpose(0, 1).reshape(a, n * f)
        e0 = src.err_slot0 + j * src.table[j].shape[0]
        edges[:a, e0:e0 + n] = out[:, :, f].T
        bias[:a] += out[:, :, f + 1].sum(0)

    def _read_stacked(self, stacked: Tensor, edges: Tensor, n: int, top: int) -> None:
        """Edges of cross-layer features: each sums its writes to every layer up to ``top``, as one
        product over (layer, d) per block of features read at one (layer, position)."""
        src = self.src
        B, D = stacked.shape[0], stacked.shape[-1]
        for s in range(top):
            dec, starts, c0 = src.dec[s], src.starts[s], src.col0[s]
            k = top - s
            for p in range(n):
                lo, hi = starts[p], starts[p + 1]
                if hi > lo:
                    grads = stacked[:, p, s:top].reshape(B, k * D)
                    edges[:, c0 + lo:c0 + hi] = grads @ dec[lo:hi, :k].reshape(hi - lo, k * D).T

