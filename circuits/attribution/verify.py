"""Verify a pruned attribution graph: measure every kept edge by activation patching.

An edge weight is a direct effect in the *frozen* replacement model. Verification asks whether
it holds in the real one: for each source node kept after influence pruning, zero it in the
replacement model with attention patterns and norm scales recomputed, every other feature and
error held at its clean value, and read each of its targets' pre-activations (for a logit, the
demeaned logit). ``clean − ablated`` is the edge's measured effect: its direct effect through the
model's own nonlinear attention and norms. With ``freeze_attention=True`` it equals the weight
(a check of the machinery). One batch row per source, ``batch_size`` sources per forward pass;
each row reads all of its source's targets at once. Sources are batched in layer order, and a batch
resumes at its lowest source's layer from a recorded clean run (``Resume``): nothing below a source
changes when it is ablated, so a late source costs only the layers above it. The true MLPs are not
run (clean errors make every slot's write independent of them) and only the last position's logits
are formed.

An edge is flagged where the two disagree. With ``w`` the weight, ``m`` the measured effect and
``ε = negligible × Σ|w|`` over the target's kept incoming edges (what counts as small for it):

- ``"sign"``: ``w`` and ``m`` have opposite signs and both exceed ``ε``;
- ``"size"``: otherwise, either exceeds ``ε`` and ``m / w`` lies outside ``ratio`` ([0.5, 2]).

``tau`` is the design's second pruning step: edges whose measured effect is under
``tau × Σ|w|`` (the same per-target scale) are dropped, then features and errors left without
outgoing edges and features without incoming ones, so every edge kept carries its measured effect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from circuits.models.adapter import Model
from circuits.replacement import (
    CleanState,
    Edits,
    ReplacementRun,
    Resume,
    ablation_edits,
    ablation_values,
    demeaned_unembedding,
    feature_pre_acts,
    forward,
    parse_node,
)
from graphs.effects import set_effect_flags, set_measured_effect
from graphs.graph import AttributionGraph
from graphs.metrics import drop_stranded, row_abs_sums, subgraph

log = logging.getLogger("circuits.attribution")
VERIFY_KEY = "verification"


@torch.no_grad()
def verify_edges(graph: AttributionGraph, model: Model, transcoders: nn.Module, *, freeze_attention: bool = False,
                 negligible: float = 0.01, ratio: tuple[float, float] = (0.5, 2.0), tau: float | None = None,
                 batch_size: int = 32) -> AttributionGraph:
    """Measure every edge of ``graph`` (a pruned graph of this model's prompt) by patching; see the module
    docstring. Returns a copy carrying ``measured_effect`` and ``effect_flags`` (``graphs.effects``) and a
    summary in ``metadata["verification"]``; with ``tau``, without the edges that measured too small."""
    start = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Graphs saved before the position policy have features at every position (feature_start 0).
    clean = CleanState.of(model, transcoders, [int(t) for t in graph.tokens],
                          feature_start=int(graph.metadata.get("feature_start", 0)))
    coo = graph.adjacency.tocoo()
    rows, cols, weights = coo.row, coo.col, coo.data.astype(np.float64)
    targets, t_of_edge = np.unique(rows, return_inverse=True)
    sources, s_of_edge = np.unique(cols, return_inverse=True)
    read = _reader(graph, clean, targets)

    def run(edits: Edits | None = None, resume: Resume | None = None) -> ReplacementRun:
        return forward(model, None, clean=clean, edits=edits, attention="frozen" if freeze_attention else "live",
                       features="frozen", errors="clean", logits_to_keep=1, keep_layers=resume is None, resume=resume)

    clean_run = run()
    base = read(clean_run)[0]                                                 # [n_targets]
    measured = np.zeros(len(weights))
    ids = graph.node_ids
    zero = ablation_values(clean)
    first = np.array([max(parse_node(ids[s])[1], 0) for s in sources])      # [n_sources] the layer each enters at
    order = np.argsort(first, kind="stable")                                 # sources in layer order
    rank = np.empty(len(sources), dtype=np.int64)
    rank[order] = np.arange(len(sources))
    edge_rank = rank[s_of_edge]                                              # [n_edges] its source's place in order
    for lo in range(0, len(sources), batch_size):
        chunk = order[lo:lo + batch_size]
        edits = ablation_edits(zero, [[ids[sources[s]]] for s in chunk])
        values = read(run(edits, Resume(int(first[chunk].min()), clean_run)))  # [len(chunk), n_targets]
        mine = (edge_rank >= lo) & (edge_rank < lo + len(chunk))
        effect = base[None] - values
        measured[mine] = effect[edge_rank[mine] - lo, t_of_edge[mine]].double().cpu().numpy()

    scale = row_abs_sums(graph.adjacency, floor=0.0)[rows]                    # [n_edges] each target's Σ|w|
    flags = _flags(weights, measured, negligible * scale, ratio)
    keep = np.ones(len(weights), dtype=bool) if tau is None else np.abs(measured) >= tau * scale
    out = _drop(graph, rows, cols, keep)
    set_measured_effect(out, {(ids[t], ids[s]): m for t, s, m, k in zip(rows, cols, measured, keep) if k})
    set_effect_flags(out, {(ids[t], ids[s]): f for t, s, f, k in zip(rows, cols, flags, keep) if k and f})
    kept_flags = flags[keep]
    summary = {
        "n_edges": int(len(weights)), "n_sources": int(len(sources)), "n_flagged": int((kept_flags != "").sum()),
        "n_sign": int((kept_flags == "sign").sum()), "n_size": int((kept_flags == "size").sum()),
        "n_dropped": int((~keep).sum()), "tau": tau, "negligible": negligible, "ratio": list(ratio),
        "freeze_attention": freeze_attention, "ablation": "zero", "batch_size": batch_size,
        "seconds": round(time.perf_counter() - start, 4),
    }
    out.metadata[VERIFY_KEY] = summary
    log.info("verified %d edges from %d sources: %d flagged (%d sign, %d size), %d dropped in %.2fs",
             summary["n_edges"], summary["n_sources"], summary["n_flagged"], summary["n_sign"], summary["n_size"],
             summary["n_dropped"], summary["seconds"])
    return out


def _reader(graph: AttributionGraph, clean: CleanState, targets: np.ndarray) -> Callable[[ReplacementRun], Tensor]:
    """A function from a patched run to ``[B, n_targets]``: each target's pre-activation or demeaned logit."""
    n, model = graph.nodes, clean.model
    kinds = n["kind"][targets]
    bad = sorted(set(kinds) - {"feature", "logit"})
    if bad:
        raise ValueError(f"the graph has edges into {bad} nodes; only features and logits are targets")
    f, lg = np.flatnonzero(kinds == "feature"), np.flatnonzero(kinds == "logit")
    dev = model.device
    layer, pos, feat = (torch.as_tensor(n[k][targets[f]].astype(np.int64), device=dev)
                        for k in ("layer", "position", "feature"))
    u, u_bias = demeaned_unembedding(model, torch.as_tensor(n["token_id"][targets[lg]]), dev, model.dtype)
    order = torch.as_tensor(np.argsort(np.concatenate([f, lg]), kind="stable"), device=dev)

    def read(run: ReplacementRun) -> Tensor:
        logits = run.final[:, -1] @ u.T + (0.0 if u_bias is None else u_bias)
        return torch.cat([feature_pre_acts(clean, run, layer, pos, feat), logits], dim=1)[:, order]

    return read


def _flags(w: np.ndarray, m: np.ndarray, eps: np.ndarray, ratio: tuple[float, float]) -> np.ndarray:
    """``[n_edges]`` "sign", "size" or "" (agree); the rule is in the module docstring."""
    lo, hi = ratio
    sign = (w * m < 0) & (np.abs(w) > eps) & (np.abs(m) > eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(w != 0, m / w, np.inf)
    size = ~sign & (np.maximum(np.abs(w), np.abs(m)) > eps) & ~((r >= lo) & (r <= hi))
    return np.where(sign, "sign", np.where(size, "size", ""))


def _drop(graph: AttributionGraph, rows: np.ndarray, cols: np.ndarray, keep: np.ndarray) -> AttributionGraph:
    """A copy of ``graph`` with only the ``keep`` edges, and without the nodes that strands (as ``prune`` does)."""
    n = graph.n_nodes
    edges = sp.csr_matrix((keep[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=bool)
    node_mask = np.ones(n, dtype=bool)
    if not keep.all():
        node_mask, edges = drop_stranded(graph, node_mask, edges)
    out = subgraph(graph, node_mask, edges)
    if keep.all():
        out.metadata.pop("pruned_from", None)  # nothing was pruned here; keep what the input said
        if "pruned_from" in graph.metadata:
            out.metadata["pruned_from"] = graph.metadata["pruned_from"]
    return out
