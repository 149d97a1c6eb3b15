"""Measured edge effects: what patching an edge out actually did, beside its attribution weight.

The verify step patches kept edges and records each one's effect on the metric. The effects live
in ``graph.metadata["measured_effect"]`` as ``{target_id: {source_id: effect}}``, keyed by node id
rather than index, so they survive pruning (``subgraph`` copies metadata and ids are stable) and
every file format (native, GraphML, JSON) that already carries the metadata. Absent by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph

EFFECT_KEY = "measured_effect"
FLAGS_KEY = "effect_flags"

EdgeKey = tuple[str, str]  # (target id, source id), the adjacency's (row, column) order


def set_measured_effect(graph: AttributionGraph, effect: sp.spmatrix | Mapping[EdgeKey, float]) -> None:
    """Record measured effects on ``graph``.

    ``effect``: a sparse ``[n_nodes, n_nodes]`` matrix laid out like ``graph.adjacency``
    (rows = targets), or ``{(target_id, source_id): effect}``. Stored entries only; a zero that
    is stored counts (an edge measured to do nothing is worth knowing).
    """
    ids = graph.node_ids
    if isinstance(effect, Mapping):
        known = set(ids)
        pairs = [(str(t), str(s), float(v)) for (t, s), v in effect.items()]
        unknown = [(t, s) for t, s, _ in pairs if t not in known or s not in known]
        if unknown:
            raise KeyError(f"measured effects name nodes not in the graph, e.g. {unknown[0]}. "
                           "Fix: key effects by graph.node_ids (target, source).")
    else:
        coo = sp.coo_matrix(effect)
        if coo.shape != graph.adjacency.shape:
            raise ValueError(f"measured effect is {coo.shape} but the graph has {graph.n_nodes} nodes. "
                             "Fix: lay it out like graph.adjacency, [n_nodes, n_nodes] with rows = targets.")
        pairs = [(ids[t], ids[s], float(v)) for t, s, v in zip(coo.row, coo.col, coo.data)]
    nested: dict[str, dict[str, float]] = {}
    for t, s, v in pairs:
        nested.setdefault(t, {})[s] = v
    graph.metadata[EFFECT_KEY] = nested


def measured_effects(graph: AttributionGraph) -> dict[EdgeKey, float]:
    """``{(target_id, source_id): effect}`` for the edges that were measured (empty if none)."""
    nested = graph.metadata.get(EFFECT_KEY) or {}
    return {(t, s): float(v) for t, row in nested.items() for s, v in row.items()}


def measured_effect_matrix(graph: AttributionGraph) -> sp.csr_matrix | None:
    """The measured effects as a sparse matrix laid out like ``graph.adjacency``; None if none.

    Effects on nodes that are no longer in the graph (pruned away) are left out.
    """
    effects = measured_effects(graph)
    if not effects:
        return None
    index = {node_id: i for i, node_id in enumerate(graph.node_ids)}
    kept = [(index[t], index[s], v) for (t, s), v in effects.items() if t in index and s in index]
    rows, cols, vals = (np.array(x) for x in zip(*kept)) if kept else (np.zeros(0, int),) * 2 + (np.zeros(0),)
    return sp.csr_matrix((vals, (rows, cols)), shape=graph.adjacency.shape)


def set_effect_flags(graph: AttributionGraph, flags: Mapping[EdgeKey, str]) -> None:
    """Record which verified edges disagree with their attribution weight: ``{(target_id, source_id):
    "sign" | "size"}`` (flagged edges only), in ``graph.metadata["effect_flags"]`` like the effects."""
    nested: dict[str, dict[str, str]] = {}
    for (t, s), flag in flags.items():
        nested.setdefault(str(t), {})[str(s)] = str(flag)
    graph.metadata[FLAGS_KEY] = nested


def effect_flags(graph: AttributionGraph) -> dict[EdgeKey, str]:
    """``{(target_id, source_id): "sign" | "size"}`` for the flagged edges (empty if none)."""
    nested = graph.metadata.get(FLAGS_KEY) or {}
    return {(t, s): str(f) for t, row in nested.items() for s, f in row.items()}
