"""Edge-level head discovery: which edges between heads, MLPs, the input and the logits a task needs."""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import Tensor

from circuits.discovery.heads.acdc import acdc
from circuits.discovery.heads.circuit import Circuit
from circuits.discovery.heads.node_circuit import NodeCircuit
from circuits.discovery.heads.eap import attribution_circuit
from circuits.discovery.options import FIXED, check_method, check_patcher, reject
from circuits.models.adapter import Model
from circuits.patching.edge_patcher import Ablation, EdgePatcher, MetricName
from circuits.tasks.task import Task

EdgeMethod = Literal["acdc", "eap", "eap-ig"]


def discover_edges(model: Model, task: Task, *, method: EdgeMethod = "acdc", tau: float | None = None,
                   top_n: int | None = None, candidates: int | None = None,
                   order: Literal["topological", "scores"] | None = None,
                   scores_method: Literal["eap", "eap-ig"] | None = None, steps: int | None = None,
                   batch: int | None = None, within: NodeCircuit | Circuit | Tensor | None = None,
                   z: float | None | str = "default", screen_targets: bool | None = None,
                   floor: float | None = None, controls: bool | None = None, max_chunks: int | None = None,
                   ablation: Ablation | None = None, metric: MetricName | None = None,
                   split_qkv: bool | None = None, batch_size: int | None = None, patcher: EdgePatcher | None = None,
                   progress: bool = True) -> Circuit:
    """The edge circuit of ``model`` for ``task``: a ``Circuit`` of kept edges between the input,
    attention heads (their q/k/v inputs apart with ``split_qkv``), MLPs and the logits.

    A keyword that does not apply to ``method`` raises ``ValueError`` rather than being ignored.

    Args:
        method: ``"acdc"`` (patch edges out one by one; every kept edge carries its measured effect),
            ``"eap"`` or ``"eap-ig"`` (attribution scores, one backward pass or ``steps`` of them).
        tau: threshold in units of the metric (ACDC: |Δm| to keep an edge; EAP: |score| to keep an
            edge); default 1% of |m(M) − m(∅)|.
        top_n: EAP/EAP-IG: keep the n strongest edges instead of thresholding (then no ``tau``).
        candidates: ACDC: test only the n edges with the largest attribution |score| (scored with
            ``scores_method``); every other edge is removed untested.
        order: ACDC: ``"topological"`` (default) or ``"scores"`` (a node's edges least important first).
        scores_method: ACDC with ``candidates`` or ``order="scores"``: how edges are scored,
            ``"eap-ig"`` (default) or ``"eap"``.
        steps: EAP-IG integration steps (default 5), also when ACDC scores its candidates with EAP-IG.
        batch: ACDC: edge sets per forward pass (default 4 on a GPU, 1 on a CPU).
        within: ACDC: test only the edges of this circuit, every other edge removed up front: a
            ``NodeCircuit`` (every edge among its nodes: ``discover_nodes`` first, then edge ACDC inside
            its result), a ``Circuit`` (its kept edges) or a bool ``[n_src, n_dst]``.
        z: ACDC: decide a test on the first prompt chunks (``batch_size`` prompts each) once ``mean ± z × SE``
            of the per-prompt effects lies on one side of tau (default 3.0); None reads every prompt for
            every test (see ``acdc``).
        screen_targets: ACDC: group testing, all the untested edges into an input at once, then halves of a
            group that matters, down to single edges (default False; see ``acdc``).
        floor: ACDC: a faithfulness to keep: a removal whose loss would take the circuit under it is
            rejected too, and a result still under it has its costliest removals undone (see ``acdc``;
            default None, ACDC's rule alone).
        controls: ACDC with ``z``: each prompt's EAP scores (one gradient pass over the prompts) as control
            variates for the early decisions (see ``acdc``; default False).
        max_chunks: ACDC with ``z``: a test reads at most this many prompt chunks, and one still undecided
            there is decided by its mean on them (see ``acdc``; default None, every prompt if need be).
        ablation: ``"resample"`` (default; the paired corrupted prompt; with ``within=`` a ``NodeCircuit``, the
            ablation it was found with), ``"mean"`` or ``"zero"``.
        metric: ``"task"`` (default; the task's metric), ``"kl"`` (to the clean output) or ``"prob"``.
        split_qkv: separate q/k/v inputs per head (default; ACDC/MIB) or one input per head.
        batch_size: prompts per forward pass (default 16 for ACDC, also the chunk a test reads first; 64 else).
        patcher: reuse an ``EdgePatcher`` built for ``model`` and ``task``: its ablation, metric, split_qkv
            and batch size apply, so those keywords must be left out or agree with it.
    """
    check_method("discover_edges", method, ("acdc", "eap", "eap-ig"))
    if order not in (None, "topological", "scores"):
        raise ValueError(f"discover_edges: unknown order {order!r}: use 'topological' or 'scores'")
    if scores_method not in (None, "eap", "eap-ig"):
        raise ValueError(f"discover_edges: unknown scores_method {scores_method!r}: use 'eap' or 'eap-ig'")
    if z is not None and z != "default" and (not isinstance(z, (int, float)) or z <= 0):
        raise ValueError(f"discover_edges: z must be a positive number of standard errors or None, got {z!r}")
    if method == "acdc":
        reject("discover_edges(method='acdc')", {"top_n": top_n},
               "ACDC keeps every edge whose removal moves the metric by at least tau; to test only the "
               "strongest edges pass candidates=, or use method='eap' or 'eap-ig' for top_n=")
        scored = candidates is not None or order == "scores"
        if not scored:
            reject("discover_edges(method='acdc') without candidates= or order='scores'",
                   {"scores_method": scores_method, "steps": steps},
                   "ACDC scores edges only to pick its candidates= or for order='scores'")
        elif scores_method == "eap":
            reject("discover_edges(method='acdc', scores_method='eap')", {"steps": steps},
                   "EAP has no integration steps (EAP-IG has)")
    else:
        reject(f"discover_edges(method={method!r})",
               {"candidates": candidates, "order": order, "scores_method": scores_method, "batch": batch,
                "within": within, "z": None if z == "default" else z, "screen_targets": screen_targets,
                "floor": floor, "controls": controls, "max_chunks": max_chunks},
               "they are ACDC's (method='acdc'); EAP and EAP-IG score every edge at once")
        if method == "eap":
            reject("discover_edges(method='eap')", {"steps": steps},
                   "EAP has no integration steps; use method='eap-ig' for steps=")
        if top_n is not None:
            reject("discover_edges with top_n=", {"tau": tau},
                   "top_n= keeps the n strongest edges whatever their score; pass tau= or top_n=, not both")
    t0 = time.perf_counter()
    if isinstance(within, NodeCircuit) and ablation is None and patcher is None:
        ablation = within.patcher.ablation  # type: ignore[assignment]
    if patcher is None:
        patcher = EdgePatcher(model, task, ablation="resample" if ablation is None else ablation,
                          metric="task" if metric is None else metric,
                          split_qkv=True if split_qkv is None else split_qkv,
                          batch_size=(16 if method == "acdc" else 64) if batch_size is None else batch_size)
    else:
        check_patcher("discover_edges", patcher, EdgePatcher, model, task, lambda p: {
            "ablation": (ablation, p.ablation), "metric": (metric, p.metric_name),
            "split_qkv": (split_qkv, p.graph.split_qkv), "batch_size": (batch_size, FIXED)})
    t_setup = time.perf_counter() - t0
    steps = 5 if steps is None else steps
    if method == "acdc":
        order = "topological" if order is None else order
        if controls and z is None:
            raise ValueError("controls=True steers z's early decisions, and z=None reads every prompt: pass z= "
                             "or drop controls")
        scores = None
        if candidates is not None or order == "scores":
            scoring = "eap-ig" if scores_method is None else scores_method
            scores = patcher.edge_scores(scoring, steps=steps, progress=progress)
        circuit = acdc(patcher, tau, scores=scores, candidates=candidates, within=_edge_set(within, patcher),
                       order=order, batch=batch, z=3.0 if z == "default" else z,  # type: ignore[arg-type]
                       screen_targets=bool(screen_targets), floor=floor, max_chunks=max_chunks, progress=progress,
                       controls=patcher.edge_scores("eap", per_prompt=True, progress=progress) if controls else None)
    else:
        circuit = attribution_circuit(patcher, method, tau=tau, top_n=top_n, steps=steps, progress=progress)
    circuit.info.update(task=task.name, model=model.name, ablation=patcher.ablation, metric=patcher.metric_name,
                        n_prompts=task.n, split_qkv=patcher.graph.split_qkv, seconds_setup=t_setup,
                        seconds_total=time.perf_counter() - t0)
    return circuit


def _edge_set(within: NodeCircuit | Circuit | Tensor | None, patcher: EdgePatcher) -> Tensor | None:
    """``within=`` as a bool ``[n_src, n_dst]`` on the patcher's graph."""
    if within is None:
        return None
    if isinstance(within, NodeCircuit):
        if not patcher.graph.split_qkv:
            raise ValueError("within= a NodeCircuit gives q/k/v-split edges; leave split_qkv at True")
        within = within.as_edge_circuit()
    edges = within.kept if isinstance(within, Circuit) else within
    g = patcher.graph
    if tuple(edges.shape) != (g.n_src, g.n_dst):
        raise ValueError(f"within= has {tuple(edges.shape)} edges, the patcher's graph [{g.n_src}, {g.n_dst}]: "
                         "pass a circuit of this model with split_qkv alike")
    return edges.to(torch.bool)
