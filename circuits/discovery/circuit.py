"""``Circuit``: a set of kept edges of a ``HeadGraph``, with the evidence for each."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import Tensor

from circuits.patching.graph import HeadGraph


@dataclass
class Circuit:
    """A head-level circuit: the edges kept, their attribution scores and measured effects.

    ``scores`` and ``effects`` are ``[n_src, n_dst]`` float tensors, NaN where there is no value:
    ``scores`` from EAP/EAP-IG (an estimate of m(remove e) − m(M)), ``effects`` from patching
    (ACDC: the change of the metric when the edge was removed on top of the edges already
    removed at that point; every kept edge has one).
    """

    graph: HeadGraph
    kept: Tensor
    """``[n_src, n_dst]`` bool."""
    scores: Tensor
    effects: Tensor
    faithfulness: float
    """f = (m(C) − m(∅)) / (m(M) − m(∅)) under the ablation the circuit was found with."""
    metric_circuit: float
    metric_full: float
    metric_empty: float
    method: str
    info: dict[str, Any] = field(default_factory=dict)
    """Plain facts: tau, ablation, metric, task, model, timings, candidate counts."""

    # --- views ----------------------------------------------------------------------------

    @property
    def n_edges(self) -> int:
        return int(self.kept.sum())

    @property
    def edges(self) -> list[dict[str, Any]]:
        """Kept edges, strongest first: name, src, dst, port, score, effect."""
        g = self.graph
        rows = []
        for s, d in self.kept.nonzero().tolist():
            rows.append({"name": g.edge_name(s, d), "src": g.src_names[s], "dst": _node_name(g, d),
                         "port": g.dst_port[d], "score": _num(self.scores[s, d]), "effect": _num(self.effects[s, d])})
        def strength(r: dict[str, Any]) -> float:
            for v in (r["effect"], r["score"]):
                if not math.isnan(v):
                    return -abs(v)
            return 0.0

        return sorted(rows, key=strength)

    @property
    def nodes(self) -> list[str]:
        """Nodes touched by a kept edge, in topological order (``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``)."""
        g = self.graph
        src = self.kept.any(1)
        dst_nodes = {g.dst_node[d] for d in self.kept.any(0).nonzero().flatten().tolist()}
        names = [g.src_names[i] for i in range(g.n_src) if bool(src[i]) or i in dst_nodes]
        return names + (["logits"] if -1 in dst_nodes else [])

    @property
    def heads(self) -> list[tuple[int, int]]:
        """(layer, head) of every head in the circuit."""
        out = []
        for name in self.nodes:
            if name.startswith("a"):
                layer, head = name[1:].split(".h")
                out.append((int(layer), int(head)))
        return out

    def __repr__(self) -> str:
        return (f"Circuit({self.method}, {self.n_edges} edges, {len(self.heads)} heads, "
                f"faithfulness={self.faithfulness:.3f})")

    # --- export ---------------------------------------------------------------------------

    def to_networkx(self) -> nx.DiGraph:
        """Nodes carry ``kind`` (input/head/mlp/logits), ``layer``, ``head``; edges carry ``weight``
        (attribution score), ``effect`` (measured), ``ports`` (e.g. ``"q,v"``) and, per port,
        ``weight_q``/``effect_q``... q/k/v edges between the same two nodes are merged: weight
        and effect are their sums (NaN where none was computed)."""
        g = self.graph
        G = nx.DiGraph(method=self.method, faithfulness=self.faithfulness, metric_full=self.metric_full,
                       metric_empty=self.metric_empty, metric_circuit=self.metric_circuit,
                       n_edges=self.n_edges, **{k: v for k, v in self.info.items() if _plain(v)})
        for name in self.nodes:
            G.add_node(name, **_node_attrs(name, g.n_layers))
        for s, d in self.kept.nonzero().tolist():
            u, v, port = g.src_names[s], _node_name(g, d), g.dst_port[d]
            w, e = _num(self.scores[s, d]), _num(self.effects[s, d])
            if G.has_edge(u, v):
                attrs = G.edges[u, v]
                attrs["weight"] += w
                attrs["effect"] += e
                attrs["ports"] += f",{port}"
            else:
                G.add_edge(u, v, weight=w, effect=e, ports=port)
                attrs = G.edges[u, v]
            if port:
                attrs[f"weight_{port}"], attrs[f"effect_{port}"] = w, e
        return G


def _num(x: Tensor) -> float:
    return float(x)


def _plain(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


def _node_name(g: HeadGraph, dst: int) -> str:
    owner = g.dst_node[dst]
    return "logits" if owner < 0 else g.src_names[owner]


def _node_attrs(name: str, n_layers: int) -> dict[str, Any]:
    if name == "input":
        return {"kind": "input", "layer": -1, "head": -1}
    if name == "logits":
        return {"kind": "logits", "layer": n_layers, "head": -1}
    if name.startswith("m"):
        return {"kind": "mlp", "layer": int(name[1:]), "head": -1}
    layer, head = name[1:].split(".h")
    return {"kind": "head", "layer": int(layer), "head": int(head)}


def nan_matrix(graph: HeadGraph) -> Tensor:
    return torch.full((graph.n_src, graph.n_dst), float("nan"))
