"""ACDC (Conmy et al., 2023) at head granularity, made fast enough for a CPU.

The algorithm: visit nodes from the logits backwards (reverse topological order). For each
node still connected to the logits, try removing each of its incoming edges on top of the
edges removed so far; the edge stays removed if the metric moves by less than ``tau``
(|m(S ∪ {e}) − m(S)| < tau), else it is kept and its measured effect recorded. A node whose
outgoing edges are all removed loses its incoming edges untested (they cannot matter).

What makes it fast, without changing that decision rule:

- Resuming: every edge tested at layer l differs from a fixed base run only from layer l on
  (all earlier decisions concern later layers), so each test replays the base run's layers
  below l from a cache instead of recomputing them.
- Speculative batching: the next ``batch`` untested edges of a node are evaluated in one
  pass as cumulative removals (e1), (e1, e2), (e1, e2, e3)...; decisions are then read off
  in order, and the pass is cut at the first edge kept (later variants assumed it removed).
  When most edges are removed — the usual case — nothing is wasted.
- Candidates (optional): only the ``candidates`` edges with the largest EAP/EAP-IG |score| are
  tested; all others are removed up front. This is a different algorithm from plain ACDC
  (an untested edge is never given the chance to matter); the circuit records how many
  edges were tested.
- Order (optional): within a node, edges are tested in ascending |score| (least important
  first) instead of ACDC's reverse topological order of sources.
- Within (optional): only the edges of a given set are tested, e.g. every edge among a node
  circuit's nodes (``discover_edges(within=NodeCircuit)``); all others are removed up front. The
  nodes left out then have every edge removed, which edge patching folds into the residual
  stream at no per-edge cost (``circuits.patching.edges``), so the tests cost little more than
  plain forward passes.
- Prompt chunks (``z``): a test stops reading prompt chunks once the per-prompt effects decide
  it (``circuits.discovery.heads.chunked``, shared with node ACDC); with ``controls`` (each
  prompt's EAP scores) by regression on them, so that close calls need fewer prompts.
- Screening (optional): group testing, all the untested edges into one input at once, then
  halves of a group that matters, down to single edges.
- Floor (optional): many removals each under ``tau`` can add up to a large loss of faithfulness.
  With ``floor`` a removal under tau is also rejected when its loss clearly (by z standard errors)
  takes the circuit's faithfulness (estimated: the start's, measured on every prompt, plus the
  effects accepted since) under the floor (``circuits.discovery.heads.chunked``), and if the result,
  measured on every prompt, is still under it, the costliest removals are undone until it is not
  (``circuits.discovery.heads.floor``). Not ACDC's rule: the circuit records it.
"""

from __future__ import annotations

import sys
import time
from typing import Literal

import torch
from torch import Tensor
from tqdm import tqdm

from circuits.discovery.heads.chunked import ChunkedSearch
from circuits.discovery.heads.circuit import Circuit, nan_matrix
from circuits.discovery.heads.floor import restore_to_floor
from circuits.discovery.heads.prune import prune_dead, top_edges
from circuits.patching.metrics import faithfulness
from circuits.patching.edge_patcher import EdgePatcher


def acdc(patcher: EdgePatcher, tau: float | None = None, *, scores: Tensor | None = None, candidates: int | None = None,
         within: Tensor | None = None, order: Literal["topological", "scores"] = "topological",
         batch: int | None = None, z: float | None = 3.0, screen_targets: bool = False,
         screen_chunks: int | None = None, floor: float | None = None, controls: Tensor | None = None,
         max_chunks: int | None = None, progress: bool = True) -> Circuit:
    """Run ACDC; see the module docstring.

    Args:
        tau: threshold in units of the metric; default 1% of |m(M) − m(∅)|.
        scores: ``[n_src, n_dst]`` attribution scores, needed for ``candidates`` and ``order="scores"``
            (and, when given, the circuit's ``scores``: MIB's ranking of the edges it did not keep).
        candidates: test only this many edges (largest |score|, of those ``within``); None tests every edge.
        within: ``[n_src, n_dst]`` bool: test only these edges (e.g. ``NodeCircuit.as_edge_circuit().kept``,
            every edge among a node circuit's nodes); every other edge is removed up front.
        batch: edge sets per forward pass (speculative; 1 is plain sequential ACDC). Default 4 on a
            GPU, where a wider batch is nearly free, and 1 on a CPU, where it is not.
        z: decide a test on the first prompt chunks once ``mean ± z × SE`` of the per-prompt effects lies
            on one side of tau (``circuits.discovery.heads.chunked``); None reads every prompt for every
            test. With one prompt chunk (``patcher.batch_size`` ≥ the prompts), or a metric that is
            not a mean over prompts, every test reads every prompt whatever ``z``.
        screen_targets: group testing instead of one test per edge: all the untested edges into one input
            (q, k, v apart) are removed at once; if the metric moves by less than ``tau`` they all go,
            else each half is tried the same way, down to single edges (ACDC's own test). With few
            edges that matter per input this needs far fewer tests, but it is coarser than ACDC
            (effects can cancel inside a group), so off by default; the circuit records which rule ran.
            Its tests run one edge set at a time (``batch`` does not apply).
        screen_chunks: with ``screen_targets``, a group test reads at most this many prompt chunks; a group
            they leave undecided (a close call) is split rather than read to the end, so close calls are
            made on single edges only (None: a group is decided like any test). Measured on IOI (tau 1%,
            floor 0.8): 1 left 969 groups undecided, split them, and tested 1,024 edges alone, more work in
            all (270 full passes), since most such groups would have gone whole on a second chunk.
        floor: a faithfulness the circuit must keep (module docstring): a removal is kept out when |effect|
            reaches tau or when its loss clearly takes the estimated faithfulness under ``floor``; a result
            still under it, measured on every prompt, has its costliest removal steps undone. A kept edge
            then moved the metric by tau or more, or by more than the room left above the floor when
            tested. None: ACDC's rule alone.
        max_chunks: with ``z``, a test reads at most this many prompt chunks; one still undecided there is
            decided by its mean on them (``circuits.discovery.heads.chunked``). None: a close call reads every
            prompt. Not ACDC's rule on the whole prompt set; the circuit records it.
        controls: ``[n_prompts, n_src, n_dst]`` each prompt's first-order estimate of each edge's effect
            (``patcher.edge_scores("eap", per_prompt=True)``), control variates for ``z``'s early
            decisions (``circuits.discovery.heads.chunked``); None decides on the effects alone.
    """
    if batch is None:
        batch = 4 if patcher.model.device.type == "cuda" else 1
    g = patcher.graph
    if (candidates is not None or order == "scores") and scores is None:
        raise ValueError("candidates= and order='scores' need attribution scores: pass scores=patcher.edge_scores()")
    if z is not None and z <= 0:
        raise ValueError(f"z must be positive (standard errors), or None to read every prompt; got {z}")
    if within is not None and tuple(within.shape) != (g.n_src, g.n_dst):
        raise ValueError(f"within= is {tuple(within.shape)} but the patcher's graph is [{g.n_src}, {g.n_dst}]: build "
                         "it on the same graph (split_qkv alike)")
    if screen_chunks is not None and (not screen_targets or screen_chunks < 1):
        raise ValueError(f"screen_chunks= is how many prompt chunks a group test of screen_targets=True reads (at "
                         f"least 1); got {screen_chunks} with screen_targets={screen_targets}")
    if floor is not None and not 0 < floor <= 1:
        raise ValueError(f"floor is a faithfulness in (0, 1], got {floor}")
    if tau is None:
        tau = 0.01 * abs(patcher.m_full - patcher.m_empty)
    t0 = time.perf_counter()
    inside = g.valid if within is None else g.valid & within.to(torch.bool)
    testable = inside.clone()
    if candidates is not None:  # the strongest candidates inside ``within``
        testable &= top_edges(g, torch.where(inside, scores.abs(), torch.zeros(())), candidates)  # type: ignore[union-attr]
    z = z if z is not None and len(patcher.chunks) > 1 and patcher.per_prompt_mean else None
    state = ChunkedSearch(patcher, g.valid & ~testable, tau, z, floor=floor,
                          controls=controls if z is not None else None, max_chunks=max_chunks)
    effects = nan_matrix(g)
    n_tested = n_evaluations = n_screened = 0
    owner = torch.tensor(g.dst_node)

    # Nodes from the logits backwards: logits, then per layer (last first) the MLP, then the heads.
    visits: list[int] = [-1]
    for layer in range(g.n_layers - 1, -1, -1):
        visits.append(g.mlp_src(layer))
        visits += [g.head_src(layer, h) for h in range(g.n_heads - 1, -1, -1)]

    bar = tqdm(visits, desc=f"ACDC tau={tau:.3g}", file=sys.stderr, disable=not progress)
    for node in bar:
        dsts = (owner == node).nonzero().flatten()
        removed = state.removed
        if node >= 0 and not (g.valid[node] & ~removed[node]).any():
            removed = removed.clone()
            removed[:, dsts] |= g.valid[:, dsts]  # disconnected from the logits: its inputs cannot matter
            _with_last_step(state.steps, node, (removed & ~state.removed).nonzero())
            state.assume(removed)
            continue
        layer = g.dst_layer(int(dsts[0]))
        todo = [(int(s), int(d)) for d in dsts.tolist() for s in testable[:, d].nonzero().flatten().tolist()
                if not removed[s, d]]
        if order == "scores":
            todo.sort(key=lambda e: (float(scores[e].abs()), -e[0], e[1]))  # type: ignore[index]
        else:
            todo.sort(key=lambda e: (-e[0], e[1]))  # later sources first, as ACDC
        if screen_targets:  # group tests per input (q, k, v apart), bisected down to single edges
            for d in dsts.tolist():
                n_tested, n_evaluations, n_screened = _bisect(
                    state, [e for e in todo if e[1] == d], layer, effects, (n_tested, n_evaluations, n_screened),
                    chunks=screen_chunks)
            todo = []
        i = 0
        while i < len(todo):
            chunk = todo[i:i + batch]
            variants = state.removed.unsqueeze(0).repeat(len(chunk), 1, 1)
            for j in range(len(chunk)):
                for s, d in chunk[: j + 1]:
                    variants[j, s, d] = True
            n_evaluations += 1
            # Decided in order up to the first edge kept; the later variants assumed it removed, so the
            # next batch starts after it.
            for (s, d), (effect, _small) in zip(chunk, state.test(variants, layer)):
                n_tested += 1
                effects[s, d] = effect
                i += 1
        bar.set_postfix(kept=int((g.valid & ~state.removed).sum()) if progress else 0, refresh=False)

    m = state.current()  # the final state's metric on every prompt; dropping dead edges changes nothing (prune_dead)
    f_acdc = faithfulness(m, patcher.m_full, patcher.m_empty)
    removed, floor_info = state.removed, {}
    if floor is not None:
        r = restore_to_floor(patcher, state.removed, state.steps, floor, m)
        removed, m = r.removed, r.metric
        floor_info = {"floor": floor, "floor_reached": r.reached, "faithfulness_search": f_acdc,
                      "edges_search": int(prune_dead(g, g.valid & ~state.removed).sum()), "steps_undone": r.steps,
                      "floor_evaluations": r.evaluations}
        state.work += r.evaluations  # each a pass over every prompt from the embeddings
        state.passes += r.evaluations * len(patcher.chunks)
    kept = prune_dead(g, g.valid & ~removed)
    f = faithfulness(m, patcher.m_full, patcher.m_empty)
    s = nan_matrix(g)
    if scores is not None:
        s[g.valid] = scores[g.valid].float()
    effects[~kept] = float("nan")
    return Circuit(g, kept, s, effects, f, m, patcher.m_full, patcher.m_empty, "acdc",
                   info={"tau": tau, "candidates": -1 if candidates is None else candidates, "order": order,
                         "within": -1 if within is None else int((within & g.valid).sum()),
                         # f of the start state (only the candidates kept): ACDC can only remove from there,
                         # over the prompts read before the first removal (all of them with z=None).
                         "faithfulness_candidates": faithfulness(state.start_metric, patcher.m_full, patcher.m_empty),
                         "faithfulness_candidates_prompts": state.start_prompts,
                         "edges_tested": n_tested, "evaluations": n_evaluations, "batch": batch,
                         "z": -1.0 if z is None else z, "tests": state.tests, "tests_decided_early": state.early,
                         "tests_decided_by_control": state.early_by_control, "controls": controls is not None,
                         "max_chunks": -1 if state.max_chunks is None else state.max_chunks,
                         "tests_decided_at_cap": state.capped, "tests_by_reads": state.reads(),
                         "passes": state.passes, "work": state.work, "screen_targets": screen_targets,
                         "edges_screened": n_screened, "screen_chunks": -1 if screen_chunks is None else screen_chunks,
                         **floor_info, "seconds": time.perf_counter() - t0})


def _with_last_step(steps: list[tuple[Tensor, float]], node: int, inputs: Tensor) -> None:
    """The inputs ``[n, 2]`` of ``node``, removed because its last outgoing edge went, go with the step that
    removed that edge (so the floor, undoing the step, brings them back with it)."""
    for j in range(len(steps) - 1, -1, -1):
        if (steps[j][0][:, 0] == node).any():
            steps[j] = (torch.cat([steps[j][0], inputs]), steps[j][1])
            return


def _bisect(state: ChunkedSearch, edges: list[tuple[int, int]], layer: int, effects: Tensor,
            counts: tuple[int, int, int], matters: bool = False, chunks: int | None = None) -> tuple[int, int, int]:
    """Group testing: remove ``edges`` at once; if that moves the metric by ``tau`` or more, do the same
    for each half, down to single edges, which are ACDC's own tests (their effects recorded in
    ``effects``). ``matters``: the group is known to matter (its parent did and the other half
    went), so its own group test is skipped; skipping never removes an edge untested. ``chunks``: a
    group test reads at most this many prompt chunks, and a group they leave undecided is split
    (both halves tested: it is not known to matter). Returns the counts (edges tested alone, tests,
    edges removed in groups) updated."""
    tested, tests, screened = counts
    if not edges:
        return counts
    known = True  # that the group matters, once it is split
    if not (len(edges) > 1 and matters):
        trial = state.removed.clone()
        trial[[s for s, _ in edges], [d for _, d in edges]] = True
        effect, small = state.test(trial[None], layer, chunks=chunks if len(edges) > 1 else None)[0]
        tests += 1
        if len(edges) == 1:
            effects[edges[0]] = effect
            return tested + 1, tests, screened
        if small:
            return tested, tests, screened + len(edges)
        known = small is not None
    half = len(edges) // 2
    counts = _bisect(state, edges[:half], layer, effects, (tested, tests, screened), chunks=chunks)
    first_went = all(bool(state.removed[e]) for e in edges[:half])  # so the rest holds what mattered
    return _bisect(state, edges[half:], layer, effects, counts, matters=first_went and known, chunks=chunks)
