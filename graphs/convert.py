"""``AttributionGraph`` ⇄ ``networkx.DiGraph``, losing nothing.

Nodes are keyed by ``graph.node_ids`` in node order and carry every node-table column their kind
uses (``kind``, ``layer``, ``position``, ``feature``, ``activation``, ``token_id``, ``token``,
``prob``, ``pre_activation``, ``bias``, ``excluded_input``; see ``graphs.nodes.NODE_COLUMNS``),
plus two derived ones: ``influence`` (on the logits, through every path) and ``label``.
Edges run source → target with ``weight`` (the direct effect) and, where the edge was verified,
``measured_effect``, and ``effect_flag`` (``"sign"`` or ``"size"``) where that effect disagrees with the
weight (``circuits.attribution.verify``), and ``heads`` where the edge has head loadings (``graphs.heads``:
``"L20.H3:0.41;...;other:0.02;direct:0.0"``, its strongest heads, the rest summed, and the part crossing no
attention, adding up to the weight). The graph's attributes hold the prompt, its tokens and the metadata.

``build_from_networkx`` reads that back (``graphs.from_networkx``, ``AttributionGraph.from_networkx``);
derived attributes are recomputed, not read. This module sits below ``graphs.graph`` and never imports it
at run time: it builds a graph of the class it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import scipy.sparse as sp

from graphs.effects import FLAGS_KEY, effect_flags, measured_effects, set_effect_flags, set_measured_effect
from graphs.heads import HEADS_KEY, format_heads, parse_heads, set_stored_loadings, stored_loadings
from graphs.metrics import node_influence
from graphs.node_labels import node_labels
from graphs.nodes import NODE_COLUMNS, empty_nodes

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph

FORMAT = "circuit-engine attribution graph"
DERIVED_NODE_ATTRS = ("influence", "label")


def to_networkx(graph: AttributionGraph, *, influence: np.ndarray | None = None) -> nx.DiGraph:
    """The graph as a ``networkx.DiGraph`` (see the module docstring for its attributes).

    ``influence``: ``[n_nodes]`` to use instead of computing each node's influence on the logits.
    """
    infl = node_influence(graph) if influence is None else np.asarray(influence, dtype=np.float64)
    if infl.shape != (graph.n_nodes,):
        raise ValueError(f"influence has shape {infl.shape}, the graph {graph.n_nodes} nodes. Fix: pass [n_nodes].")
    labels = node_labels(graph)
    g = nx.DiGraph(format=FORMAT, prompt=graph.prompt, tokens=[int(t) for t in graph.tokens],
                   token_texts=list(graph.token_texts), metadata=graph.metadata,
                   weight_dtype=str(graph.adjacency.dtype))
    ids = graph.node_ids
    for i, node_id in enumerate(ids):
        attrs = graph.node(i)
        del attrs["id"]
        g.add_node(node_id, **attrs, influence=float(infl[i]), label=labels[i])
    effects, flags = measured_effects(graph), effect_flags(graph)
    heads = stored_loadings(graph)
    targets, sources, weights = graph.edges()
    for t, s, w in zip(targets.tolist(), sources.tolist(), weights.tolist()):
        attrs: dict[str, Any] = {"weight": w}
        effect = effects.get((ids[t], ids[s]))
        if effect is not None:
            attrs["measured_effect"] = effect
        flag = flags.get((ids[t], ids[s]))
        if flag is not None:
            attrs["effect_flag"] = flag
        loading = heads.get((ids[t], ids[s]))
        if loading is not None:
            attrs["heads"] = format_heads(loading)
        g.add_edge(ids[s], ids[t], **attrs)
    return g


def build_from_networkx(cls: type[AttributionGraph], g: nx.DiGraph) -> AttributionGraph:
    """The ``cls`` (an ``AttributionGraph``) that ``to_networkx`` (or a GraphML file of it) describes."""
    if g.graph.get("format") != FORMAT:
        raise ValueError("this networkx graph was not made by to_networkx (its 'format' attribute is "
                         f"{g.graph.get('format')!r}). Fix: convert an AttributionGraph with graphs.to_networkx, "
                         "or build the AttributionGraph directly.")
    order = list(g.nodes)
    nodes = empty_nodes(len(order))
    for name, (dtype, fill) in NODE_COLUMNS.items():
        values = [g.nodes[n].get(name, fill) for n in order]
        # Strings are rebuilt from a list so a long token is never cut to the column's default width.
        nodes[name] = np.array(values, dtype=str) if np.dtype(dtype).kind == "U" else np.array(values, dtype=dtype)
    index = {n: i for i, n in enumerate(order)}
    dtype = np.dtype(g.graph.get("weight_dtype", "float32"))
    edges = list(g.edges(data="weight"))
    rows = np.array([index[t] for _, t, _ in edges], dtype=np.int64)
    cols = np.array([index[s] for s, _, _ in edges], dtype=np.int64)
    vals = np.array([w for _, _, w in edges], dtype=dtype)
    adjacency = sp.csr_matrix((vals, (rows, cols)), shape=(len(order), len(order)), dtype=dtype)
    graph = cls(prompt=g.graph["prompt"], tokens=np.array(g.graph["tokens"], dtype=np.int64),
                token_texts=list(g.graph["token_texts"]), nodes=nodes, adjacency=adjacency,
                metadata=dict(g.graph.get("metadata") or {}))
    if list(graph.node_ids) != order:
        raise ValueError("the node keys do not match the ids their attributes give (e.g. a feature's layer was "
                         "edited). Fix: keep node keys as AttributionGraph.node_ids.")
    # The edges are the truth for measured effects (the metadata copy may be stale after edits).
    effects = {(t, s): e for s, t, e in g.edges(data="measured_effect") if e is not None}
    if effects:
        set_measured_effect(graph, effects)
    flags = {(t, s): f for s, t, f in g.edges(data="effect_flag") if f is not None}
    if flags or graph.metadata.get(FLAGS_KEY):
        set_effect_flags(graph, flags)
    # The metadata holds every loaded edge's heads (pruned-away edges too, as for measured effects); a graph
    # built by hand without it takes them from its edges.
    loadings = {(t, s): parse_heads(h) for s, t, h in g.edges(data="heads") if h is not None}
    if loadings and not graph.metadata.get(HEADS_KEY):
        set_stored_loadings(graph, loadings)
    return graph
