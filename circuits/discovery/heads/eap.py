"""EAP and EAP-IG circuits: score every edge by attribution, keep the strongest."""

from __future__ import annotations

import time
from typing import Literal

import torch

from circuits.discovery.heads.circuit import Circuit, nan_matrix
from circuits.discovery.heads.prune import prune_dead, top_edges
from circuits.patching.metrics import faithfulness
from circuits.patching.edge_patcher import EdgePatcher


def attribution_circuit(patcher: EdgePatcher, method: Literal["eap", "eap-ig"] = "eap", *, tau: float | None = None,
                        top_n: int | None = None, steps: int = 5, batch_size: int = 16,
                        progress: bool = True) -> Circuit:
    """Keep the edges with |score| ≥ ``tau`` (or the ``top_n`` strongest), then drop edges into
    nodes that cannot reach the logits, and measure the circuit's faithfulness.

    ``tau`` is in units of the metric; default 1% of |m(M) − m(∅)|.
    """
    t0 = time.perf_counter()
    scores = patcher.edge_scores(method, steps=steps, batch_size=batch_size, progress=progress)
    t_scores = time.perf_counter() - t0
    g = patcher.graph
    if top_n is not None:
        kept = top_edges(g, scores, top_n)
    else:
        if tau is None:
            tau = 0.01 * abs(patcher.m_full - patcher.m_empty)
        kept = g.valid & (scores.abs() >= tau)
    kept = prune_dead(g, kept)
    m = float(patcher.evaluate(g.valid & ~kept)[0])
    f = faithfulness(m, patcher.m_full, patcher.m_empty)
    s = nan_matrix(g)
    s[g.valid] = scores[g.valid]
    return Circuit(g, kept, s, nan_matrix(g), f, m, patcher.m_full, patcher.m_empty, method,
                   info={"tau": tau if top_n is None else float("nan"), "top_n": -1 if top_n is None else top_n,
                         "steps": steps if method == "eap-ig" else 0, "seconds_scoring": t_scores,
                         "seconds": time.perf_counter() - t0})


def measure_effects(patcher: EdgePatcher, circuit: Circuit, *, progress: bool = True) -> Circuit:
    """Fill ``circuit.effects`` with m(C − e) − m(C) for every kept edge e (one pass per edge,
    batched). ACDC circuits carry effects already; this gives EAP circuits theirs."""
    g = patcher.graph
    edges = circuit.kept.nonzero().tolist()
    base = g.valid & ~circuit.kept
    variants = torch.stack([base.clone() for _ in edges]) if edges else torch.zeros(0, g.n_src, g.n_dst, dtype=torch.bool)
    for i, (s, d) in enumerate(edges):
        variants[i, s, d] = True
    values = patcher.evaluate(variants, progress=progress) if edges else torch.zeros(0)
    for (s, d), v in zip(edges, values.tolist()):
        circuit.effects[s, d] = v - circuit.metric_circuit
    return circuit
