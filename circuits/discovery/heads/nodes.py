"""Node-level head discovery: which heads (and MLPs) a task needs."""

from __future__ import annotations

import time
from typing import Literal

import torch

from circuits.discovery.heads.acdc_nodes import acdc_nodes
from circuits.discovery.heads.node_circuit import NodeCircuit
from circuits.discovery.options import FIXED, check_method, check_patcher, reject
from circuits.models.adapter import Model
from circuits.patching.metrics import faithfulness
from circuits.patching.nodes import NodeAblation, NodePatcher, droppable_nodes, strongest_nodes
from circuits.tasks.task import Task
from transcoders.precision import Precision, use_bf16


def discover_nodes(model: Model, task: Task, *, method: Literal["acdc", "eap"] = "acdc", tau: float | None = None,
                   top_n: int | None = None, candidates: int | None = None, include_mlps: bool = True,
                   screen_layers: bool | None = None, max_sweeps: int | None = None, z: float | None | str = "default",
                   ablation: NodeAblation | None = None, metric: Literal["task", "kl"] | None = None,
                   precision: Precision | None = None, batch_size: int | None = None,
                   patcher: NodePatcher | None = None, controls: bool | None = None, max_chunks: int | None = None,
                   progress: bool = True) -> NodeCircuit:
    """The node circuit of ``model`` for ``task``: a ``NodeCircuit`` of which heads and MLPs run,
    every other one ablated (as Wang et al.'s IOI circuit).

    ``"eap"`` keeps the ``top_n`` nodes of largest |node EAP score| (or those with |score| ≥ tau)
    and measures its faithfulness; ``"acdc"`` tests nodes by patching, optionally only the
    ``candidates`` of largest |score| (see ``acdc_nodes`` for ``screen_layers`` and ``max_sweeps``).
    A keyword that does not apply to ``method`` raises ``ValueError`` rather than being ignored.

    Args:
        ablation: ``"mean"`` (default; per position, within the task's template groups), ``"resample"``
            or ``"zero"``. metric: ``"task"`` (default) or ``"kl"``.
        include_mlps: MLPs are candidates too (else they always run).
        screen_layers, max_sweeps: ACDC only (defaults False and 4).
        z: ACDC only: decide a test on the first prompt chunks once the per-prompt effects, ``mean ± z × SE``,
            lie on one side of tau (default 3.0); None reads every prompt for every test (see ``acdc_nodes``).
        controls: ACDC with ``z`` only (default False): each prompt's node EAP scores, taken in the clean pass,
            serve as control variates for those early decisions (``circuits.discovery.heads.chunked``). On
            IOI they did not pay: 25.6 full passes against 25.4, and a different circuit (BENCHMARKS.md).
        max_chunks: ACDC with ``z`` only (default None): a test reads at most this many prompt chunks, and
            one still undecided there is decided by its mean on them (``circuits.discovery.heads.chunked``).
            On IOI, 1 (every test decided on 8 prompts) cut the work from 25.4 full passes to 9.6 and kept
            25 heads (f 0.99) instead of 20 (f 0.86) (BENCHMARKS.md).
        precision: the search's (see ``NodePatcher``; default ``"fp32"``): when the search ran in bf16,
            the final faithfulness is measured again in the model's own precision.
        batch_size: prompts per forward pass (default 8), also the chunk an ACDC test reads first: 8 reads
            a fifth less than 16 on IOI for the same circuit, and ran 75 s against 86 on 2 idle AVX2 cores (BENCHMARKS.md).
        patcher: reuse a ``NodePatcher`` built for ``model`` and ``task``: its ablation, metric,
            precision and batch size apply, so those keywords must be left out or agree with it.
    """
    if method == "eap-ig":
        raise ValueError("node-level discovery scores nodes with EAP (a node's score is exactly the sum of "
                         "its outgoing edges' EAP scores); use method='eap' or 'acdc', or discover_edges for EAP-IG")
    check_method("discover_nodes", method, ("acdc", "eap"))
    if method == "acdc":
        reject("discover_nodes(method='acdc')", {"top_n": top_n},
               "ACDC keeps every node whose removal moves the metric by at least tau; to test only the "
               "strongest nodes pass candidates=, or use method='eap' for top_n=")
    else:
        reject("discover_nodes(method='eap')",
               {"candidates": candidates, "screen_layers": screen_layers, "max_sweeps": max_sweeps,
                "z": None if z == "default" else z, "controls": controls, "max_chunks": max_chunks},
               "they are ACDC's (method='acdc'); EAP scores every node at once")
        if top_n is not None:
            reject("discover_nodes with top_n=", {"tau": tau},
                   "top_n= keeps the n strongest nodes whatever their score; pass tau= or top_n=, not both")
    z = 3.0 if z == "default" else z
    if z is None and controls:
        raise ValueError("controls=True steers z's early decisions, and z=None reads every prompt: pass z= or drop controls")
    controls = method == "acdc" and z is not None and bool(controls)
    t0 = time.perf_counter()
    if patcher is None:
        patcher = NodePatcher(model, task, ablation="mean" if ablation is None else ablation,
                              metric="task" if metric is None else metric,
                              batch_size=8 if batch_size is None else batch_size,
                              precision="fp32" if precision is None else precision,
                              scores=method == "eap" or candidates is not None or controls)  # in its clean pass
    else:
        asked = None if precision is None else ("bf16" if use_bf16(model.device, precision) else "fp32")
        check_patcher("discover_nodes", patcher, NodePatcher, model, task, lambda p: {
            "ablation": (ablation, p.ablation), "metric": (metric, p.metric_name),
            "precision": (asked, "bf16" if p.bf16 else "fp32"), "batch_size": (batch_size, FIXED)})
    screen_layers = False if screen_layers is None else screen_layers
    max_sweeps = 4 if max_sweeps is None else max_sweeps
    scores = patcher.node_scores() if (method == "eap" or candidates is not None) else None
    prompt_scores = patcher.prompt_scores() if controls else None
    t_scores = time.perf_counter() - t0
    if method == "acdc":
        circuit = acdc_nodes(patcher, tau, scores=scores, candidates=candidates, include_mlps=include_mlps,
                             screen_layers=screen_layers, max_sweeps=max_sweeps,
                             z=z, controls=prompt_scores, max_chunks=max_chunks,  # type: ignore[arg-type]
                             progress=progress)
    else:
        circuit = eap_nodes(patcher, scores, tau=tau, top_n=top_n, include_mlps=include_mlps)  # type: ignore[arg-type]
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
