"""Circuit discovery at feature granularity: EAP, EAP-IG and ACDC over replacement-model nodes.

Nodes are token embeddings, transcoder features and errors, each at a position (prompts of a
task share one length, so positions line up); ablation fixes a node to its value on the paired
corrupted prompt, and kept nodes run live (see ``patcher``).

- EAP / EAP-IG: score every node (``scores.node_scores``); keep those with
  |score| ≥ tau (or the ``top_n`` strongest).
- ACDC: testing every feature is infeasible (L·P·F nodes), so only the ``candidates`` nodes with
  the largest EAP-IG |score| are tested; every other node is ablated from the start. Candidates
  are visited in reverse topological order (last layer first, embeddings last; within a layer,
  least important first), each removed on top of the removals so far, and kept when its removal
  moves the metric by at least tau. Kept nodes carry that measured change as their effect. A
  test at layer l replays the layers below l from one recorded run (per-layer transcoders).

Then, for every method: edges among the kept nodes and into the logits get EAP edge scores
(``scores.edge_scores``; at the clean input whatever the method, so one backward pass per
kept node), those with |weight| ≥ ``edge_tau`` are kept and their effects
measured by path patching (``edges``), and the circuit's faithfulness is measured by
ablating everything else.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

from circuits.discovery.features.edges import measure_edges
from circuits.discovery.features.graph import LOGITS_NAME, FeatureCircuit, FeatureEdge, FeatureNode
from circuits.discovery.features.patcher import Ablation, FeaturePatcher
from circuits.discovery.features.scores import LOGITS, edge_scores, node_scores
from circuits.discovery.options import check_method, check_patcher, reject
from circuits.models.adapter import Model
from circuits.patching.metrics import faithfulness
from circuits.tasks.task import Task


def discover_features(model: Model, task: Task, transcoders: nn.Module, *,
                      method: Literal["acdc", "eap", "eap-ig"] = "eap-ig", tau: float | None = None,
                      top_n: int | None = None, candidates: int | None = None, steps: int | None = None,
                      batch: int | None = None, edge_tau: float | None = None, edges: bool = True,
                      measure: bool = True, ablation: Ablation | None = None, batch_size: int | None = None,
                      labels: Any = None, patcher: FeaturePatcher | None = None,
                      progress: bool = True) -> FeatureCircuit:
    """Find the feature-level circuit of ``model`` (with ``transcoders`` in its MLP slots) for ``task``:
    a ``FeatureCircuit`` of kept nodes (features, errors, token embeddings, each at a position) and
    the edges among them and into the logits.

    A keyword that does not apply to ``method`` raises ``ValueError`` rather than being ignored.

    Args:
        method: ``"eap-ig"`` (default), ``"eap"`` or ``"acdc"``.
        tau: in units of the metric (EAP: |score| to keep a node; ACDC: |Δm| to keep one); default
            1% of |m(M) − m(∅)|.
        top_n: EAP/EAP-IG: keep the n nodes with the largest |score| instead.
        candidates: ACDC: nodes tested (largest EAP-IG |score|; default 64); the rest are ablated untested.
        steps: EAP-IG integration steps (also ACDC's candidate scoring; default 5).
        batch: ACDC: speculative cumulative removals per forward pass (default 1).
        edge_tau: keep edges with |weight| ≥ this; default tau.
        edges: score edges among the kept nodes (one backward pass per kept node: turn off for
            circuits of thousands of nodes).
        measure: measure every kept node's and edge's effect (EAP: one variant per node; edges:
            two per edge); else NaN. ACDC nodes always carry the effect it measured.
        ablation: what an ablated node becomes (``circuits.ablation``): ``"resample"`` (default; its value
            on the paired corrupted prompt), ``"mean"`` (its per-position mean over the corrupted prompts,
            within the task's template groups) or ``"zero"``.
        batch_size: prompts per forward pass (default 16).
        labels: ``circuits.labels.FeatureLabels`` or ``{(layer, feature): text}`` for node labels.
        patcher: reuse a ``FeaturePatcher`` built for ``model``, ``task`` and ``transcoders``: its
            ablation and batch size apply, so those keywords must be left out or agree with it.
    """
    check_method("discover_features", method, ("acdc", "eap", "eap-ig"))
    if method == "acdc":
        reject("discover_features(method='acdc')", {"top_n": top_n},
               "ACDC keeps every candidate whose removal moves the metric by at least tau; to test more or "
               "fewer nodes pass candidates=, or use method='eap' or 'eap-ig' for top_n=")
    else:
        reject(f"discover_features(method={method!r})", {"candidates": candidates, "batch": batch},
               "they are ACDC's (method='acdc'); EAP and EAP-IG score every node at once")
        if method == "eap":
            reject("discover_features(method='eap')", {"steps": steps},
                   "EAP has no integration steps; use method='eap-ig' for steps=")
    if not edges:
        reject("discover_features(edges=False)", {"edge_tau": edge_tau}, "no edges are scored")
    t0 = time.perf_counter()
    if patcher is None:
        p = FeaturePatcher(model, task, transcoders, ablation="resample" if ablation is None else ablation,
                           batch_size=16 if batch_size is None else batch_size)
    else:
        check_patcher("discover_features", patcher, FeaturePatcher, model, task, lambda p: {
            "ablation": (ablation, p.ablation), "batch_size": (batch_size, p.batch_size)})
        p = patcher
    candidates = 64 if candidates is None else candidates
    steps = 5 if steps is None else steps
    batch = 1 if batch is None else batch
    t_setup = time.perf_counter() - t0
    if tau is None:
        tau = 0.01 * abs(p.m_full - p.m_empty)
    scores, grads = node_scores(p, "eap-ig" if method == "acdc" else method, steps=steps)
    t_scores = time.perf_counter() - t0 - t_setup
    info: dict[str, Any] = {"tau": tau, "steps": steps if method != "eap" else 0}
    if method == "acdc":
        kept, effects, m_c, acdc_info = _acdc(p, scores, tau, candidates, batch, progress)
        info.update(acdc_info)
    else:
        kept = _top(scores, top_n) if top_n is not None else scores.abs() >= tau
        m_c = float(p.evaluate(kept[None])[0])
        effects = _effects(p, kept, m_c, progress) if measure else torch.full_like(scores, math.nan)
        info["top_n"] = -1 if top_n is None else top_n
    t_edges = time.perf_counter()
    ids = kept.nonzero().flatten().tolist()
    edge_tau = tau if edge_tau is None else edge_tau
    scored = edge_scores(p, ids, grads) if ids and edges else {}
    weights = {e: w for e, w in scored.items() if abs(w) >= edge_tau}
    info["seconds_edges"] = time.perf_counter() - t_edges
    pairs = list(weights)
    measured = measure_edges(p, kept, pairs) if measure and pairs else torch.full((len(pairs),), math.nan)
    found = {e: (weights[e], float(v)) for e, v in zip(pairs, measured)}
    info["seconds_edge_effects"] = time.perf_counter() - t_edges - info["seconds_edges"]
    circuit = _build(p, kept, scores, effects, found, m_c, method, _label_map(labels))
    circuit.info.update(info, task=task.name, model=model.name, ablation=p.ablation, n_prompts=task.n,
                        edge_tau=edge_tau, seconds_setup=t_setup, seconds_scoring=t_scores,
                        seconds_total=time.perf_counter() - t0)
    return circuit


def _top(scores: Tensor, n: int) -> Tensor:
    """The ``n`` nodes with the largest |score| (ties by index, so deterministic)."""
    kept = torch.zeros_like(scores, dtype=torch.bool)
    order = torch.argsort(scores.abs(), descending=True, stable=True)
    kept[order[:max(0, min(n, len(scores)))]] = True
    return kept


def _effects(p: FeaturePatcher, kept: Tensor, m_c: float, progress: bool) -> Tensor:
    """``[n_nodes]`` m(C − n) − m(C) for every kept node n (NaN elsewhere), one batched pass."""
    ids = kept.nonzero().flatten()
    effects = torch.full(kept.shape, math.nan, dtype=torch.float64)
    if len(ids):
        variants = kept[None].repeat(len(ids), 1)
        variants[torch.arange(len(ids)), ids] = False
        effects[ids] = p.evaluate(variants, progress=progress) - m_c
    return effects


def _acdc(p: FeaturePatcher, scores: Tensor, tau: float, candidates: int, batch: int,
          progress: bool) -> tuple[Tensor, Tensor, float, dict[str, Any]]:
    """ACDC over the ``candidates`` top-scoring nodes; see the module docstring.

    Returns kept ``[n_nodes]``, effects ``[n_nodes]`` (NaN where not kept), m(C) and facts."""
    t0 = time.perf_counter()
    cand = _top(scores, candidates)
    kept = cand.clone()
    # Every test at layer l differs from the start state only from layer l on (decisions go top
    # down), so it replays the layers below l from one recorded run (PLTs; a CLT runs them all).
    current, base = p.base_run(kept)
    resume = not p.tc.writes_across_layers  # a PLT: layers can be replayed
    start = current
    layers = p.index.layers()
    todo = sorted(cand.nonzero().flatten().tolist(), key=lambda i: (-int(layers[i]), float(scores[i].abs()), i))
    effects = torch.full(scores.shape, math.nan, dtype=torch.float64)
    n_evaluations, i = 0, 0
    bar = tqdm(total=len(todo), desc=f"ACDC features tau={tau:.3g}", file=sys.stderr, disable=not progress)
    while i < len(todo):
        chunk = todo[i:i + batch]
        # Speculative: variant j removes chunk[0..j] on top of the current state.
        variants = kept[None].repeat(len(chunk), 1)
        for j in range(len(chunk)):
            variants[j:, chunk[j]] = False
        layer = min(int(layers[n]) for n in chunk) if resume else 0   # todo runs last layer first
        values = p.evaluate(variants, base=base, start_layer=max(layer, 0)).tolist()
        n_evaluations += 1
        for j, node in enumerate(chunk):
            i += 1
            bar.update(1)
            effect = values[j] - current
            if abs(effect) < tau:
                kept[node] = False
                current = values[j]
            else:  # kept: later variants assumed it removed, so re-run from the next node
                effects[node] = effect
                break
    bar.close()
    fc = faithfulness(start, p.m_full, p.m_empty)
    return kept, effects, current, {"candidates": candidates, "faithfulness_candidates": fc, "resumed": resume,
                                    "nodes_tested": len(todo), "evaluations": n_evaluations, "batch": batch,
                                    "seconds_acdc": time.perf_counter() - t0}


def _label_map(labels: Any) -> Mapping[tuple[int, int], str]:
    if labels is None:
        return {}
    return labels.mapping() if hasattr(labels, "mapping") else labels


def _build(p: FeaturePatcher, kept: Tensor, scores: Tensor, effects: Tensor,
           edges: dict[tuple[int, int], tuple[float, float]], m_c: float, method: str,
           labels: Mapping[tuple[int, int], str]) -> FeatureCircuit:
    idx = p.index
    first = p.task.clean[0].tolist()
    decode = p.model.tokenizer.decode
    nodes: dict[int, FeatureNode] = {}
    order = sorted(kept.nonzero().flatten().tolist(), key=lambda i: (idx.describe(i)[1], idx.describe(i)[2], i))
    for i in order:
        kind, layer, pos, f = idx.describe(i)
        if kind == "feature":
            delta = float((p.ablated.acts[layer, :, pos, f] - p.clean.acts[layer, :, pos, f]).float().mean())
            label = labels.get((layer, f), "")
        elif kind == "error":
            change = p.ablated.errors[layer, :, pos] - p.clean.errors[layer, :, pos]
            delta = float(change.float().norm(dim=-1).mean())
            label = ""
        else:
            delta = float((p.ablated.embed[:, pos] - p.clean.embed[:, pos]).float().norm(dim=-1).mean())
            label = decode([first[pos]])
        nodes[i] = FeatureNode(kind, layer, pos, f, float(scores[i]), float(effects[i]), delta, label)
    kept_edges = [FeatureEdge(nodes[u].name, LOGITS_NAME if d == LOGITS else nodes[d].name, w, e)
                  for (u, d), (w, e) in edges.items()]
    kept_edges.sort(key=lambda e: -abs(e.weight))
    f = faithfulness(m_c, p.m_full, p.m_empty)
    return FeatureCircuit(list(nodes.values()), kept_edges, f, m_c, p.m_full, p.m_empty, method,
                          p.model.n_layers, scores=scores, index=p.index)
