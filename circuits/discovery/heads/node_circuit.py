"""``NodeCircuit``: the heads and MLPs a task needs, with the measured effect of each."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import Tensor

from circuits.discovery.heads.circuit import Circuit, nan_matrix
from circuits.patching.graph import HeadGraph
from circuits.patching.nodes import NodePatcher
from transcoders.writes import write_json

FORMAT = "circuit-engine node circuit v1"


@dataclass
class NodeCircuit:
    """A node-level circuit: every node not kept is ablated (``patcher.ablation``) everywhere.

    ``kept``, ``effects`` and ``scores`` are indexed by ``HeadGraph`` source (0 = embeddings,
    always kept). ``effects``: the change of the metric when the node was removed on top of
    the nodes already removed at that point (ACDC), NaN for nodes not kept.
    """

    patcher: NodePatcher
    kept: Tensor
    """``[n_src]`` bool."""
    effects: Tensor
    """``[n_src]`` float64."""
    scores: Tensor | None
    """``[n_src]`` attribution scores (estimates of m(remove node) − m(M)), if computed."""
    faithfulness: float
    metric_circuit: float
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def graph(self) -> HeadGraph:
        return self.patcher.graph

    @property
    def heads(self) -> list[tuple[int, int]]:
        """Kept heads as (layer, head), in layer order."""
        g = self.graph
        return [(l, h) for l in range(g.n_layers) for h in range(g.n_heads) if self.kept[g.head_src(l, h)]]

    @property
    def mlps(self) -> list[int]:
        g = self.graph
        return [l for l in range(g.n_layers) if self.kept[g.mlp_src(l)]]

    @property
    def nodes(self) -> list[str]:
        """Kept nodes by name (``a{l}.h{h}``, ``m{l}``), the embeddings (``input``) excluded."""
        names = self.graph.src_names
        return [names[i] for i in self.kept.nonzero().flatten().tolist() if i > 0]

    def table(self) -> list[dict[str, Any]]:
        """One row per kept node: name, layer, measured effect, attribution score; strongest first."""
        g, names = self.graph, self.graph.src_names
        rows = [{"node": names[i], "layer": g.src_layer(i), "effect": float(self.effects[i]),
                 "score": float("nan") if self.scores is None else float(self.scores[i])}
                for i in self.kept.nonzero().flatten().tolist() if i > 0]
        return sorted(rows, key=lambda r: _strength(r["effect"]))

    def head_effects(self) -> dict[tuple[int, int], float]:
        """``{(layer, head): measured effect}`` of the kept heads, strongest first (MLPs left out)."""
        g = self.graph
        effects = {(l, h): float(self.effects[g.head_src(l, h)]) for l, h in self.heads}
        return dict(sorted(effects.items(), key=lambda item: _strength(item[1])))

    def completeness(self, subsets: Sequence[Sequence[str]] | None = None, *, variants_per_pass: int = 8
                     ) -> list[dict[str, Any]]:
        """Wang et al.'s (2022) completeness: for each set K of the circuit's nodes, the metric with
        K removed from the circuit, F(C ∖ K), against K removed from the whole model, F(M ∖ K).

        A complete circuit has the model's backups and compensations in it, so the two agree for
        every K; a large ``gap`` names a K whose job something outside the circuit also does, or
        a node that matters only because the rest of the model is ablated. ``subsets``: lists of
        node names (``table()``'s ``node``), default each kept node alone. One row per subset:
        ``removed``, ``circuit`` and ``model`` (the two metric values), ``effect_circuit`` =
        F(C ∖ K) − F(C), ``effect_model`` = F(M ∖ K) − F(M), ``gap`` = |F(C ∖ K) − F(M ∖ K)|.
        ``variants_per_pass``: node sets per batched forward (memory grows with it). Layers below
        a subset's first node replay recorded runs of C and of M, so late nodes cost little.
        """
        g, names = self.graph, self.graph.src_names
        kept = set(self.nodes)
        if subsets is None:
            subsets = [[n] for n in self.nodes]
        rows: list[list[int]] = []
        for subset in subsets:
            outside = [n for n in subset if n not in kept]
            if not subset or outside:
                raise ValueError(f"completeness removes sets of the circuit's own nodes; {list(subset)} "
                                 f"{'is empty' if not subset else f'has {outside}, not in the circuit'}. "
                                 f"Pick from circuit.nodes: {self.nodes}")
            rows.append([names.index(n) for n in subset])
        p = self.patcher
        circuit_removed = ~self.kept
        model_removed = torch.zeros_like(self.kept)
        m_circuit, base_circuit = p.base_run(circuit_removed)
        m_model, base_model = p.base_run(model_removed)
        values = torch.zeros(len(rows), 2, dtype=torch.float64)  # [subset, (C ∖ K, M ∖ K)]
        start = [min(g.src_layer(i) for i in idx) for idx in rows]
        for layer in sorted(set(start)):
            at = [i for i, s in enumerate(start) if s == layer]
            for chunk in (at[c:c + variants_per_pass] for c in range(0, len(at), variants_per_pass)):
                for col, (removed, base) in enumerate(((circuit_removed, base_circuit), (model_removed, base_model))):
                    trial = removed.repeat(len(chunk), 1)
                    for row, i in enumerate(chunk):
                        trial[row, rows[i]] = True
                    values[chunk, col] = p.evaluate(trial, base=base, start_layer=layer)
        return [{"removed": list(subset), "circuit": float(c), "model": float(m),
                 "effect_circuit": float(c) - m_circuit, "effect_model": float(m) - m_model,
                 "gap": abs(float(c) - float(m))}
                for subset, (c, m) in zip(subsets, values.tolist())]

    def as_edge_circuit(self) -> Circuit:
        """The same circuit as a ``Circuit`` of ``HeadGraph`` edges: every edge between kept nodes
        (and into the logits). Edge weights are unset; node effects go in ``info``."""
        g = HeadGraph(self.graph.n_layers, self.graph.n_heads, split_qkv=True)
        owner = torch.tensor(g.dst_node)  # the source index of each destination's node (-1: logits)
        dst_kept = torch.where(owner >= 0, self.kept[owner.clamp(min=0)], torch.ones_like(owner, dtype=torch.bool))
        kept = g.valid & self.kept[:, None] & dst_kept[None, :]
        full, empty = self.patcher.m_full, self.patcher.m_empty
        return Circuit(g, kept, nan_matrix(g), nan_matrix(g), self.faithfulness, self.metric_circuit, full, empty,
                       f"{self.method}-nodes", info={**self.info, "node_effects": self.effect_dict()})

    def effect_dict(self) -> dict[str, float]:
        return {r["node"]: r["effect"] for r in self.table()}

    def to_networkx(self) -> nx.DiGraph:
        """Edges between kept nodes (q/k/v merged); nodes also carry ``effect`` and ``score``."""
        G = self.as_edge_circuit().to_networkx()
        for r in self.table():
            if r["node"] in G:
                G.nodes[r["node"]].update(effect=r["effect"], score=r["score"])
        return G

    def save(self, path: str | Path) -> Path:
        """Write the circuit as JSON (atomically): kept nodes with their effects and scores, the
        metric values, faithfulness and ``info``. ``NodeCircuit.read`` reads it back as a dict."""
        path = Path(path)
        record = {"format": FORMAT, "method": self.method, "n_layers": self.graph.n_layers,
                  "n_heads": self.graph.n_heads, "nodes": self.table(), "faithfulness": self.faithfulness,
                  "metric_circuit": self.metric_circuit, "metric_full": self.patcher.m_full,
                  "metric_empty": self.patcher.m_empty,
                  "info": {k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool, type(None)))}}
        return write_json(path, record, indent=1, default=float)

    @staticmethod
    def read(path: str | Path) -> dict[str, Any]:
        """A saved node circuit as a dict (``nodes``: rows of ``table()``); a clear error for other files."""
        path = Path(path)
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read a node circuit from {path}: {exc}. Fix: write it again with "
                             "NodeCircuit.save") from exc
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{path} is not a node circuit saved by NodeCircuit.save (format {FORMAT!r}). "
                             "Fix: pass a file NodeCircuit.save wrote.")
        return record

    def __repr__(self) -> str:
        return (f"NodeCircuit({self.method}, {len(self.heads)} heads, {len(self.mlps)} MLPs, "
                f"faithfulness {self.faithfulness:.3f})")


def _strength(effect: float) -> float:
    """Sort key: largest |effect| first, unmeasured (NaN) effects last."""
    return 0.0 if math.isnan(effect) else -abs(effect)
