"""Influence, pruning, and the replacement and completeness scores of an attribution graph.

Definitions follow circuit-tracer (``circuit_tracer/graph.py``) so numbers compare:

- ``normalized(A)``: ``|A|`` with each row divided by its sum, so a target's inputs are fractions.
- ``influence(A, w)``: how much each node feeds the logits through every path,
  ``w Â + w Â² + …`` (= ``w ((I − Â)⁻¹ − I)``), found by iterating until the DAG runs out of paths.
- ``prune``: keep the nodes holding ``node_threshold`` of the total influence (tokens and logits
  always), then the edges holding ``edge_threshold`` of the edge influence, then drop features
  and errors left without outgoing edges and features left without incoming ones.
- replacement score: the share of token and error influence that is token influence.
- completeness score: each node's non-error share of inputs, weighted by its influence plus its
  logit weight.
- ``error_share_by_layer``: the replacement score's loss, split by the error nodes' layers.

Everything here takes plain scipy/numpy objects or an ``AttributionGraph``; nothing imports ``circuits``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph


def normalized(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """``|A|`` row-normalised ``[n, n]`` (float64); rows without inputs stay zero."""
    a = sp.csr_matrix(adjacency)
    data = np.abs(a.data, dtype=np.float64)
    data *= np.repeat(1.0 / row_abs_sums(a), np.diff(a.indptr))
    return sp.csr_matrix((data, a.indices, a.indptr), shape=a.shape)


def row_abs_sums(adjacency: sp.spmatrix, floor: float = 1e-10) -> np.ndarray:
    """``[n]`` sum of each row's absolute values, at least ``floor`` (so empty rows divide to zero)."""
    a = sp.csr_matrix(adjacency)
    lengths = np.diff(a.indptr)
    sums = np.zeros(a.shape[0])
    filled = lengths > 0
    if filled.any():
        sums[filled] = np.add.reduceat(np.abs(a.data), a.indptr[:-1][filled], dtype=np.float64)
    return np.maximum(sums, floor)


def influence(adjacency: sp.spmatrix, logit_weights: np.ndarray, levels: np.ndarray | None = None,
              max_iter: int = 1000) -> np.ndarray:
    """``w Â + w Â² + …`` ``[n]`` where ``Â = normalized(adjacency)`` and ``w [n]`` are logit weights.

    (Passing an already normalised matrix is fine: normalising it again changes nothing.)
    With ``levels [n]`` such that every edge runs from a lower level to a higher one (node
    layers do: tokens -1, features and errors their layer, logits n_layers), one sweep from the
    top level down finds it, ``x[s] = sum_t (w[t] + x[t]) Â[t, s]`` over targets t above s,
    reading ``adjacency`` in place. Otherwise, or if an edge breaks the levels, it iterates;
    that raises if paths longer than ``max_iter`` remain, which only a cyclic graph has.
    """
    a = sp.csr_matrix(adjacency)
    w = np.asarray(logit_weights, dtype=np.float64)
    if levels is not None:
        swept = _sweep(a, w, np.asarray(levels))
        if swept is not None:
            return swept[0]
    back = normalized(a).T  # back @ x is x @ Â
    current = back @ w
    total = current.copy()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = back @ current
        total += current
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the graph has a cycle. "
                       "Fix: attribution graphs are acyclic; check how the adjacency was built.")


def _sweep(a: sp.csr_matrix, w: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Influence and the rows' absolute sums (floored like ``row_abs_sums``) in one top-down pass
    over the rows; None if some edge does not go up a level."""
    n = a.shape[0]
    x = np.zeros(n)
    row_sums = np.full(n, 1e-10)
    lengths = np.diff(a.indptr)
    order = np.argsort(-levels, kind="stable")
    cuts = np.flatnonzero(np.diff(levels[order])) + 1
    for group in np.split(order, cuts):
        group = np.sort(group[lengths[group] > 0])
        if len(group) == 0:
            continue
        level = levels[group[0]]
        if group[-1] - group[0] + 1 == len(group):  # a contiguous block of rows: read the arrays in place
            lo, hi = a.indptr[group[0]], a.indptr[group[-1] + 1]
            cols, vals = a.indices[lo:hi], a.data[lo:hi]
        else:
            block = a[group]
            cols, vals = block.indices, block.data
        if len(cols) and levels[cols].max() >= level:
            return None
        size = np.abs(vals).astype(np.float64)
        starts = np.concatenate([[0], np.cumsum(lengths[group])[:-1]])
        sums = np.maximum(np.add.reduceat(size, starts), 1e-10)           # the rows' normalisers
        row_sums[group] = sums
        y = (w[group] + x[group]) / sums
        x += np.bincount(cols, weights=size * np.repeat(y, lengths[group]), minlength=n)
    return x, row_sums


def node_influence(graph: AttributionGraph) -> np.ndarray:
    """Each node's influence on the logits ``[n_nodes]``."""
    return influence(graph.adjacency, graph.logit_weights, graph.nodes["layer"])


def edge_influence(adjacency: sp.spmatrix, logit_weights: np.ndarray, levels: np.ndarray | None = None
                   ) -> sp.csr_matrix:
    """Each edge's share of influence: ``Â[t, s] * (influence[t] + w[t])``, same sparsity as ``adjacency``."""
    a = normalized(adjacency)
    reach = influence(a, logit_weights, levels) + logit_weights
    a.data *= np.repeat(reach, np.diff(a.indptr))
    return a


def find_threshold(scores: np.ndarray, fraction: float) -> float:
    """The smallest score among the top scores that together hold ``fraction`` of the total."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    if s.size == 0 or s[0] <= 0:
        return 0.0
    cumulative = np.cumsum(s) / s.sum()
    i = int(np.searchsorted(cumulative, fraction))
    # A zero cut-off would keep every (non-)edge; stop at the last positive score.
    i = min(i, max(int(np.count_nonzero(s > 0)) - 1, 0))
    return float(s[i])


class PruneResult(NamedTuple):
    node_mask: np.ndarray
    """``[n_nodes]`` bool: nodes kept."""
    edge_mask: sp.csr_matrix
    """``[n_nodes, n_nodes]`` bool, sparse: edges kept."""
    cumulative_scores: np.ndarray
    """``[n_nodes]``: the share of total influence held by nodes at least as influential as each one."""
    graph: AttributionGraph
    """The pruned graph: kept nodes (in their order) and kept edges, with the same metadata."""


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Influence pruning (circuit-tracer's ``prune_graph``) over a sparse adjacency."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    n = graph.n_nodes
    w = graph.logit_weights
    always = np.zeros(n, dtype=bool)
    always[graph.span("token")] = always[graph.span("logit")] = True
    levels = graph.nodes["layer"]
    infl = influence(graph.adjacency, w, levels)
    node_mask = (infl >= find_threshold(infl, node_threshold)) | always

    scores = edge_influence(restrict(graph.adjacency, node_mask), w, levels)
    cut = find_threshold(scores.data, edge_threshold)
    kept = (scores.data >= cut) & (scores.data > 0)
    edge_mask = sp.csr_matrix((kept, scores.indices, scores.indptr), shape=scores.shape)
    edge_mask.eliminate_zeros()

    node_mask, edge_mask = drop_stranded(graph, node_mask, edge_mask)

    order = np.argsort(-infl, kind="stable")
    cumulative = np.empty(n)
    total = infl.sum()
    cumulative[order] = np.cumsum(infl[order]) / (total if total > 0 else 1.0)
    return PruneResult(node_mask, edge_mask, cumulative, subgraph(graph, node_mask, edge_mask))


def drop_stranded(graph: AttributionGraph, node_mask: np.ndarray, edge_mask: sp.csr_matrix
                  ) -> tuple[np.ndarray, sp.csr_matrix]:
    """Drop features and errors that feed nothing kept, and features fed by nothing kept, until
    stable (each round can strand more; it settles within n_layers + 1 rounds).

    ``node_mask`` ``[n_nodes]`` bool, ``edge_mask`` ``[n_nodes(target), n_nodes(source)]``; returns both, pruned."""
    kind = graph.nodes["kind"]
    is_feature, needs_out = kind == "feature", np.isin(kind, ("feature", "error"))
    while True:
        has_out = np.asarray(edge_mask.sum(axis=0)).ravel() > 0
        has_in = np.asarray(edge_mask.sum(axis=1)).ravel() > 0
        new_mask = node_mask & ~(needs_out & ~has_out) & ~(is_feature & ~has_in)
        if np.array_equal(new_mask, node_mask):
            return node_mask, edge_mask
        node_mask = new_mask
        edge_mask = restrict(edge_mask, node_mask)


def restrict(matrix: sp.spmatrix, node_mask: np.ndarray) -> sp.csr_matrix:
    """``matrix`` with every entry whose row or column is outside ``node_mask`` removed."""
    m = sp.csr_matrix(matrix)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    keep = node_mask[rows] & node_mask[m.indices]
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)


def subgraph(graph: AttributionGraph, node_mask: np.ndarray, edge_mask: sp.spmatrix | None = None) -> AttributionGraph:
    """The graph restricted to ``node_mask`` nodes and (optionally) ``edge_mask`` edges."""
    adjacency = graph.adjacency
    if edge_mask is not None:
        adjacency = adjacency.multiply(sp.csr_matrix(edge_mask, dtype=bool)).tocsr()
    idx = np.flatnonzero(node_mask)
    adjacency = sp.csr_matrix(adjacency[idx][:, idx])
    nodes = {k: v[idx] for k, v in graph.nodes.items()}
    metadata = dict(graph.metadata, pruned_from=graph.n_nodes)
    # The graph's own class: this module sits below graphs.graph and never imports it at run time.
    return type(graph)(graph.prompt, graph.tokens, list(graph.token_texts), nodes, adjacency, metadata)


def _influence_and_sums(graph: AttributionGraph) -> tuple[np.ndarray, np.ndarray]:
    """Each node's influence ``[n]`` and its row's absolute sum ``[n]``, in one sweep where the levels allow."""
    a = sp.csr_matrix(graph.adjacency)
    swept = _sweep(a, graph.logit_weights, graph.nodes["layer"])
    return swept if swept is not None else (influence(a, graph.logit_weights), row_abs_sums(a))


def error_share_by_layer(graph: AttributionGraph) -> np.ndarray:
    """``[n_layers]``: each layer's error nodes' share of the influence of tokens and errors on the
    logits. The shares sum to ``1 − replacement_score``: they say which layers' transcoders the
    score is lost to."""
    infl, _ = _influence_and_sums(graph)
    errors, tokens = graph.span("error"), graph.span("token")
    total = infl[tokens].sum() + infl[errors].sum()
    n_layers = int(graph.nodes["layer"].max())  # the logits sit one level above the last layer
    per_layer = np.bincount(graph.nodes["layer"][errors], weights=infl[errors], minlength=n_layers)
    return per_layer / total if total > 0 else np.full(n_layers, np.nan)


def graph_scores(graph: AttributionGraph) -> tuple[float, float]:
    """``(replacement_score, completeness_score)`` as circuit-tracer's ``compute_graph_scores`` defines them."""
    w = graph.logit_weights
    a = sp.csr_matrix(graph.adjacency)
    infl, sums = _influence_and_sums(graph)
    errors, tokens = graph.span("error"), graph.span("token")
    token_infl, error_infl = infl[tokens].sum(), infl[errors].sum()
    replacement = token_infl / (token_infl + error_infl) if token_infl + error_infl > 0 else float("nan")
    error_share = row_abs_sums(a[:, errors], floor=0.0) / sums
    reach = infl + w
    completeness = float(((1.0 - error_share) * reach).sum() / reach.sum()) if reach.sum() > 0 else float("nan")
    return float(replacement), completeness


def replacement_score(graph: AttributionGraph) -> float:
    """Share of the influence of tokens and errors on the logits that tokens carry (1 = no error paths)."""
    return graph_scores(graph)[0]


def completeness_score(graph: AttributionGraph) -> float:
    """Influence-weighted share of node inputs that come from features and tokens rather than errors."""
    return graph_scores(graph)[1]
