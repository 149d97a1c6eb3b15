"""ACDC's tests decided on prompt chunks: the search state both node and edge ACDC use.

The metric is a mean over prompts, so a test (remove something on top of the current set; keep it
if the metric moves by at least ``tau``) is run one prompt chunk (``patcher.batch_size`` prompts) at
a time, and stops as soon as the per-prompt effects already decide it: when the interval
``mean ± z × SE`` (the standard error of the mean of the effects seen so far, with the
finite-population correction, since the decision is about these N prompts, not a wider
population) lies wholly inside (−tau, tau) the removal stands, wholly outside it is undone. Most
tests are far from tau, so most need one chunk; a close call reads every prompt and is then
decided exactly as without ``z`` (the interval is a point). ``z=None`` reads every prompt for
every test (ACDC's own rule).

The prompts of the other chunks are brought up to date lazily: a chunk whose current values
predate a removal is run under the old set and the new trials in one batched pass when it is
next needed. Each chunk's run under the current set is recorded once a sweep, and every test
resumes from it at the layer it changes (decisions go top-down, so the layers below never change).

A test may carry several trials at once (speculative batching): trial j is trial j − 1 with one
more thing removed, each is judged against the one before it, in order, and the first one kept
ends the test (the later trials assumed it removed).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor


class ChunkedPatcher(Protocol):
    """What the search needs of a patcher (``NodePatcher``, ``EdgePatcher``): prompt chunks, each with
    ``rows`` (a slice of the task's prompts), and per-prompt metrics of a chunk under K sets."""

    chunks: list[Any]
    task: Any
    graph: Any

    def chunk_metrics(self, i: int, removed: Tensor, *, base: Any = None, start_layer: int = 0,
                      keep_base: bool = False) -> tuple[Tensor, Any]: ...


class ChunkedSearch:
    """The search's state, prompt chunk by prompt chunk: the removed set (``[n_src]`` nodes or
    ``[n_src, n_dst]`` edges), each chunk's per-prompt metric under it (None where a removal made it
    stale), and each chunk's recorded run to resume from."""

    def __init__(self, patcher: ChunkedPatcher, removed: Tensor, tau: float, z: float | None) -> None:
        self.p, self.removed, self.tau, self.z = patcher, removed, tau, z
        n = len(patcher.chunks)
        self.values: list[Tensor | None] = [None] * n   # [b] per prompt, under self.removed
        self.bases: list[Any] = [None] * n  # recorded this sweep; valid below the layer tested now
        self._start: list[Tensor] = []  # per-prompt metrics of the start set, chunks read before any removal
        self._changed = False
        self.passes = self.tests = self.early = 0
        self.work = 0.0  # layers computed, in full forward passes over every prompt (a load-free cost)

    def new_sweep(self) -> None:
        self.bases = [None] * len(self.bases)

    def _count(self, i: int, k: int = 1, layer: int = 0) -> None:
        c, L = self.p.chunks[i], self.p.graph.n_layers
        self.passes += 1
        self.work += k * (c.rows.stop - c.rows.start) / self.p.task.n * (L - layer) / L

    def _base(self, i: int) -> Any:
        """Chunk ``i``'s recorded run under the current set (recorded now if this sweep has none)."""
        base = self.bases[i]
        if base is None:
            values, base = self.p.chunk_metrics(i, self.removed, keep_base=True)
            self._count(i)
            self.values[i], self.bases[i] = values[0], base
            if not self._changed:
                self._start.append(values[0])
        return base

    @property
    def start_metric(self) -> float:
        """The metric of the start set, over the prompts read before the first removal (all of them
        when the first test read every chunk; else an estimate on fewer)."""
        return float(torch.cat(self._start).mean()) if self._start else float("nan")

    @property
    def start_prompts(self) -> int:
        return sum(len(v) for v in self._start)

    def current(self) -> float:
        """The metric under the current set, every prompt (runs the chunks not up to date)."""
        for i in range(len(self.values)):
            if self.values[i] is None:
                values, _ = self.p.chunk_metrics(i, self.removed)
                self._count(i)
                self.values[i] = values[0]
        return sum(float(v.sum()) for v in self.values) / self.p.task.n  # type: ignore[union-attr]

    def assume(self, removed: Tensor) -> None:
        """Make ``removed`` the current set without measuring it: for removals that cannot move the
        metric (the inputs of a node that no longer reaches the logits)."""
        self.removed = removed

    def _decide(self, effects: list[Tensor]) -> tuple[float, bool, int] | None:
        """(mean effect, whether it is under tau, prompts read) once ``effects`` (per chunk read) decide."""
        d = torch.cat(effects)
        n, N, mean = len(d), self.p.task.n, float(d.mean())
        half = 0.0
        if n < N:
            if self.z is None or n < 2:
                return None
            half = self.z * float(d.std()) * math.sqrt((N - n) / (N * n))
        if abs(mean) + half < self.tau or abs(mean) - half >= self.tau:
            return mean, abs(mean) < self.tau, n
        return None

    def test(self, trials: Tensor, layer: int) -> list[tuple[float, bool]]:
        """Judge ``trials`` ``[J, *set]`` in order (module docstring), reading prompt chunks until each
        is decided; each decision is (effect against the set before it, whether it is under tau), up
        to the first kept trial. The current set becomes the last trial under tau."""
        J, N = trials.shape[0], self.p.task.n
        n_chunks = len(self.p.chunks)
        vals: list[Tensor] = []  # per chunk read: [J, b], rows of trials decided before it was read unused
        out: list[tuple[float, bool]] = []
        a = 0  # the trial being decided
        while a < J:
            decided = self._decide([v[a] - self.values[c] for c, v in enumerate(vals)]) if vals else None  # type: ignore[operator]
            if decided is None:
                i = len(vals)
                assert i < n_chunks, "every prompt read and still undecided"
                base = self._base(i)
                todo = trials[a:]
                if self.values[i] is None:   # stale: the current set and the trials in one pass
                    v, _ = self.p.chunk_metrics(i, torch.cat([self.removed[None], todo]), base=base,
                                                start_layer=layer)
                    self._count(i, 1 + len(todo), layer)
                    self.values[i], v = v[0], v[1:]
                else:
                    v, _ = self.p.chunk_metrics(i, todo, base=base, start_layer=layer)
                    self._count(i, len(todo), layer)
                vals.append(torch.cat([torch.full((a, v.shape[1]), float("nan"), dtype=v.dtype), v]))
                continue
            mean, small, n = decided
            self.tests += 1
            if n < N:
                self.early += 1
            out.append((mean, small))
            if not small:
                break
            self.removed, self._changed = trials[a], True
            for c in range(n_chunks):
                self.values[c] = vals[c][a] if c < len(vals) else None
            a += 1
        return out
