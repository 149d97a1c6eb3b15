"""Head loadings: every edge split over the attention heads it passes through.

An edge A[t, s] sums the source's effect over every path of the frozen linear model: the residual
stream, the transcoder skip, and attention OV circuits, in any number of hops. Its head loadings
sort those paths by the **last** attention head they cross before reaching the target, the head
that moves the information into the target's position:

    A[t, s] = direct[t, s] + sum over layers l and heads h of  loading[t, s, (l, h)]

``direct`` holds the paths that cross no attention at all (so it is zero unless the source sits at
the target's position). Each term is exact, and their sum is the edge (tests/test_head_loadings.py).

How: going down from the target through non-attention paths only (identity and skip) gives the
target's grad ``c_l`` at layer l's attention output, at the target's position. Head h of layer l
pulls it back through its OV to ``u = c_l W_O,h W_V,h`` and spreads it over key positions with its
frozen mix; from there the full map carries it down to the sources. Each (layer, head) is one more
row of the ``Attributor`` (``Targets.head``), walking only the layers below it: a target costs about
``n_layers * n_heads / 2`` full rows. ``direct`` is one row in the map with every pattern zeroed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from circuits.attribution.attribute import Attributor, FeatureTargets, Sources, Targets
from circuits.attribution.residual_map import ResidualMap

HeadLoadingMode = Literal["auto", "targets", "all", "none"]


@dataclass
class TargetLoadings:
    """One target's head loadings over its nonzero edges (node ids of the trace's full numbering)."""

    row: int
    """The target's node id."""
    cols: np.ndarray
    """``[n_e]`` the sources' node ids."""
    values: np.ndarray
    """``[n_e, n_layers * n_heads]`` loading per (layer, head), head-minor (``l * n_heads + h``)."""
    direct: np.ndarray
    """``[n_e]`` the part crossing no attention."""
    edge: np.ndarray
    """``[n_e]`` the edge itself (the row ``trace`` computed), for the sum rule."""


def head_channels(rmap: ResidualMap, target: Targets) -> Targets:
    """The ``n_layers' * n_heads`` head channels of one target (``len(target) == 1``), highest layer first."""
    L, H, Hkv, dh = rmap.n_layers, rmap.n_heads, rmap.n_kv_heads, rmap.d_head
    G = H // Hkv
    lt, q = int(target.layer[0]), int(target.pos[0])
    c = target.vec[0]                                                   # [D] grad where the target reads
    us, layers = [], []
    # A target reading a layer's MLP input sits above that layer's attention; logits and targets reading
    # below attention (queries and keys) sit above the previous layer's MLP only.
    top = lt - 1 if target.below_attention or lt == L else lt
    for l in range(top, -1, -1):
        if l < lt:  # the MLP slot of layer l sits between its attention and the target: its skip
            if rmap.W_skip is not None:
                gw = c if rmap.write_mul is None else c * rmap.write_mul[l, q]
                c = c + (gw * rmap.mlp_scale[l, q]) @ rmap.W_skip[l]
        gz = (c @ rmap.W_O[l]).view(H, dh)                                # [H, dh] grad of each head's z
        wv = rmap.W_V[l].view(Hkv, dh, -1)                                # [Hkv, dh, D]
        us.append(torch.einsum("hd,hde->he", gz, wv.repeat_interleave(G, dim=0)))
        layers.append(l)
    if not us:
        empty = target.vec.new_zeros(0, target.vec.shape[1])
        idx = torch.zeros(0, dtype=torch.long, device=target.vec.device)
        return Targets(idx, idx, empty, empty[:, 0], idx)
    vec = torch.cat(us)                                                   # [n_l * H, D]
    dev = vec.device
    layer = torch.tensor(layers, device=dev).repeat_interleave(H)
    head = torch.arange(H, device=dev).repeat(len(layers))
    pos = torch.full_like(layer, q)
    return Targets(layer, pos, vec, vec.new_zeros(len(layer)), head)


def target_loadings(rmap: ResidualMap, sources: Sources, target: Targets, row: int,
                    batch_size: int) -> TargetLoadings:
    """Head loadings of every nonzero edge into one target, numbered as the trace numbers nodes before it
    renumbers them (``sources.col_of``)."""
    attributor = Attributor(rmap, sources)
    edge, _ = attributor.rows(target)                                    # [1, n_slots]
    col_of = sources.col_of.to(edge.device)
    slots = torch.nonzero((edge[0] != 0) & (col_of >= 0)).squeeze(1)
    L, H = rmap.n_layers, rmap.n_heads
    values = edge.new_zeros(len(slots), L * H)
    channels = head_channels(rmap, target)
    for start in range(0, len(channels), batch_size):
        batch = channels.take(torch.arange(start, min(start + batch_size, len(channels)), device=edge.device))
        rows, _ = attributor.rows(batch)                                   # [B, n_slots]
        values[:, batch.layer * H + batch.head] = rows[:, slots].T
    n = int(target.pos[0]) + 1
    no_attention = dataclasses.replace(rmap, mix=rmap.mix.new_zeros(rmap.mix.shape[:2] + (n, n)))
    direct, _ = Attributor(no_attention, sources).rows(target)
    return TargetLoadings(row, col_of[slots].cpu().numpy(), values.cpu().numpy(), direct[0, slots].cpu().numpy(),
                          edge[0, slots].cpu().numpy())


def loadings_for(rmap: ResidualMap, sources: Sources, targets: Targets | FeatureTargets, rows: np.ndarray,
                 batch_size: int) -> list[TargetLoadings]:
    """``target_loadings`` for each of ``targets`` (node ids ``rows [n]``)."""
    out = []
    for i in range(len(targets)):
        one = targets.take(torch.tensor([i], device=targets.layer.device)).resolve()
        out.append(target_loadings(rmap, sources, one, int(rows[i]), batch_size))
    return out
