"""Edge-set helpers shared by the discovery methods."""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.patching.graph import HeadGraph


def reaches_logits(graph: HeadGraph, kept: Tensor) -> Tensor:
    """``[n_src]`` bool: sources with a path of kept edges to the logits."""
    alive = torch.zeros(graph.n_src, dtype=torch.bool)
    owner = torch.tensor(graph.dst_node)
    dst_alive = torch.zeros(graph.n_dst, dtype=torch.bool)
    dst_alive[graph.logits_dst] = True
    for s in range(graph.n_src - 1, -1, -1):
        # Sources come in topological order, so every destination a source feeds is decided already.
        alive[s] = bool((kept[s] & dst_alive).any())
        if alive[s]:
            dst_alive |= owner == s
    return alive


def prune_dead(graph: HeadGraph, kept: Tensor) -> Tensor:
    """``kept`` without the edges into nodes that cannot reach the logits.

    Exact: such a node's output reaches the metric only through removed edges, which carry the
    ablated value anyway, so dropping its inputs changes no metric.
    """
    alive = reaches_logits(graph, kept)
    owner = torch.tensor(graph.dst_node)
    dst_alive = (owner < 0) | alive[owner.clamp(min=0)]
    return kept & dst_alive[None, :]


def top_edges(graph: HeadGraph, scores: Tensor, n: int) -> Tensor:
    """The ``n`` valid edges with the largest |score| (ties broken by index, so deterministic)."""
    flat = torch.where(graph.valid, scores.abs(), torch.tensor(-1.0)).flatten()
    n = min(n, graph.n_edges)
    kept = torch.zeros(flat.numel(), dtype=torch.bool)
    if n > 0:
        order = torch.argsort(flat, descending=True, stable=True)
        kept[order[:n]] = True
    return kept.reshape(graph.n_src, graph.n_dst)
