"""Circuit discovery at head granularity: ACDC, EAP and EAP-IG over the ``HeadGraph`` of a model."""

from __future__ import annotations

import time
from typing import Literal

from circuits.discovery.acdc import acdc
from circuits.discovery.circuit import Circuit
from circuits.discovery.eap import attribution_circuit, measure_effects
from circuits.discovery.prune import prune_dead, reaches_logits, top_edges
from circuits.models.adapter import Model
from circuits.patching.patcher import Ablation, MetricName, Patcher
from circuits.tasks.task import Task

Method = Literal["acdc", "eap", "eap-ig"]


def discover(model: Model, task: Task, *, granularity: Literal["heads", "features"] = "heads",
             method: Method = "acdc", tau: float | None = None, ablation: Ablation = "resample",
             metric: MetricName = "task", split_qkv: bool = True, top_n: int | None = None,
             candidates: int | None = None, order: Literal["topological", "scores"] = "topological",
             scores_method: Literal["eap", "eap-ig"] = "eap-ig", steps: int = 5, batch: int | None = None,
             batch_size: int = 64, patcher: Patcher | None = None, progress: bool = True) -> Circuit:
    """Find the circuit of ``model`` for ``task``.

    Args:
        granularity: ``"heads"`` (attention heads and MLPs of the original model). ``"features"``
            needs transcoders and arrives with ``trace``.
        method: ``"acdc"`` (patch edges out one by one), ``"eap"`` or ``"eap-ig"`` (attribution scores).
        tau: threshold in units of the metric (ACDC: |Δm| to keep an edge; EAP: |score| to keep an
            edge); default 1% of |m(M) − m(∅)|.
        ablation: ``"resample"`` (paired corrupted prompt), ``"mean"`` or ``"zero"``.
        metric: ``"task"`` (the task's metric), ``"kl"`` (to the clean output) or ``"prob"``.
        split_qkv: separate q/k/v inputs per head (ACDC/MIB) or one input per head.
        top_n: EAP/EAP-IG: keep the n strongest edges instead of thresholding.
        candidates: ACDC: test only the n edges with the largest attribution |score| (scored with
            ``scores_method``); every other edge is removed untested.
        order: ACDC: ``"scores"`` tests a node's edges least important first.
        steps: EAP-IG integration steps. batch: ACDC edge sets per forward pass (default 4 on a
            GPU, 1 on a CPU).
        batch_size: prompts per forward pass. patcher: reuse one (its ablation, metric and
            split_qkv then apply).
    """
    if granularity == "features":
        raise NotImplementedError("feature-level discovery needs transcoders and lands with `trace`; for now use "
                                  "granularity='heads'")
    if granularity != "heads":
        raise ValueError(f"unknown granularity {granularity!r}: use 'heads' (or 'features' once trace lands)")
    if method not in ("acdc", "eap", "eap-ig"):
        raise ValueError(f"unknown method {method!r}: use 'acdc', 'eap' or 'eap-ig'")
    t0 = time.perf_counter()
    if patcher is None:
        patcher = Patcher(model, task, ablation=ablation, metric=metric, split_qkv=split_qkv, batch_size=batch_size)
    t_setup = time.perf_counter() - t0
    if method == "acdc":
        scores = None
        if candidates is not None or order == "scores":
            scores = patcher.edge_scores(scores_method, steps=steps, progress=progress)
        circuit = acdc(patcher, tau, scores=scores, candidates=candidates, order=order, batch=batch, progress=progress)
    else:
        circuit = attribution_circuit(patcher, method, tau=tau, top_n=top_n, steps=steps, progress=progress)
    circuit.info.update(task=task.name, model=model.name, ablation=patcher.ablation, metric=patcher.metric_name,
                        n_prompts=task.n, split_qkv=patcher.graph.split_qkv, seconds_setup=t_setup,
                        seconds_total=time.perf_counter() - t0)
    return circuit


__all__ = ["Circuit", "Method", "acdc", "attribution_circuit", "discover", "measure_effects", "prune_dead",
           "reaches_logits", "top_edges"]
