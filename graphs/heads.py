"""Head loadings on a graph: which attention heads carry each edge.

``trace`` splits edges over the last attention head their paths cross (``circuits.attribution.heads``):
``weight = direct + sum over heads``. Two stores, one for files and one for analysis:

- ``graph.metadata["head_loadings"]``: per edge, its ``top`` strongest heads, ``other`` (the rest,
  summed) and ``direct``, keyed by node id as ``{target_id: {source_id: {"L20.H3": v, ..., "other": v,
  "direct": v}}}``. It adds up to the weight exactly and, being metadata, survives pruning and every
  format (native, GraphML, JSON); the networkx edge attribute ``heads`` and the viewer links' ``heads``
  field show the same numbers.
- ``graph.head_table`` (a ``HeadLoadingTable``): every head of every loaded edge, in memory and in
  ``.npz`` files only (for SmolLM2 a logit row holds ~5,000 edges × 270 heads).

Heads are named ``L{layer}.H{head}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph

HEADS_KEY = "head_loadings"
OTHER, DIRECT = "other", "direct"


def head_name(index: int, n_heads: int) -> str:
    """``L{layer}.H{head}`` for a flat head index ``layer * n_heads + head``."""
    return f"L{index // n_heads}.H{index % n_heads}"


def parse_head(name: str) -> tuple[int, int]:
    """``(layer, head)`` of ``"L20.H3"``."""
    layer, head = name.removeprefix("L").split(".H")
    return int(layer), int(head)


@dataclass
class HeadLoadingTable:
    """Every head's loading for a set of edges."""

    n_heads: int
    """Heads per layer."""
    targets: np.ndarray
    """``[n_edges]`` str: target node ids."""
    sources: np.ndarray
    """``[n_edges]`` str: source node ids."""
    values: np.ndarray
    """``[n_edges, n_layers * n_heads]`` loading per head (flat index ``layer * n_heads + head``)."""
    direct: np.ndarray
    """``[n_edges]`` the part of each edge that crosses no attention."""

    def row(self, target: str, source: str) -> int | None:
        hit = np.flatnonzero((self.targets == target) & (self.sources == source))
        return int(hit[0]) if len(hit) else None

    def arrays(self) -> dict[str, np.ndarray]:
        """For ``.npz`` files: ``heads.*`` arrays."""
        return {"heads.n_heads": np.array(self.n_heads), "heads.targets": self.targets.astype(str),
                "heads.sources": self.sources.astype(str), "heads.values": self.values, "heads.direct": self.direct}

    @classmethod
    def from_arrays(cls, z: Any) -> HeadLoadingTable | None:
        if "heads.values" not in z:
            return None
        return cls(int(z["heads.n_heads"]), z["heads.targets"], z["heads.sources"], z["heads.values"],
                   z["heads.direct"])


def set_head_loadings(graph: AttributionGraph, table: HeadLoadingTable, top: int = 3) -> None:
    """Record ``table`` on ``graph``: in full (``graph.head_table``) and its ``top`` heads per edge (metadata)."""
    nested: dict[str, dict[str, dict[str, float]]] = {}
    if len(table.values):
        order = np.argsort(-np.abs(table.values), axis=1, kind="stable")[:, :top]
        best = np.take_along_axis(table.values, order, axis=1)
        rest = table.values.sum(1, dtype=np.float64) - best.sum(1, dtype=np.float64)
        for i, (t, s) in enumerate(zip(table.targets.tolist(), table.sources.tolist())):
            entry = {head_name(int(j), table.n_heads): float(v) for j, v in zip(order[i], best[i])}
            entry[OTHER], entry[DIRECT] = float(rest[i]), float(table.direct[i])
            nested.setdefault(t, {})[s] = entry
    graph.metadata[HEADS_KEY] = {"n_heads": table.n_heads, "top": top, "edges": nested}
    graph.head_table = table


def stored_loadings(graph: AttributionGraph) -> dict[tuple[str, str], dict[str, float]]:
    """``{(target_id, source_id): {head: loading, "other": v, "direct": v}}`` from the metadata (empty if none)."""
    block = graph.metadata.get(HEADS_KEY) or {}
    return {(t, s): dict(entry) for t, row in (block.get("edges") or {}).items() for s, entry in row.items()}


def format_heads(entry: dict[str, float]) -> str:
    """One edge's stored loadings as a GraphML-friendly string: ``L20.H3:0.41;...;other:0.02;direct:0.0``."""
    return ";".join(f"{k}:{v!r}" for k, v in entry.items())


def parse_heads(text: str) -> dict[str, float]:
    """The inverse of ``format_heads``."""
    out = {}
    for part in filter(None, str(text).split(";")):
        name, value = part.rsplit(":", 1)
        out[name] = float(value)
    return out


def set_stored_loadings(graph: AttributionGraph, loadings: dict[tuple[str, str], dict[str, float]]) -> None:
    """Put per-edge loadings read from a file's edges back into the metadata (the edges are the truth)."""
    block = dict(graph.metadata.get(HEADS_KEY) or {})
    nested: dict[str, dict[str, dict[str, float]]] = {}
    for (t, s), entry in loadings.items():
        nested.setdefault(t, {})[s] = entry
    block["edges"] = nested
    graph.metadata[HEADS_KEY] = block


def edge_loadings(graph: AttributionGraph, edge: Sequence[int | str]) -> dict[str, float]:
    """See ``AttributionGraph.head_loadings``."""
    ids = graph.node_ids
    source, target = (ids[x] if isinstance(x, (int, np.integer)) else str(x) for x in edge)
    table = getattr(graph, "head_table", None)
    if table is not None:
        i = table.row(target, source)
        if i is not None:
            values = table.values[i]
            order = np.argsort(-np.abs(values), kind="stable")
            out = {head_name(int(j), table.n_heads): float(values[j]) for j in order}
            out[DIRECT] = float(table.direct[i])
            return out
    entry = stored_loadings(graph).get((target, source))
    if entry is None:
        raise KeyError(f"no head loadings for the edge {source} -> {target}. Fix: trace with head_loadings='targets' "
                       "(edges into every logit node; the default loads the chosen targets or the top logit) or "
                       "'all' (every edge), and pass (source, target) ids or indices of an edge into such a target.")
    return entry


def strongest_attention_edge(graph: AttributionGraph) -> tuple[str, str, dict[str, float]] | None:
    """``(source_id, target_id, loadings)`` of the edge into the most likely logit that attention carries most
    (largest |sum of head loadings|), or None without head loadings."""
    logits = graph.span("logit")
    if graph.count("logit") == 0:
        return None
    prob = np.nan_to_num(graph.nodes["prob"][logits], nan=0.0)
    top = graph.node_ids[logits.start + int(np.argmax(prob))]
    best, best_mass = None, 0.0
    for (t, s), entry in stored_loadings(graph).items():
        mass = abs(sum(v for name, v in entry.items() if name != DIRECT))
        if t == top and mass > best_mass:
            best, best_mass = (s, t, entry), mass
    return best
