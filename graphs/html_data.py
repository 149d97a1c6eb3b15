"""The data ``graph.html`` carries: the graph in compact columns, labels, contexts and edge extras.

Built from the viewer JSON (``graphs.viewer.to_viewer_json``), so the page shows exactly the nodes
and links a viewer file lists, with whatever those links carry beyond a weight (a verified
edge's ``measured_effect`` and ``effect_flag``, head loadings ``heads``). Columns instead of
one object per node and edge keep a 100,000-edge page small and quick to parse.

The page scores the subgraph a user pins (``pinned_scores`` is the definition, and the page's
JavaScript computes the same): the pinned features stand, every other feature counts as an
error, and the replacement and completeness scores are those of ``graphs.metrics.graph_scores``
on that graph. With every feature pinned they are the graph's own scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from graphs.metrics import influence, node_influence, row_abs_sums
from graphs.node_labels import CONTEXTS_KEY, node_labels
from graphs.viewer import to_viewer_json, used_nodes

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph

KIND_CODES = {"cross layer transcoder": "f", "mlp reconstruction error": "e", "embedding": "t", "logit": "l"}
_LINK_KEYS = ("source", "target", "weight")


def page_data(graph: AttributionGraph, *, cumulative: np.ndarray | None = None, node_threshold: float | None = None,
              scan: str | None = None, title: str | None = None) -> dict[str, Any]:
    """Everything ``graph.html`` shows, as plain JSON-able columns (``[n]`` lists per node, ``[m]`` per edge).

    ``cumulative``, ``node_threshold`` and ``scan`` as for ``to_viewer_json``: the slider runs from 0 to
    ``node_threshold`` over the nodes' cumulative influence.
    """
    doc = to_viewer_json(graph, cumulative=cumulative, node_threshold=node_threshold, scan=scan)
    shown = np.flatnonzero(used_nodes(graph))
    index = {node["node_id"]: j for j, node in enumerate(doc["nodes"])}
    texts = node_labels(graph)
    infl = node_influence(graph)
    n = graph.nodes
    nodes: dict[str, list[Any]] = {
        "id": [graph.node_ids[i] for i in shown],
        "kind": [KIND_CODES.get(node["feature_type"], "f") for node in doc["nodes"]],
        "layer": [int(n["layer"][i]) for i in shown],
        "pos": [int(n["position"][i]) for i in shown],
        "feature": [int(n["feature"][i]) for i in shown],
        "label": [texts[i] for i in shown],
        "act": [node["activation"] for node in doc["nodes"]],
        "cum": [node["influence"] for node in doc["nodes"]],
        "infl": [_finite(infl[i]) for i in shown],
        "prob": [_finite(n["prob"][i]) for i in shown],
    }
    sources, targets, weights, extra = [], [], [], {}
    for k, link in enumerate(doc["links"]):
        sources.append(index[link["source"]])
        targets.append(index[link["target"]])
        # Six significant digits: the page shows three, and its scores move in the sixth; a third of the bytes.
        weights.append(None if link["weight"] is None else float(f"{link['weight']:.6g}"))
        more = {key: value for key, value in link.items() if key not in _LINK_KEYS}
        if more:
            extra[str(k)] = more
    wanted = {f"{layer}.{feat}" for layer, feat, kind in zip(nodes["layer"], nodes["feature"], nodes["kind"])
              if kind == "f"}
    contexts = {key: value for key, value in (graph.metadata.get(CONTEXTS_KEY) or {}).items() if key in wanted}
    replacement, completeness = graph.scores
    meta = doc["metadata"]
    return {
        "title": title or graph.prompt, "prompt": graph.prompt, "tokens": list(graph.token_texts),
        "n_layers": graph.n_layers, "scan": meta["scan"], "node_threshold": meta["node_threshold"],
        "nodes": nodes, "edges": {"s": sources, "t": targets, "w": weights, "extra": extra},
        "contexts": contexts,
        "scores": {"replacement": _finite(replacement), "completeness": _finite(completeness)},
    }


def pinned_scores(graph: AttributionGraph, pinned: np.ndarray) -> tuple[float, float]:
    """``(replacement, completeness)`` of the subgraph of the ``pinned`` ``[n_nodes]`` (bool) features.

    Every feature not pinned becomes an error: its own inputs no longer count (its row is dropped)
    and its influence counts as error influence; then the scores are ``graph_scores``'s. Nodes of
    other kinds are unaffected by ``pinned``.
    """
    kind = graph.nodes["kind"]
    as_error = (kind == "error") | ((kind == "feature") & ~np.asarray(pinned, dtype=bool))
    keep_row = ~((kind == "feature") & as_error)
    rows = sp.csr_matrix(sp.diags(keep_row.astype(np.float64)) @ sp.csr_matrix(graph.adjacency, dtype=np.float64))
    rows.eliminate_zeros()
    w = graph.logit_weights
    # A kept row is whole (inputs from new errors included), so influence normalises it as graph_scores does.
    infl = influence(rows, w, graph.nodes["layer"])
    sums = row_abs_sums(rows)
    token_infl, error_infl = infl[kind == "token"].sum(), infl[as_error].sum()
    replacement = token_infl / (token_infl + error_infl) if token_infl + error_infl > 0 else float("nan")
    error_share = row_abs_sums(rows[:, np.flatnonzero(as_error)], floor=0.0) / sums
    reach = infl + w
    completeness = float(((1.0 - error_share) * reach).sum() / reach.sum()) if reach.sum() > 0 else float("nan")
    return float(replacement), completeness


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
