"""ACDC over nodes: which attention heads (and MLPs) a task needs, each with its measured effect.

The decision rule is ACDC's (Conmy et al., 2023) applied to nodes instead of edges: visit
nodes from the last layer down; remove a node (ablate its output everywhere) on top of the
nodes removed so far, and keep it only if that moves the metric by at least ``tau``. This is
the head-level circuit of Wang et al.: the kept heads run, every other head is ablated.
ACDC makes one sweep; here the kept nodes are swept again until a sweep removes nothing, so
every node of the result moves the metric by at least ``tau`` when removed from the result
itself (one sweep leaves nodes that only mattered next to nodes removed after them).

It is fast because a node test is a plain forward pass from the node's layer upwards (no
per-head q/k/v inputs), resumed from one base run (decisions are made top-down, so the layers
below the one being tested never change), and because two optional screens cut the passes:

- ``candidates``: test only the n nodes with the largest attribution |score|; the others are
  ablated up front and never tested.
- ``screen_layers``: first try removing every untested node of a layer at once; if the metric
  moves by less than ``tau`` they all go in one pass. This is coarser than ACDC (two effects
  can cancel inside a layer) and is off by default; the circuit records which rule ran.

Deciding on part of the prompts (``z``): the metric is a mean over prompts, so a test is run one
prompt chunk (``patcher.batch_size`` prompts) at a time, and stops as soon as the per-prompt
effects already decide it: when the interval ``mean ± z × SE`` (the standard error of the mean of
the effects seen so far, with the finite-population correction, since the decision is about these
N prompts, not a wider population) lies wholly inside (−tau, tau) the node goes, wholly outside it
stays. Most nodes are far from tau, so most tests need one chunk; a close call reads every prompt
and is then decided exactly as without ``z`` (the interval is a point). The prompts of the other
chunks are brought up to date lazily: a chunk whose current values predate a removal is run under
the old and the new node set in one batched pass when it is next needed. ``z=None`` reads every
prompt for every test (ACDC's own rule).
"""

from __future__ import annotations

import math
import sys
import time

import torch
from torch import Tensor
from tqdm import tqdm

from circuits.discovery.heads.node_circuit import NodeCircuit
from circuits.patching.metrics import faithfulness
from circuits.patching.nodes import NodeBase, NodePatcher, droppable_nodes, strongest_nodes


def acdc_nodes(patcher: NodePatcher, tau: float | None = None, *, scores: Tensor | None = None,
               candidates: int | None = None, include_mlps: bool = True, screen_layers: bool = False,
               max_sweeps: int = 4, z: float | None = 3.0, progress: bool = True) -> NodeCircuit:
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
    """
    g = patcher.graph
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
    state = _Prompts(patcher, removed, tau, z)
    sweeps = 0
    effects = torch.full((g.n_src,), float("nan"), dtype=torch.float64)
    while sweeps < max_sweeps:
        sweeps += 1
        before = int(state.removed.sum())
        state.new_sweep()
        effects = _sweep(state, testable, screen_layers, progress and sweeps == 1)
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
                             "faithfulness_candidates_prompts": sum(len(v) for v in state._start),
                             "nodes_tested": int(testable.sum()), "passes": state.passes,
                             "work": state.work, "z": -1.0 if z is None else z,
                             "tests": state.tests, "tests_decided_early": state.early, "sweeps": sweeps,
                             "seconds": time.perf_counter() - t0})


class _Prompts:
    """The search's state, prompt chunk by prompt chunk: the removed set, each chunk's per-prompt metric
    under it (or None where a removal made it stale), and each chunk's recorded run to resume from."""

    def __init__(self, patcher: NodePatcher, removed: Tensor, tau: float, z: float | None) -> None:
        self.p, self.removed, self.tau, self.z = patcher, removed, tau, z
        n = len(patcher.chunks)
        self.values: list[Tensor | None] = [None] * n   # [b] per prompt, under self.removed
        self.bases: list[NodeBase | None] = [None] * n  # recorded this sweep; valid below the layer tested now
        self._start: list[Tensor] = []  # per-prompt metrics of the candidates alone, chunks read before any removal
        self._changed = False
        self.passes = self.tests = self.early = 0
        self.work = 0.0  # layers computed, in full forward passes over every prompt (a load-free cost)

    def new_sweep(self) -> None:
        self.bases = [None] * len(self.bases)

    def _count(self, i: int, k: int = 1, layer: int = 0) -> None:
        c, L = self.p.chunks[i], self.p.graph.n_layers
        self.passes += 1
        self.work += k * (c.rows.stop - c.rows.start) / self.p.task.n * (L - layer) / L

    def _base(self, i: int) -> NodeBase:
        """Chunk ``i``'s recorded run under the current set (recorded now if this sweep has none)."""
        base = self.bases[i]
        if base is None:
            values, base = self.p.chunk_metrics(i, self.removed, keep_base=True)
            self._count(i)
            self.values[i], self.bases[i] = values[0], base
            if not self._changed:
                self._start.append(values[0])
        return base  # type: ignore[return-value]

    @property
    def start_metric(self) -> float:
        """The metric with only the candidates kept, over the prompts read before the first removal (all of
        them when the first test read every chunk; else an estimate on fewer)."""
        return float(torch.cat(self._start).mean()) if self._start else float("nan")

    def current(self) -> float:
        """The metric under the current set, every prompt (runs the chunks not up to date)."""
        for i in range(len(self.values)):
            if self.values[i] is None:
                values, _ = self.p.chunk_metrics(i, self.removed)
                self._count(i)
                self.values[i] = values[0]
        n = self.p.task.n
        return sum(float(v.sum()) for v in self.values) / n  # type: ignore[union-attr]

    def test(self, trial: Tensor, layer: int) -> tuple[float, bool]:
        """The effect of ``trial`` (a node set) against the current one, and whether it is under tau;
        reads prompt chunks until the effect is decided. The current set becomes ``trial`` if so."""
        effects: list[Tensor] = []
        trials: dict[int, Tensor] = {}
        N = self.p.task.n
        decided_at, mean, small = None, 0.0, False
        self.tests += 1
        for i in range(len(self.p.chunks)):
            base = self._base(i)
            if self.values[i] is None:   # stale: old and new set in one pass
                values, _ = self.p.chunk_metrics(i, torch.stack([self.removed, trial]), base=base, start_layer=layer)
                self._count(i, 2, layer)
                self.values[i], trials[i] = values[0], values[1]
            else:
                values, _ = self.p.chunk_metrics(i, trial, base=base, start_layer=layer)
                self._count(i, 1, layer)
                trials[i] = values[0]
            effects.append(trials[i] - self.values[i])
            d = torch.cat(effects)
            n, mean = len(d), float(d.mean())
            half = 0.0
            if n < N:
                if self.z is None or n < 2:
                    continue
                half = self.z * float(d.std()) * math.sqrt((N - n) / (N * n))
            if abs(mean) + half < self.tau or abs(mean) - half >= self.tau:
                decided_at, small = n, abs(mean) < self.tau
                break
        if decided_at is not None and decided_at < N:
            self.early += 1
        if small:
            self.removed, self._changed = trial, True
            for i in range(len(self.values)):
                self.values[i] = trials.get(i)
        return mean, small


def _sweep(state: _Prompts, testable: Tensor, screen_layers: bool, progress: bool) -> Tensor:
    """One top-down ACDC sweep over the testable nodes not yet removed; returns the effects ``[n_src]``
    of the nodes kept (NaN elsewhere) and updates ``state``."""
    g = state.p.graph
    effects = torch.full((g.n_src,), float("nan"), dtype=torch.float64)
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
            if state.test(trial, layer)[1]:
                continue
        for node in todo:
            trial = state.removed.clone()
            trial[node] = True
            effect, small = state.test(trial, layer)
            if not small:
                effects[node] = effect
        bar.set_postfix(kept=int((testable & ~state.removed).sum()), refresh=False)
    return effects
