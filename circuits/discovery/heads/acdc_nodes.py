"""ACDC over nodes: which attention heads (and MLPs) a task needs, each with its measured effect.

The decision rule is ACDC's (Conmy et al., 2023) applied to nodes instead of edges: visit
nodes from the last layer down; remove a node (ablate its output everywhere) on top of the
nodes removed so far, and keep it only if that moves the metric by at least ``tau``. This is
the head-level circuit of Wang et al.: the kept heads run, every other head is ablated.
ACDC makes one sweep; here the kept nodes are swept again until a sweep removes nothing, so
every node of the result moves the metric by at least ``tau`` when removed from the result
itself (one sweep leaves nodes that only mattered next to nodes removed after them).

It is fast because a node test is a plain forward pass from the node's layer upwards (no
per-head q/k/v inputs), resumed from a recorded run (decisions are made top-down, so the layers
below the one being tested never change; each prompt chunk's run follows the removals it reads, so
a new sweep resumes from it too: ``circuits.discovery.heads.chunked``), and because two optional
screens cut the passes:

- ``candidates``: test only the n nodes with the largest attribution |score|; the others are
  ablated up front and never tested.
- ``screen_layers``: first try removing every untested node of a layer at once; if the metric
  moves by less than ``tau`` they all go in one pass. This is coarser than ACDC (two effects
  can cancel inside a layer) and is off by default; the circuit records which rule ran.

Deciding on part of the prompts (``z``): a test reads one prompt chunk at a time and stops once
the per-prompt effects decide it (``circuits.discovery.heads.chunked``, shared with edge ACDC).
``z=None`` reads every prompt for every test (ACDC's own rule). With ``controls`` (each prompt's node
EAP scores, ``NodePatcher.prompt_scores``) a close call can be decided on fewer prompts: the effect is
estimated by regression on its first-order estimate, whose mean over every prompt is known.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import Tensor
from tqdm import tqdm

from circuits.discovery.heads.chunked import ChunkedSearch
from circuits.discovery.heads.node_circuit import NodeCircuit
from circuits.patching.metrics import faithfulness
from circuits.patching.nodes import NodePatcher, droppable_nodes, strongest_nodes


def acdc_nodes(patcher: NodePatcher, tau: float | None = None, *, scores: Tensor | None = None,
               candidates: int | None = None, include_mlps: bool = True, screen_layers: bool = False,
               max_sweeps: int = 4, z: float | None = 3.0, batch: int | None = None,
               controls: Tensor | None = None, max_chunks: int | None = None, progress: bool = True) -> NodeCircuit:
    """Run node-level ACDC; see the module docstring.

    Args:
        tau: threshold in units of the metric; default 1% of |m(M) − m(∅)|.
        scores: ``[n_src]`` attribution scores per node (needed for ``candidates``).
        candidates: test only this many nodes, those of largest |score|.
        include_mlps: MLPs are nodes too (tested and ablatable); if False they always run, as in
            Wang et al.'s head circuit.
        max_sweeps: sweep the kept nodes again until a sweep removes none (at most this many
            sweeps in all; 1 is ACDC's single pass). A node kept early in a sweep is judged with
            nodes still present that later decisions remove, so its effect in the final circuit
            can fall under ``tau``; re-sweeping removes it. Each kept node's recorded effect is
            the one measured in the last sweep.
        z: decide a test on the first prompt chunks once ``mean ± z × SE`` of the per-prompt effects
            lies on one side of tau (module docstring); None reads every prompt for every test. With a
            single chunk (``batch_size`` ≥ the number of prompts), or a metric that is not a mean over
            prompts, every test reads every prompt whatever ``z``.
        batch: node sets per pass: a layer's next ``batch`` nodes as cumulative removals, judged in order
            up to the first kept (the same decisions as one at a time). Default 4 on a GPU, where a
            wider pass is nearly free, and 1 on a CPU: on IOI, 3 did 22% more work (variants after a
            kept node are wasted) and took 19% more CPU time on one AVX2 core.
        controls: ``[n_prompts, n_src]`` per-prompt first-order estimates of each node's effect
            (``patcher.prompt_scores()``), control variates for ``z``'s early decisions
            (``circuits.discovery.heads.chunked``); None decides on the effects alone.
        max_chunks: with ``z``, a test reads at most this many prompt chunks; one still undecided there is
            decided by its mean on them (``circuits.discovery.heads.chunked``). None: a close call reads every
            prompt (ACDC's rule on the whole prompt set).
    """
    g = patcher.graph
    if batch is None:
        batch = 4 if patcher.model.device.type == "cuda" else 1
    if candidates is not None and scores is None:
        raise ValueError("candidates= needs per-node attribution scores: pass scores=")
    if max_sweeps < 1:
        raise ValueError(f"max_sweeps must be at least 1, got {max_sweeps}")
    if z is not None and z <= 0:
        raise ValueError(f"z must be positive (standard errors), or None to read every prompt; got {z}")
    if tau is None:
        tau = 0.01 * abs(patcher.m_full - patcher.m_empty)
    t0 = time.perf_counter()
    testable, is_mlp = droppable_nodes(g, include_mlps)
    if candidates is not None:
        testable &= strongest_nodes(scores, testable, candidates)  # type: ignore[arg-type]
    # Untested nodes are ablated up front, except MLPs when they are not nodes of the circuit.
    removed = ~testable & (torch.ones_like(is_mlp) if include_mlps else ~is_mlp)
    removed[0] = False
    z = z if z is not None and len(patcher.chunks) > 1 and patcher.per_prompt_mean else None
    state = ChunkedSearch(patcher, removed, tau, z, controls=controls if z is not None else None, max_chunks=max_chunks)
    sweeps = 0
    effects = torch.full((g.n_src,), float("nan"), dtype=torch.float64)
    kept_under: dict[int, tuple[Tensor, float]] = {}  # node -> (the set it was last kept under, its effect)
    skipped = 0
    while sweeps < max_sweeps:
        sweeps += 1
        before = int(state.removed.sum())
        effects, n = _sweep(state, testable, screen_layers, progress and sweeps == 1, kept_under, batch)
        skipped += n
        if int(state.removed.sum()) == before:  # a sweep that removed nothing: the circuit is stable
            break

    kept = ~state.removed
    kept[0] = True
    # The circuit's metric on every prompt (exact; the search may have read only some of them).
    current = state.current()
    f = faithfulness(current, patcher.m_full, patcher.m_empty)
    start = state.start_metric
    return NodeCircuit(patcher, kept, effects, scores, f, current, "acdc",
                       info={"tau": tau, "candidates": -1 if candidates is None else candidates,
                             "include_mlps": include_mlps, "screen_layers": screen_layers,
                             "faithfulness_candidates": faithfulness(start, patcher.m_full, patcher.m_empty),
                             "faithfulness_candidates_prompts": state.start_prompts,
                             "nodes_tested": int(testable.sum()), "passes": state.passes,
                             "work": state.work, "z": -1.0 if z is None else z,
                             "tests": state.tests, "tests_decided_early": state.early,
                             "tests_decided_by_control": state.early_by_control, "controls": controls is not None,
                             "max_chunks": -1 if state.max_chunks is None else state.max_chunks,
                             "tests_decided_at_cap": state.capped, "tests_by_reads": state.reads(),
                             "sweeps": sweeps,
                             "tests_skipped": skipped, "batch": batch,
                             "seconds": time.perf_counter() - t0})


def _sweep(state: ChunkedSearch, testable: Tensor, screen_layers: bool, progress: bool,
           kept_under: dict[int, tuple[Tensor, float]], batch: int = 1) -> tuple[Tensor, int]:
    """One top-down ACDC sweep over the testable nodes not yet removed; returns the effects ``[n_src]``
    of the nodes kept (NaN elsewhere) and how many tests were skipped, and updates ``state``.

    A node kept under exactly the current set is not tested again (``kept_under``): the test would
    repeat the same passes and reach the same decision. This is what makes the last sweep, which
    usually only confirms, cheap: only nodes tested before the previous sweep's last removal run.
    """
    g = state.p.graph
    effects = torch.full((g.n_src,), float("nan"), dtype=torch.float64)
    skipped = 0
    bar = tqdm(range(g.n_layers - 1, -1, -1), desc=f"ACDC nodes tau={state.tau:.3g}", file=sys.stderr,
               disable=not progress)
    for layer in bar:
        todo = [i for i in [g.mlp_src(layer)] + [g.head_src(layer, h) for h in range(g.n_heads - 1, -1, -1)]
                if testable[i] and not state.removed[i]]
        if not todo:
            continue
        if screen_layers and len(todo) > 1:
            trial = state.removed.clone()
            trial[todo] = True
            if state.test(trial[None], layer)[0][1]:
                continue
        i = 0
        while i < len(todo):
            last = kept_under.get(todo[i])
            if last is not None and torch.equal(last[0], state.removed):
                effects[todo[i]] = last[1]
                skipped += 1
                i += 1
                continue
            # Speculative: the next ``batch`` nodes as cumulative removals in one pass, judged in order up
            # to the first one kept (the later variants assumed it removed).
            run = todo[i:i + batch]
            trials = state.removed.unsqueeze(0).repeat(len(run), 1)
            for j in range(len(run)):
                trials[j:, run[j]] = True
            for node, (effect, small) in zip(run, state.test(trials, layer)):
                i += 1
                if not small:
                    effects[node] = effect
                    kept_under[node] = (state.removed.clone(), effect)
        bar.set_postfix(kept=int((testable & ~state.removed).sum()), refresh=False)
    return effects, skipped
