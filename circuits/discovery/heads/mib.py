"""MIB's scores of a circuit-discovery result: faithfulness over edge budgets, CPR and CMD.

MIB (Mueller et al., 2025, circuit localisation track) does not judge one circuit but a method's
ranking of every edge: at each budget k (a fraction of all edges, ``MIB_BUDGETS``) the circuit is
the top k edges, its faithfulness f(k) = (m(C_k) − m(∅)) / (m(M) − m(∅)) is measured by patching,
and two areas summarise the curve (``circuits.patching.metrics.area_under_curve``, as MIB's
``evaluate_area_under_curve``):

- CPR, circuit performance ratio: the area under f(k) (higher is better);
- CMD, circuit-model distance: the area between f(k) and 1, ∫|1 − f(k)| dk (lower is better).

The ranking of a ``Circuit``: its kept edges first, strongest measured effect first (ACDC) or
strongest attribution score (EAP, EAP-IG), then every other edge by |attribution score| (edges with
none last). For an attribution method this is exactly its score ranking; for ACDC, the kept circuit
is the top of the ranking and the scores that chose its candidates order the rest. Edges into nodes
that cannot reach the logits are dropped at each budget (``prune_dead``: they change no metric).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from circuits.discovery.heads.circuit import Circuit
from circuits.discovery.heads.prune import prune_dead, top_edges
from circuits.patching.edge_patcher import EdgePatcher
from circuits.patching.metrics import MIB_BUDGETS, area_under_curve


class MibScores(NamedTuple):
    """A method's faithfulness curve over edge budgets and its two areas."""

    budgets: tuple[float, ...]
    """Fractions of the graph's edges."""
    faithfulness: list[float]
    """f at each budget."""
    n_edges: list[int]
    """Edges in the circuit at each budget (after dropping dead ones)."""
    cpr: float
    """Area under the curve (higher is better)."""
    cmd: float
    """Area between the curve and 1 (lower is better)."""


def edge_ranking(circuit: Circuit) -> Tensor:
    """``[n_src, n_dst]`` a key whose |value| orders every edge (module docstring): kept edges above all
    others, each by |effect| (or |score| where it has no effect); the rest by |score|, NaN as 0."""
    scores = torch.nan_to_num(circuit.scores.double().abs())
    effects = circuit.effects.double().abs()
    mine = torch.where(torch.isnan(effects), scores, effects)
    # Kept edges sit above every other edge: shift them past the largest score.
    return torch.where(circuit.kept, mine + float(scores.max()) + 1.0, scores)


def mib_scores(patcher: EdgePatcher, ranking: Tensor | Circuit, budgets: tuple[float, ...] = MIB_BUDGETS, *,
               log_scale: bool = False) -> MibScores:
    """Faithfulness at each budget of the edges ranked by |``ranking``| (``[n_src, n_dst]``, or a ``Circuit``:
    ``edge_ranking``), and MIB's CPR and CMD over the budgets. One batched evaluation of ``len(budgets)``
    edge sets under ``patcher``'s ablation and metric."""
    g = patcher.graph
    key = edge_ranking(ranking) if isinstance(ranking, Circuit) else ranking
    if tuple(key.shape) != (g.n_src, g.n_dst):
        raise ValueError(f"the ranking is {tuple(key.shape)} but the patcher's graph has {g.n_src} sources and "
                         f"{g.n_dst} destinations: score the circuit with a patcher of its own graph (split_qkv alike)")
    kept = [prune_dead(g, top_edges(g, key, max(1, round(k * g.n_edges)))) for k in budgets]
    values = patcher.evaluate(torch.stack([g.valid & ~k for k in kept]))
    f = [(float(v) - patcher.m_empty) / (patcher.m_full - patcher.m_empty) for v in values]
    cpr, cmd = area_under_curve(budgets, f, log_scale=log_scale)
    return MibScores(tuple(budgets), f, [int(k.sum()) for k in kept], cpr, cmd)
