"""Circuit discovery: ACDC, EAP and EAP-IG over the ``HeadGraph`` of a model (heads), or over the
features, errors and token embeddings of its replacement model (features)."""

from __future__ import annotations

import time
from typing import Literal

from torch import nn

from circuits.discovery.acdc import acdc
from circuits.discovery.circuit import Circuit
from circuits.discovery.eap import attribution_circuit, measure_effects
from circuits.discovery.feature_graph import FeatureCircuit, FeatureEdge, FeatureNode
from circuits.discovery.feature_patch import FeaturePatcher
from circuits.discovery.features import discover_features
from circuits.discovery.node_circuit import NodeCircuit
from circuits.discovery.nodes import discover_nodes
from circuits.discovery.prune import prune_dead, reaches_logits, top_edges
from circuits.models.adapter import Model
from circuits.patching.patcher import Ablation, MetricName, Patcher
from circuits.tasks.task import Task
from transcoders.precision import Precision

Method = Literal["acdc", "eap", "eap-ig"]


def discover(model: Model, task: Task, *, granularity: Literal["heads", "features"] = "heads",
             method: Method = "acdc", tau: float | None = None, ablation: Ablation = "resample",
             metric: MetricName = "task", split_qkv: bool = True, top_n: int | None = None,
             candidates: int | None = None, order: Literal["topological", "scores"] = "topological",
             scores_method: Literal["eap", "eap-ig"] = "eap-ig", steps: int = 5, batch: int | None = None,
             batch_size: int = 64, patcher: Patcher | None = None, transcoders: nn.Module | None = None,
             level: Literal["edges", "nodes"] = "edges", include_mlps: bool = True, screen_layers: bool = False,
             precision: Precision = "fp32", progress: bool = True) -> Circuit | FeatureCircuit | NodeCircuit:
    """Find the circuit of ``model`` for ``task``.

    Args:
        granularity: ``"heads"`` (attention heads and MLPs of the original model) or ``"features"``
            (transcoder features, errors and token embeddings of the replacement model, one node per
            position; returns a ``FeatureCircuit``, see ``circuits.discovery.features``).
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
        level: heads only: ``"edges"`` (a ``Circuit`` of kept edges) or ``"nodes"`` (a ``NodeCircuit``:
            which heads and MLPs run, every other one ablated, as Wang et al.'s IOI circuit; methods
            ``"acdc"`` or ``"eap"``; ``candidates`` and ``top_n`` count nodes, scored by node EAP).
        include_mlps, screen_layers: node level: see ``acdc_nodes``. precision: node level:
            ``"auto"`` searches in bf16 where the hardware runs it faster (about 2.5x on an AVX-512
            BF16 CPU; never on AVX2, where bf16 is emulated), and the circuit's faithfulness is
            then re-measured in the model's precision; ``"fp32"`` (default) or ``"bf16"`` force it.
    """
    if granularity == "features":
        if patcher is not None:
            raise ValueError("patcher= is a head-level Patcher; to reuse work at feature level call "
                             "discover_features(model, task, transcoders, patcher=FeaturePatcher(model, task, transcoders))")
        return _discover_features(model, task, method=method, tau=tau, ablation=ablation, metric=metric,
                                  top_n=top_n, candidates=candidates, steps=steps, batch=batch,
                                  batch_size=batch_size, transcoders=transcoders, progress=progress)
    if granularity != "heads":
        raise ValueError(f"unknown granularity {granularity!r}: use 'heads' or 'features'")
    if method not in ("acdc", "eap", "eap-ig"):
        raise ValueError(f"unknown method {method!r}: use 'acdc', 'eap' or 'eap-ig'")
    if level == "nodes":
        return discover_nodes(model, task, method=method, tau=tau, ablation=ablation, metric=metric,
                              candidates=candidates, top_n=top_n, include_mlps=include_mlps,
                              screen_layers=screen_layers, precision=precision, batch_size=batch_size,
                              progress=progress)
    if level != "edges":
        raise ValueError(f"unknown level {level!r}: use 'edges' or 'nodes'")
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


def _discover_features(model: Model, task: Task, *, method: Method, tau: float | None, ablation: Ablation,
                       metric: MetricName, top_n: int | None, candidates: int | None, steps: int, batch: int | None,
                       batch_size: int, transcoders: nn.Module | None, progress: bool) -> FeatureCircuit:
    from circuits.attribution.checks import default_transcoders

    if metric != "task":
        raise ValueError(f"feature-level discovery reads the task's metric; got metric={metric!r}. "
                         "Fix: pass metric='task' (the default).")
    transcoders = default_transcoders(model) if transcoders is None else transcoders
    return discover_features(model, task, transcoders, method=method, tau=tau, top_n=top_n,
                             candidates=64 if candidates is None else candidates, steps=steps,
                             batch=1 if batch is None else batch, batch_size=min(batch_size, 16), ablation=ablation,
                             progress=progress)


__all__ = ["NodeCircuit", "discover_nodes", "Circuit", "FeatureCircuit", "FeatureEdge", "FeatureNode", "FeaturePatcher", "Method", "acdc",
           "attribution_circuit", "discover", "discover_features", "measure_effects", "prune_dead",
           "reaches_logits", "top_edges"]
