"""Node-level head discovery: ``discover(..., level="nodes")`` — which heads (and MLPs) a task needs."""

from __future__ import annotations

import time
from typing import Literal

import torch

from circuits.discovery.acdc_nodes import acdc_nodes
from circuits.discovery.node_circuit import NodeCircuit
from circuits.models.adapter import Model
from circuits.patching.metrics import faithfulness
from circuits.patching.nodes import NodeAblation, NodePatcher, droppable_nodes, strongest_nodes
from circuits.tasks.task import Task
from transcoders.precision import Precision


def discover_nodes(model: Model, task: Task, *, method: Literal["acdc", "eap", "eap-ig"] = "acdc",
                   tau: float | None = None, ablation: NodeAblation = "mean", metric: Literal["task", "kl"] = "task",
                   candidates: int | None = None, top_n: int | None = None, include_mlps: bool = True,
                   screen_layers: bool = False, max_sweeps: int = 4, precision: Precision = "fp32", batch_size: int = 64,
                   patcher: NodePatcher | None = None, progress: bool = True) -> NodeCircuit:
    """The node circuit of ``model`` for ``task`` (see ``acdc_nodes`` for ACDC's options).

    ``"eap"`` keeps the ``top_n`` nodes of largest |node EAP score| (or those with |score| ≥ tau)
    and measures its faithfulness; ``"acdc"`` tests nodes by patching, optionally only the
    ``candidates`` of largest |score|. ``precision`` is the search's (see ``NodePatcher``); when the
    search ran in bf16, the final faithfulness is measured again in the model's own precision.
    """
    if method == "eap-ig":
        raise ValueError("node-level discovery scores nodes with EAP (a node's score is exactly the sum of "
                         "its outgoing edges' EAP scores); use method='eap' or 'acdc', or level='edges' for EAP-IG")
    t0 = time.perf_counter()
    if patcher is None:
        patcher = NodePatcher(model, task, ablation=ablation, metric=metric, batch_size=batch_size, precision=precision)
    scores = patcher.node_scores() if (method == "eap" or candidates is not None) else None
    t_scores = time.perf_counter() - t0
    if method == "acdc":
        circuit = acdc_nodes(patcher, tau, scores=scores, candidates=candidates, include_mlps=include_mlps,
                             screen_layers=screen_layers, max_sweeps=max_sweeps, progress=progress)
    elif method == "eap":
        circuit = eap_nodes(patcher, scores, tau=tau, top_n=top_n, include_mlps=include_mlps)  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown method {method!r}: use 'acdc' or 'eap'")
    if patcher.bf16:
        # The same ablation as the search (a caller's patcher may carry its own reference set).
        exact = NodePatcher(model, task, ablation=patcher.ablation, metric=patcher.metric_name,
                            reference=patcher.reference, batch_size=patcher.batch_size)
        circuit.info["faithfulness_bf16"] = circuit.faithfulness
        circuit.metric_circuit = float(exact.evaluate(~circuit.kept)[0])
        circuit.faithfulness = faithfulness(circuit.metric_circuit, exact.m_full, exact.m_empty)
        circuit.patcher = exact
    circuit.info.update(task=task.name, model=model.name, ablation=patcher.ablation, metric=patcher.metric_name,
                        mean_within_groups=patcher.ablation == "mean" and patcher.groups is not None,
                        n_prompts=task.n, searched_in="bf16" if patcher.bf16 else "fp32", seconds_setup_and_scores=t_scores,
                        seconds_total=time.perf_counter() - t0)
    return circuit


def eap_nodes(patcher: NodePatcher, scores: torch.Tensor, *, tau: float | None, top_n: int | None,
               include_mlps: bool) -> NodeCircuit:
    g = patcher.graph
    candidate, is_mlp = droppable_nodes(g, include_mlps)
    if top_n is not None:
        kept = strongest_nodes(scores, candidate, top_n)
    else:
        tau = 0.01 * abs(patcher.m_full - patcher.m_empty) if tau is None else tau
        kept = candidate & (scores.abs() >= tau)
    kept[0] = True
    if not include_mlps:
        kept |= is_mlp
    m = float(patcher.evaluate(~kept)[0])
    f = faithfulness(m, patcher.m_full, patcher.m_empty)
    return NodeCircuit(patcher, kept, torch.full((g.n_src,), float("nan"), dtype=torch.float64), scores, f, m, "eap",
                       info={"tau": tau, "top_n": top_n, "include_mlps": include_mlps})
