"""Load a known circuit and score a discovered one against it: precision, recall, ROC AUC."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from circuits.patching.graph import HeadGraph

_HERE = Path(__file__).parent
_FILES = {"gpt2-ioi": "gpt2_ioi.json", "gpt2-greater-than": "gpt2_greater_than.json"}


@dataclass(frozen=True)
class KnownCircuit:
    name: str
    n_layers: int
    n_heads: int
    heads_by_class: dict[str, list[tuple[int, int]]]
    mlps: list[int]
    connections: list[tuple[str, str, str]]
    """(class or ``input``, class or ``logits``, q/k/v letters) — empty when only nodes are known."""
    source: str

    @property
    def heads(self) -> list[tuple[int, int]]:
        return sorted({h for hs in self.heads_by_class.values() for h in hs})

    def class_of(self, layer: int, head: int) -> str | None:
        return next((c for c, hs in self.heads_by_class.items() if (layer, head) in hs), None)

    def head_mask(self) -> Tensor:
        """``[n_layers, n_heads]`` bool."""
        m = torch.zeros(self.n_layers, self.n_heads, dtype=torch.bool)
        for layer, head in self.heads:
            m[layer, head] = True
        return m

    def edge_mask(self, graph: HeadGraph) -> Tensor:
        """``[n_src, n_dst]`` bool: the known circuit's edges in ``graph`` (ACDC's construction for IOI)."""
        if not self.connections:
            raise ValueError(f"{self.name} is known at node level only: compare at level='head'")
        if (graph.n_layers, graph.n_heads) != (self.n_layers, self.n_heads):
            raise ValueError(f"{self.name} is a circuit of a {self.n_layers}x{self.n_heads} model; the graph is "
                             f"{graph.n_layers}x{graph.n_heads}")
        g, m = graph, graph.empty()

        def head_dsts(layer: int, head: int, letters: str) -> list[int]:
            if not g.split_qkv:
                return [g.head_dst(layer, head)]
            return [g.head_dst(layer, head, p) for p in letters]

        m[0, g.logits_dst] = True
        mlps = range(self.n_layers) if not self.mlps else self.mlps
        for layer in mlps:
            m[0, g.mlp_dst(layer)] = True
            m[g.mlp_src(layer), g.logits_dst] = True
            for later in mlps:
                if later > layer:
                    m[g.mlp_src(layer), g.mlp_dst(later)] = True
        for layer, head in self.heads:
            for mlp in mlps:
                if mlp < layer:
                    m[g.mlp_src(mlp), head_dsts(layer, head, "qkv")] = True
                else:
                    m[g.head_src(layer, head), g.mlp_dst(mlp)] = True
        for src_cls, dst_cls, letters in self.connections:
            srcs = [0] if src_cls == "input" else [g.head_src(l, h) for l, h in self.heads_by_class[src_cls]]
            if dst_cls == "logits":
                for s in srcs:
                    m[s, g.logits_dst] = True
                continue
            for layer, head in self.heads_by_class[dst_cls]:
                for s in srcs:
                    if s == 0 or g.src_layer(s) < layer:
                        m[s, head_dsts(layer, head, letters)] = True
        return m & g.valid


def load(name: str) -> KnownCircuit:
    """A known circuit by name: ``"gpt2-ioi"`` (Wang et al.) or ``"gpt2-greater-than"`` (Hanna et al.)."""
    if name not in _FILES:
        raise KeyError(f"no known circuit {name!r}; available: {', '.join(sorted(_FILES))}")
    d: dict[str, Any] = json.loads((_HERE / _FILES[name]).read_text())
    mlps = list(range(d["n_layers"])) if d["mlps"] == "all" else list(d["mlps"])
    conns = [tuple(c) for c in d.get("connections", {}).get("list", [])]
    return KnownCircuit(d["name"], d["n_layers"], d["n_heads"],
                        {k: [tuple(h) for h in v] for k, v in d["heads"].items()}, mlps, conns,  # type: ignore[misc]
                        d["source"])


def roc_auc(scores: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half):
    the probability that a random positive outscores a random negative (Mann-Whitney U)."""
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both positives and negatives")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _prf(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "tp": tp, "fp": fp, "fn": fn}


def compare(circuit: Any, known: KnownCircuit | str, *, level: Literal["head", "edge"] = "head") -> dict[str, float]:
    """Precision, recall and ROC AUC of ``circuit`` (a ``discovery.Circuit``) against ``known``.

    Head level: a head is predicted when the circuit touches it; its score for the AUC is the
    largest |score| (attribution) or |effect| (patching) over the edges it sends, so circuits
    with scores on every edge (EAP) rank every head. Edge level: the circuit's edges against
    the known edge set (ACDC's construction), scored by |score|, else |effect|, else membership.
    """
    known = load(known) if isinstance(known, str) else known
    g: HeadGraph = circuit.graph
    score = _edge_strength(circuit)
    if level == "head":
        if (g.n_layers, g.n_heads) != (known.n_layers, known.n_heads):
            raise ValueError(f"{known.name} is a circuit of a {known.n_layers}x{known.n_heads} model; the circuit's "
                             f"model is {g.n_layers}x{g.n_heads}")
        truth = known.head_mask().numpy().ravel()
        in_circuit = set(circuit.heads)
        pred = np.array([(l, h) in in_circuit for l in range(g.n_layers) for h in range(g.n_heads)])
        head_score = np.array([float(score[g.head_src(l, h)].max()) for l in range(g.n_layers)
                               for h in range(g.n_heads)])
        out = _prf(pred, truth)
        out["roc_auc"] = roc_auc(head_score, truth)
        return out
    truth_m = known.edge_mask(g)
    valid = g.valid.numpy()
    truth = truth_m.numpy()[valid]
    pred = circuit.kept.numpy()[valid]
    out = _prf(pred, truth)
    out["roc_auc"] = roc_auc(score.numpy()[valid], truth)
    return out


def _edge_strength(circuit: Any) -> Tensor:
    """``[n_src, n_dst]``: |score| where scored, else |effect| where measured, else 1 for kept edges;
    kept edges always outrank the rest (so a circuit without scores still yields an AUC)."""
    s = torch.nan_to_num(circuit.scores.abs(), nan=0.0)
    if not (s > 0).any():
        s = torch.nan_to_num(circuit.effects.abs(), nan=0.0)
    s = s / (s.max() + 1e-30)
    return s + circuit.kept.float()

