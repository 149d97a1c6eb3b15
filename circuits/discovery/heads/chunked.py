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

A cap (optional, ``max_chunks``): a test still undecided after that many chunks is decided by its mean
on the prompts read, as ACDC on those prompts would decide it. The close calls are what costs: on IOI
most single-edge effects spread over the prompts by more than tau, so with every prompt allowed a
third of the tests read half the prompts or more. A capped search makes some decisions its full
prompt set would not; what it keeps is measured on every prompt at the end (and, with a floor,
restored to it).

The prompts of the other chunks are brought up to date lazily: a chunk whose current values
predate a removal is run under the old set and the new trials in one batched pass when it is
next needed. Each chunk keeps a recorded run (``bases``) and the layer below which that run is
the current set's (``below``): every test resumes from it at the layer it changes, so a test
costs only the layers from there up. Where the patcher records every set of a batched pass
(``keeps_variants``: node patching), a chunk's run follows the removals it reads, so it stays
current across sweeps: a new sweep (node ACDC sweeps again from the top) re-runs a chunk only
from the lowest layer that changed since it was last read, not from the embeddings.

A floor (optional, ``floor``): many removals each under tau can add up to a large loss. With a floor
the start set is measured on every prompt and the search keeps an estimate of the current set's
metric (the start's plus every accepted removal's effect); a removal under tau is then also
rejected when its effect towards m(∅) clearly exceeds the room left above the floor (the estimate's
faithfulness minus the floor, in metric units): by more than z standard errors on the prompts read
when tau decided it (on every prompt: by anything). So the floor reads no prompt more than tau does
(a strict check would make every test a close call once the room is used up), and the estimate can
end under the floor: the final set's faithfulness is measured on every prompt, and if it is under,
``circuits.discovery.heads.floor`` undoes the costliest removals. The estimate errs on the safe
side as much as the other: most effects are read on the first chunk alone, so it follows those
prompts (on IOI, tau 1%, floor 0.8, it reached the floor while f on every prompt stayed 0.850).

A control variate (optional, ``controls``): a per-prompt first-order estimate of each thing's
effect, on every prompt (``[N, *set]``: EAP scores of the clean run). A trial's control is the sum
over what it removes on top of the set before it. Its mean over all N prompts is known, so the
mean effect is estimated by regression on the prompts read (survey sampling's regression
estimator): ``mean(d) + b (mean_N(c) − mean_n(c))``, with b the least-squares slope of the effects d
on the controls c over the prompts read and the residuals' spread (n − 2 degrees of freedom) in
place of the effects' own. Where the estimate is linear enough the interval narrows and a close call is
decided on fewer prompts; where the control does not help (the spread of the residuals is not
smaller) the plain mean is used. On every prompt the estimate is the plain mean, so a test that
reads every chunk decides exactly as without controls.

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
    m_full: float
    m_empty: float
    keeps_variants: bool
    """Whether ``keep_base`` records every set of a batched pass resumed from ``base`` (else only one
    set run from layer 0)."""

    def chunk_metrics(self, i: int, removed: Tensor, *, base: Any = None, start_layer: int = 0,
                      keep_base: bool = False) -> tuple[Tensor, list[Any] | None]: ...


class ChunkedSearch:
    """The search's state, prompt chunk by prompt chunk: the removed set (``[n_src]`` nodes or
    ``[n_src, n_dst]`` edges), each chunk's per-prompt metric under it (None where a removal made it
    stale), and each chunk's recorded run to resume from."""

    def __init__(self, patcher: ChunkedPatcher, removed: Tensor, tau: float, z: float | None, *,
                 floor: float | None = None, controls: Tensor | None = None, max_chunks: int | None = None) -> None:
        self.p, self.removed, self.tau, self.z, self.floor = patcher, removed, tau, z, floor
        if max_chunks is not None and max_chunks < 1:
            raise ValueError(f"max_chunks is how many prompt chunks a test reads at most (at least 1), got {max_chunks}")
        # a test still undecided after this many chunks is decided by its mean on them (module docstring)
        self.max_chunks = None if z is None or max_chunks is None or max_chunks >= len(patcher.chunks) else max_chunks
        if controls is not None and controls.shape != (patcher.task.n, *removed.shape):
            raise ValueError(f"controls must be [n_prompts, *set] = {[patcher.task.n, *removed.shape]}, "
                             f"got {list(controls.shape)}")
        # [N, n_items]: each item's per-prompt estimate (module docstring), in the caller's dtype (edges: 64 prompts
        # × 250k edges is 65 MB in float32)
        self.controls = None if controls is None else controls.reshape(patcher.task.n, -1)
        n, self.L = len(patcher.chunks), patcher.graph.n_layers
        self.values: list[Tensor | None] = [None] * n   # [b] per prompt, under self.removed
        self.bases: list[Any] = [None] * n  # a recorded run per chunk ...
        self.below = [0] * n  # ... which is the current set's run below this layer
        self._start: list[Tensor] = []  # per-prompt metrics of the start set, chunks read before any removal
        self._changed = False
        self.steps: list[tuple[Tensor, float]] = []  # each accepted removal: ([n, ndim] what it removed, its effect)
        self.passes = self.tests = self.early = self.early_by_control = self.capped = 0
        # each decided test: (things it removes on top of the set before it, its layer, prompts read, whether
        # the removal stood, its mean effect): where a search's passes went (``reads``)
        self.log: list[tuple[int, int, int, bool, float]] = []
        self.work = 0.0  # layers computed, in full forward passes over every prompt (a load-free cost)
        self.estimate = float("nan")  # with a floor: the current set's metric, the start's plus every accepted effect
        if floor is not None:
            for i in range(n):  # the start set on every prompt (and each chunk's run recorded)
                self._resume_from(i, self.L)
            self.estimate = self.start_metric

    def _count(self, i: int, k: int = 1, layer: int = 0) -> None:
        c, L = self.p.chunks[i], self.L
        self.passes += 1
        self.work += k * (c.rows.stop - c.rows.start) / self.p.task.n * (L - layer) / L

    def _resume_from(self, i: int, layer: int) -> Any:
        """Chunk ``i``'s recorded run, made the current set's below ``layer`` (recorded, or run again from
        the lowest layer that changed since, when it is not)."""
        if self.bases[i] is None or self.below[i] < layer:
            if self.bases[i] is not None and self.p.keeps_variants:
                start, base = self.below[i], self.bases[i]
            else:
                start, base = 0, None
            values, bases = self.p.chunk_metrics(i, self.removed, base=base, start_layer=start, keep_base=True)
            self._count(i, 1, start)
            self.values[i], self.bases[i], self.below[i] = values[0], bases[0], self.L  # type: ignore[index]
            if not self._changed:
                self._start.append(values[0])
        return self.bases[i]

    @property
    def start_metric(self) -> float:
        """The metric of the start set, over the prompts read before the first removal (all of them
        when the first test read every chunk; else an estimate on fewer)."""
        return float(torch.cat(self._start).mean()) if self._start else float("nan")

    @property
    def start_prompts(self) -> int:
        return sum(len(v) for v in self._start)

    def current(self) -> float:
        """The metric under the current set, every prompt (runs the chunks not up to date, each from the
        lowest layer that changed since it was last read)."""
        for i in range(len(self.values)):
            if self.values[i] is None:
                start = self.below[i] if self.bases[i] is not None else 0
                values, _ = self.p.chunk_metrics(i, self.removed, base=self.bases[i], start_layer=start)
                self._count(i, 1, start)
                self.values[i] = values[0]
        return sum(float(v.sum()) for v in self.values) / self.p.task.n  # type: ignore[union-attr]

    def assume(self, removed: Tensor) -> None:
        """Make ``removed`` the current set without measuring it: for removals that cannot move the
        metric (the inputs of a node that no longer reaches the logits)."""
        self.removed = removed

    def room(self) -> float:
        """How far the metric may still move towards m(∅) before the estimate's faithfulness falls under
        the floor (metric units, ≥ 0); infinite without a floor."""
        if self.floor is None:
            return math.inf
        gap = self.p.m_full - self.p.m_empty
        return max(0.0, ((self.estimate - self.p.m_empty) / gap - self.floor) * abs(gap))

    def _decide(self, effects: list[Tensor], control: Tensor | None = None,
                final: bool = False) -> tuple[float, bool, int, bool] | None:
        """(mean effect, whether the removal stands, prompts read, whether the control decided it) once
        ``effects`` (per chunk read) decide |effect| against tau; one under tau stands unless its move
        towards m(∅) exceeds ``room()`` by more than the interval's half-width (the floor reads no prompt
        more than tau does). ``control``: ``[N]`` the trial's per-prompt control (module docstring).
        ``final``: no more prompts will be read (``max_chunks``), so the mean on these decides."""
        d = torch.cat(effects)
        n, N, mean = len(d), self.p.task.n, float(d.mean())
        half, by_control = 0.0, False
        if n < N and not final:
            if self.z is None or n < 2:
                return None
            fpc = math.sqrt((N - n) / (N * n))
            half = self.z * float(d.std()) * fpc
            if control is not None and n > 2:
                est, spread = _regression(d, control, n)
                if spread is not None and self.z * spread * fpc < half:
                    mean, half, by_control = est, self.z * spread * fpc, True
        if abs(mean) + half < self.tau:  # under tau: the removal stands unless clearly beyond the floor's room
            harm = mean if self.p.m_full < self.p.m_empty else -mean  # the move towards m(∅)
            return mean, harm - half <= self.room(), n, by_control
        if abs(mean) - half >= self.tau:
            return mean, False, n, by_control
        return None

    def test(self, trials: Tensor, layer: int, *, chunks: int | None = None) -> list[tuple[float, bool | None]]:
        """Judge ``trials`` ``[J, *set]`` in order (module docstring), reading prompt chunks until each
        is decided; each decision is (effect against the set before it, whether it is under tau), up
        to the first kept trial. The current set becomes the last trial under tau. ``chunks``: read at
        most this many prompt chunks; a trial they leave undecided ends the test as (its effect on
        them, None), and changes nothing."""
        J, N = trials.shape[0], self.p.task.n
        n_chunks = len(self.p.chunks) if chunks is None else min(chunks, len(self.p.chunks))
        vals: list[Tensor] = []  # per chunk read: [J, b], rows of trials decided before it was read unused
        runs: list[list[Any] | None] = []  # per chunk read: each trial's recorded run (None: not kept)
        keep = self.p.keeps_variants
        out: list[tuple[float, bool | None]] = []
        a = 0  # the trial being decided
        while a < J:
            effects = [v[a] - self.values[c] for c, v in enumerate(vals)]  # type: ignore[operator]  # per chunk read
            added = trials[a] & ~(trials[a - 1] if a else self.removed)  # what this trial removes on top
            control = self._control(added)
            # A cap on the chunks read (``max_chunks``) decides single tests; a group's own limit (``chunks``) splits it.
            final = chunks is None and self.max_chunks is not None and len(vals) >= self.max_chunks
            decided = self._decide(effects, control) if effects else None
            capped = final and decided is None
            if capped:
                decided = self._decide(effects, control, final=True)
            if decided is None:
                i = len(vals)
                if i == n_chunks and n_chunks < len(self.p.chunks):  # the chunks allowed, and still undecided
                    out.append((float(torch.cat(effects).mean()), None))
                    break
                assert i < n_chunks, "every prompt read and still undecided"
                base = self._resume_from(i, layer)
                todo = trials[a:]
                stale = self.values[i] is None  # then the current set and the trials in one pass
                sets = torch.cat([self.removed[None], todo]) if stale else todo
                v, bases = self.p.chunk_metrics(i, sets, base=base, start_layer=layer, keep_base=keep)
                self._count(i, len(sets), layer)
                if stale:
                    self.values[i], v = v[0], v[1:]
                    if bases is not None:
                        self.bases[i], self.below[i], bases = bases[0], self.L, bases[1:]
                vals.append(torch.cat([torch.full((a, v.shape[1]), float("nan"), dtype=v.dtype), v]))
                runs.append(None if bases is None else [None] * a + bases)
                continue
            mean, small, n, by_control = decided
            self.tests += 1
            self.log.append((int(added.sum()), layer, n, small, mean))
            if n < N:
                self.early += 1
                self.early_by_control += by_control
                self.capped += capped
            out.append((mean, small))
            if not small:
                break
            self.steps.append(((trials[a] & ~self.removed).nonzero(), mean))
            self.estimate += mean
            self.removed, self._changed = trials[a], True
            for c in range(len(self.p.chunks)):
                read = c < len(vals)
                self.values[c] = vals[c][a] if read else None
                if read and runs[c] is not None:
                    self.bases[c], self.below[c] = runs[c][a], self.L  # type: ignore[index]
                else:
                    self.below[c] = min(self.below[c], layer)
            a += 1
        return out

    def reads(self) -> dict[str, list[float]]:
        """Where the tests' passes went: ``"single:8"`` (tests of one thing that read 8 prompts) or ``"group:64"``
        → [tests, work], work in full passes over every prompt from the embeddings, the trials alone (not
        the catch-up runs of stale chunks)."""
        out: dict[str, list[float]] = {}
        for size, layer, n, _, _ in self.log:
            row = out.setdefault(f"{'single' if size == 1 else 'group'}:{n}", [0, 0.0])
            row[0] += 1
            row[1] += n / self.p.task.n * (self.L - layer) / self.L
        return dict(sorted(out.items(), key=lambda kv: (kv[0].split(":")[0], int(kv[0].split(":")[1]))))

    def _control(self, added: Tensor) -> Tensor | None:
        """``[N]`` the control of removing ``added`` (a set's shape, bool) on top of the set before it."""
        if self.controls is None:
            return None
        return self.controls[:, added.reshape(-1).nonzero()[:, 0].to(self.controls.device)].double().sum(1)


def _regression(d: Tensor, control: Tensor, n: int) -> tuple[float, float | None]:
    """The regression estimate of the mean effect over all prompts from the first ``n`` (``d`` ``[n]``,
    ``control`` ``[N]``), and the residuals' standard deviation (None when the control is constant
    over the prompts read, so it says nothing)."""
    c = control[:n].to(d.dtype)
    dc, cc = d - d.mean(), c - c.mean()
    var = float((cc * cc).sum())
    if var <= 0.0:
        return float(d.mean()), None
    b = float((cc * dc).sum()) / var
    est = float(d.mean()) + b * float(control.mean() - c.mean())
    return est, math.sqrt(float(((dc - b * cc) ** 2).sum()) / (n - 2))
