"""``Circuit``: a set of kept edges of a ``HeadGraph``, with the evidence for each."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import Tensor

from circuits.patching.graph import HeadGraph
from transcoders.writes import finite_or_none, nan_if_none, write_json

FORMAT = "circuit-engine/circuit"
VERSION = 1


class CircuitFileError(ValueError):
    """A circuit file that cannot be read: not JSON, not a circuit, or from another graph."""


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

    @property
    def mlps(self) -> list[int]:
        """Layers of every MLP in the circuit."""
        return [int(name[1:]) for name in self.nodes if name.startswith("m")]

    @property
    def components(self) -> set[str]:
        """The heads and MLPs in the circuit by name (``a{l}.h{h}``, ``m{l}``): the head-level view."""
        return {name for name in self.nodes if name not in ("input", "logits")}

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

    # --- save / load ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the circuit as JSON: the graph's shape, kept edges by name with score and effect,
        the metrics and ``info``; scores of edges not kept too, when there are any (EAP scores
        every edge, and comparisons rank by them). Atomic: a reader never sees half a file.

        NaN (no value) is written as null; ``info`` keeps only JSON values (non-finite floats
        come back as None)."""
        g, path = self.graph, Path(path)
        valid_scores = self.scores[g.valid]
        doc: dict[str, Any] = {
            "format": FORMAT, "version": VERSION,
            "graph": {"n_layers": g.n_layers, "n_heads": g.n_heads, "split_qkv": g.split_qkv},
            "method": self.method, "faithfulness": finite_or_none(self.faithfulness),
            "metric_circuit": finite_or_none(self.metric_circuit), "metric_full": finite_or_none(self.metric_full),
            "metric_empty": finite_or_none(self.metric_empty), "n_edges": self.n_edges,
            "edges": [{"name": g.edge_name(s, d), "score": finite_or_none(float(self.scores[s, d])),
                       "effect": finite_or_none(float(self.effects[s, d]))} for s, d in self.kept.nonzero().tolist()],
            "info": _jsonable(self.info),
        }
        if (~self.kept[g.valid] & ~valid_scores.isnan()).any():
            # Every valid edge, row-major over [n_src, n_dst] (the order of graph.valid.nonzero()).
            doc["all_scores"] = [finite_or_none(v) for v in valid_scores.tolist()]
        return write_json(path, doc, indent=1)

    @classmethod
    def load(cls, path: str | Path, graph: HeadGraph | None = None) -> Circuit:
        """Read a circuit written by ``save``. ``graph``: the graph it must belong to (e.g.
        ``HeadGraph.for_model(model)``); a file from a model of another shape is refused."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no circuit file at {path}. Fix: check the path; Circuit.save writes "
                                    "one") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CircuitFileError(f"{path} is not a readable circuit file ({exc}). Fix: re-create it with "
                                   "Circuit.save") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CircuitFileError(f"{path} is not a circuit file (no 'format': {FORMAT!r}). Fix: write one with "
                                   "Circuit.save")
        if doc.get("version") != VERSION:
            raise CircuitFileError(f"{path} is a version {doc.get('version')!r} circuit file; this circuit-engine "
                                   f"reads version {VERSION}: re-save it with a matching version")
        try:
            return _from_doc(doc, graph)
        except CircuitFileError as exc:
            raise CircuitFileError(f"{path}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise CircuitFileError(f"{path} is a damaged circuit file ({type(exc).__name__}: {exc}). Fix: re-create "
                                   "it with Circuit.save") from exc


def _from_doc(doc: dict[str, Any], graph: HeadGraph | None) -> Circuit:
    shape = doc["graph"]
    g = HeadGraph(int(shape["n_layers"]), int(shape["n_heads"]), bool(shape["split_qkv"]))
    if graph is not None and graph != g:
        raise CircuitFileError(f"the circuit belongs to a graph of {g.n_layers} layers x {g.n_heads} heads "
                               f"(split_qkv={g.split_qkv}), not the {graph.n_layers} x {graph.n_heads} "
                               f"(split_qkv={graph.split_qkv}) one asked for: load it for the model it was found on")
    g = graph or g
    kept, scores, effects = g.empty(), nan_matrix(g), nan_matrix(g)
    if "all_scores" in doc:
        flat = doc["all_scores"]
        if len(flat) != g.n_edges:
            raise CircuitFileError(f"all_scores has {len(flat)} values for a graph of {g.n_edges} edges")
        scores[g.valid] = torch.tensor([nan_if_none(v) for v in flat], dtype=scores.dtype)
    for e in doc["edges"]:
        s, d = g.parse_edge(e["name"])
        if not g.valid[s, d]:
            raise CircuitFileError(f"{e['name']} is not an edge of this graph (its source is not upstream)")
        kept[s, d] = True
        scores[s, d], effects[s, d] = nan_if_none(e["score"]), nan_if_none(e["effect"])
    if int(kept.sum()) != doc["n_edges"]:
        raise CircuitFileError(f"the file lists {int(kept.sum())} distinct edges but says it has {doc['n_edges']}")
    return Circuit(g, kept, scores, effects, nan_if_none(doc["faithfulness"]), nan_if_none(doc["metric_circuit"]),
                   nan_if_none(doc["metric_full"]), nan_if_none(doc["metric_empty"]), str(doc["method"]),
                   info=dict(doc.get("info", {})))


def _jsonable(v: Any) -> Any:
    """``v`` with everything JSON cannot hold dropped (``_DROP`` if ``v`` itself cannot be held);
    non-finite floats become None."""
    if isinstance(v, float):
        return finite_or_none(v)
    if v is None or isinstance(v, (str, int, bool)):
        return v
    if isinstance(v, dict):
        pairs = ((str(k), _jsonable(x)) for k, x in v.items())
        return {k: x for k, x in pairs if x is not _DROP}
    if isinstance(v, (list, tuple)):
        return [x for x in map(_jsonable, v) if x is not _DROP]
    return _DROP


_DROP = object()


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
