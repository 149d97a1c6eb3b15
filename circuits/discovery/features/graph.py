"""``FeatureCircuit``: the nodes of a replacement model a feature-level discovery kept, with evidence.

Nodes are token embeddings, transcoder features and errors at a position, named as attribution
graphs name them (``T@{pos}``, ``F{layer}.{feature}@{pos}``, ``E{layer}@{pos}``), plus ``logits``
for the metric. Each kept node carries its attribution ``score`` (EAP/EAP-IG: an estimate of
m(node ablated) − m(M)) and its measured ``effect`` (the metric's change when it is ablated from
the circuit). Edges carry their EAP ``weight`` (see ``scores``) and their measured
``effect`` (path patching, see ``edges``; NaN when not measured).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import Tensor

from circuits.discovery.features.patcher import NodeIndex
from transcoders.writes import nan_if_none, write_json


LOGITS_NAME = "logits"
FORMAT, VERSION = "circuit-engine/feature-circuit", 1
SAVED_SCORES = 4096
"""``save`` keeps the scores of this many nodes (largest |score|); the rest load as NaN."""


class FeatureCircuitFileError(ValueError):
    """A file is not a feature circuit this version can read."""


@dataclass(frozen=True)
class FeatureNode:
    kind: str
    """``"embedding"``, ``"feature"`` or ``"error"``."""
    layer: int
    """−1 for embeddings."""
    position: int
    feature: int
    """−1 for embeddings and errors."""
    score: float
    effect: float
    """m(C without this node) − m(C) as measured (ACDC: when it was tested); NaN if not measured."""
    delta: float = float("nan")
    """Mean over prompts of corrupted − clean activation (features), or of the norm of the
    difference (errors, embeddings)."""
    label: str = ""
    """A feature's label (when labels were given), the first clean prompt's token at this position
    for an embedding, or ""."""

    @property
    def name(self) -> str:
        if self.kind == "embedding":
            return f"T@{self.position}"
        if self.kind == "error":
            return f"E{self.layer}@{self.position}"
        return f"F{self.layer}.{self.feature}@{self.position}"


@dataclass(frozen=True)
class FeatureEdge:
    src: str
    dst: str
    """A node name or ``"logits"``."""
    weight: float
    """EAP score of the edge: an estimate of m(edge removed) − m(M)."""
    effect: float = float("nan")
    """m(C without this edge) − m(C), measured by path patching; NaN if not measured."""


@dataclass
class FeatureCircuit:
    """A feature-level circuit: kept nodes in topological order, edges among them, faithfulness.

    ``scores``: ``[n_nodes]`` attribution scores of every node (``NodeIndex`` numbering), the
    evidence the method ranked by; None when not kept.
    """

    nodes: list[FeatureNode]
    edges: list[FeatureEdge]
    faithfulness: float
    """f = (m(C) − m(∅)) / (m(M) − m(∅)); ∅ ablates every node, which is the corrupted run."""
    metric_circuit: float
    metric_full: float
    metric_empty: float
    method: str
    n_layers: int
    scores: Tensor | None = None
    index: NodeIndex | None = None
    """How ``scores`` is numbered."""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def features(self) -> list[tuple[int, int, int]]:
        """``(layer, position, feature)`` of every kept feature."""
        return [(n.layer, n.position, n.feature) for n in self.nodes if n.kind == "feature"]

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def __repr__(self) -> str:
        kinds = {k: sum(n.kind == k for n in self.nodes) for k in ("feature", "error", "embedding")}
        return (f"FeatureCircuit({self.method}, {kinds['feature']} features, {kinds['error']} errors, "
                f"{kinds['embedding']} embeddings, {self.n_edges} edges, faithfulness={self.faithfulness:.3f})")

    def to_networkx(self) -> nx.DiGraph:
        """Nodes carry ``kind``, ``layer``, ``position``, ``feature``, ``label``, ``score``,
        ``effect`` and ``delta``; the ``logits`` node has kind ``"logits"`` and layer n_layers.
        Edges carry ``weight`` and ``effect``. Graph attributes: method, faithfulness, metrics, info."""
        G = nx.DiGraph(method=self.method, faithfulness=self.faithfulness, metric_full=self.metric_full,
                       metric_empty=self.metric_empty, metric_circuit=self.metric_circuit,
                       **{k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool))})
        for n in self.nodes:
            G.add_node(n.name, kind=n.kind, layer=n.layer, position=n.position, feature=n.feature, label=n.label,
                       score=n.score, effect=n.effect, delta=n.delta)
        G.add_node(LOGITS_NAME, kind="logits", layer=self.n_layers, position=-1, feature=-1, label="",
                   score=math.nan, effect=math.nan, delta=math.nan)
        for e in self.edges:
            G.add_edge(e.src, e.dst, weight=e.weight, effect=e.effect)
        return G

    # --- files ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the circuit as JSON (atomically): nodes, edges, metrics, ``info``, and the scores of
        the ``SAVED_SCORES`` highest-|score| nodes. NaN is written as null."""
        path = Path(path)
        doc: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "method": self.method, "n_layers": self.n_layers,
            "faithfulness": self.faithfulness, "metric_circuit": self.metric_circuit,
            "metric_full": self.metric_full, "metric_empty": self.metric_empty,
            "nodes": [asdict(n) for n in self.nodes], "edges": [asdict(e) for e in self.edges],
            "info": {k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool)) or v is None},
        }
        if self.scores is not None and self.index is not None:
            top = self.scores.abs().nan_to_num(-1.0).argsort(descending=True, stable=True)[:SAVED_SCORES]
            doc["index"] = asdict(self.index)
            doc["scores"] = [[int(i), float(self.scores[i])] for i in top.tolist()]
        return write_json(path, doc, indent=1)  # NaN becomes null

    @classmethod
    def load(cls, path: str | Path) -> FeatureCircuit:
        """Read a file ``save`` wrote."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FeatureCircuitFileError(f"cannot read {path} as a feature circuit ({err}). Fix: write it again "
                                          "with FeatureCircuit.save") from err
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise FeatureCircuitFileError(f"{path} is not a version-{VERSION} feature circuit file ('format': "
                                          f"{FORMAT!r}). Fix: write one with FeatureCircuit.save")
        try:
            return cls._from_doc(doc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FeatureCircuitFileError(f"{path} is a damaged feature circuit file ({type(exc).__name__}: {exc}). "
                                          "Fix: write it again with FeatureCircuit.save") from exc

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> FeatureCircuit:
        index = scores = None
        if "index" in doc:
            index = NodeIndex(**doc["index"])
            scores = torch.full((index.n_nodes,), math.nan, dtype=torch.float64)
            for i, v in doc["scores"]:
                scores[i] = nan_if_none(v)
        nodes = [FeatureNode(**{k: nan_if_none(v) if k in _FLOATS else v for k, v in n.items()}) for n in doc["nodes"]]
        edges = [FeatureEdge(**{k: nan_if_none(v) if k in _FLOATS else v for k, v in e.items()}) for e in doc["edges"]]
        return cls(nodes, edges, nan_if_none(doc["faithfulness"]), nan_if_none(doc["metric_circuit"]), nan_if_none(doc["metric_full"]),
                   nan_if_none(doc["metric_empty"]), doc["method"], doc["n_layers"], scores, index, doc["info"])


_FLOATS = ("score", "effect", "delta", "weight")


