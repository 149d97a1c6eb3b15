"""The strongest paths from the prompt's tokens to a logit.

A path's strength is the product of its edges' normalised weights (each edge's share of its
target's input, ``|A[t, s]| / Σ|A[t, :]|``), so it reads as "the fraction of the logit's input
that flows along this path". Its sign is the product of the edges' signs: a path through one
inhibitory edge pushes the logit down.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import NamedTuple

import networkx as nx


class TokenPath(NamedTuple):
    strength: float
    """Product of the edges' shares of their targets' input, in (0, 1]."""
    sign: int
    """+1 if the path excites the end node, -1 if it inhibits it."""
    nodes: tuple[Hashable, ...]
    """From a token node to the end node."""


def strongest_paths(g: nx.DiGraph, target: Hashable, *, k: int = 5, share: str = "share",
                    direct: bool = True) -> list[TokenPath]:
    """The ``k`` strongest paths from any ``kind == "token"`` node to ``target`` in the DAG ``g``.

    Edges are weighed by their ``share`` attribute (as ``graphs.draw.drawable`` sets it) or, when
    absent, by ``|weight|`` over the sum of ``|weight|`` into the same target within ``g``.
    ``direct=False`` leaves out one-edge paths (a token straight to the target), which otherwise
    tend to lead the list: every longer path multiplies several shares below one.
    """
    if target not in g:
        raise KeyError(f"{target!r} is not a node of the graph. Fix: pass a node id, e.g. a logit's.")
    shares = _shares(g, share)
    # best[v]: the k strongest (strength, sign, path from v to target), found from the target backwards.
    best: dict[Hashable, list[tuple[float, int, tuple[Hashable, ...]]]] = {target: [(1.0, 1, (target,))]}
    ancestors = nx.ancestors(g, target) | {target}
    for v in reversed(list(nx.topological_sort(g.subgraph(ancestors)))):
        if v == target:
            continue
        steps = []  # (share, sign, u) of each successor with paths to the target
        for u in g.successors(v):
            if u not in best or (not direct and u == target and g.nodes[v].get("kind") == "token"):
                continue
            s, sign = shares[(v, u)]
            steps.append((s, sign, u))
        # A successor whose strongest path, times its share, is under the k-th largest such value
        # cannot place a path in the top k (the k successors above it each give one at least that
        # strong), so its paths are never built: on a graph of 547k edges that was most of the work.
        tops = [s * best[u][0][0] for s, _, u in steps]
        floor = heapq.nlargest(k, tops)[-1] if len(tops) > k else -1.0
        candidates = [(s * strength, sign * sgn, (v, *path))
                      for (s, sign, u), top in zip(steps, tops) if top >= floor
                      for strength, sgn, path in best[u]]
        if candidates:
            best[v] = heapq.nlargest(k, candidates, key=lambda c: c[0])
    found = [c for v, cs in best.items() if g.nodes[v].get("kind") == "token" for c in cs]
    return [TokenPath(s, sign, path) for s, sign, path in heapq.nlargest(k, found, key=lambda c: c[0])]


def _shares(g: nx.DiGraph, share: str) -> dict[tuple[Hashable, Hashable], tuple[float, int]]:
    totals: dict[Hashable, float] = {}
    for _, t, w in g.edges(data="weight", default=0.0):
        totals[t] = totals.get(t, 0.0) + abs(float(w))
    out = {}
    for s, t, a in g.edges(data=True):
        w = float(a.get("weight") or 0.0)
        value = a.get(share)
        value = float(value) if value is not None else abs(w) / (totals[t] or 1.0)
        out[(s, t)] = (value, 1 if w >= 0 else -1)
    return out
