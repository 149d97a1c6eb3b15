"""A faithfulness floor for ACDC, the fallback: undo the removals that cost the most until f is back at the floor.

Greedy ACDC removes whatever moves the metric by less than ``tau`` on top of the removals so far,
so many removals, each under tau, can add up to a large loss: on IOI, edge ACDC at tau = 1% of
m(M) − m(∅) removed edges whose small losses together took f from 0.855 to 0.729. With a floor the
search itself rejects a removal that would take its estimate of f under the floor
(``circuits.discovery.heads.chunked``), but that estimate sums effects read on part of the
prompts. So once the search ends its circuit is measured on every prompt, and if f is under the
floor the search's accepted removal steps (one edge or node, or a screened group of edges, with
the inputs of a node its removal disconnected) are undone, the step that cost most first (its
measured effect when it was made, in the direction of m(∅)), as few as bring f to the floor. Each
candidate count is measured exactly on every prompt: doubling, then bisection (f need not rise
with every step undone, so this finds a count at which f ≥ floor measured, and one fewer measured
under it, not necessarily the fewest overall).

Steps that helped the metric when made (effect towards m(M)) are never undone. If undoing every
harmful step cannot reach the floor, all of them are undone and the result says so
(``reached`` False).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from torch import Tensor

from circuits.patching.metrics import faithfulness


class Evaluator(Protocol):
    m_full: float
    m_empty: float

    def evaluate(self, removed: Tensor) -> Tensor: ...


class Restored(NamedTuple):
    removed: Tensor
    """The removed set after undoing ``steps`` steps (same shape as the search's)."""
    steps: int
    """Removal steps undone."""
    faithfulness: float
    """f of the result, measured on every prompt."""
    metric: float
    evaluations: int
    """Full passes over every prompt the floor took."""
    reached: bool


def restore_to_floor(patcher: Evaluator, removed: Tensor, steps: list[tuple[Tensor, float]], floor: float,
                     metric: float) -> Restored:
    """Undo the costliest of ``steps`` (each ``([n, ndim] indices the step removed, its effect m(after) −
    m(before))``) until f ≥ ``floor``; ``removed`` is the search's final set, whose metric on every
    prompt is ``metric``. See the module docstring."""
    gap = patcher.m_full - patcher.m_empty
    f_now = float(faithfulness(metric, patcher.m_full, patcher.m_empty))
    if f_now >= floor:
        return Restored(removed, 0, f_now, metric, 0, True)
    sign = 1.0 if gap >= 0 else -1.0
    harmful = sorted((i for i, (_, effect) in enumerate(steps) if -effect * sign > 0),
                     key=lambda i: (sign * steps[i][1], i))  # the most harmful first; ties in search order
    evaluations = 0

    def undone(k: int) -> Tensor:
        r = removed.clone()
        for i in harmful[:k]:
            r[tuple(steps[i][0].T)] = False
        return r

    def measure(k: int) -> tuple[float, float]:
        nonlocal evaluations
        evaluations += 1
        m = float(patcher.evaluate(undone(k))[0])
        return float(faithfulness(m, patcher.m_full, patcher.m_empty)), m

    # Doubling: the first count measured at the floor (``hi``), the one before it under (``lo``).
    lo, hi, last = 0, 0, (f_now, metric)
    while lo < len(harmful):
        hi = min(max(1, 2 * lo), len(harmful))
        last = measure(hi)
        if last[0] >= floor:
            break
        lo = hi
    else:  # every harmful step undone (or none to undo) and still under the floor
        return Restored(undone(lo), lo, last[0], last[1], evaluations, False)
    best = last
    while hi - lo > 1:
        mid = (lo + hi) // 2
        f, m = measure(mid)
        if f >= floor:
            hi, best = mid, (f, m)
        else:
            lo = mid
    return Restored(undone(hi), hi, best[0], best[1], evaluations, True)
