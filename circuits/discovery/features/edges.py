"""Measured edge effects in a feature-level circuit: path patching of one edge at a time.

Removing the edge u → d from a circuit C means d reads u's ablated value through the direct
paths only (residual stream, attention, norms, transcoder skips), while every other node sees u
as it is in C. Two passes per edge, batched over edges:

1. C with u ablated, every MLP slot strictly between u and d holding its write from C (plus its
   skip of this pass's input, and for a CLT feature u its own change of decoded write): d's input
   now differs from C's by u's direct effect only; read off d's new value.
2. C with d moved by that difference and nothing else changed: m of this run minus m(C) is the
   edge's effect. For d = logits, pass 1 already reads the metric.

To first order this is the edge's EAP score (``scores.edge_scores``), which the tests check.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.discovery.features.patcher import FeaturePatcher, Surgery
from circuits.discovery.features.scores import LOGITS


@torch.no_grad()
def measure_edges(p: FeaturePatcher, keep: Tensor, edges: list[tuple[int, int]], *, strength: float = 1.0,
                  per_pass: int = 8) -> Tensor:
    """``[n_edges]`` float64: m(C with edge u → d removed) − m(C) for each ``(u, d)`` in ``edges``
    (``d = LOGITS`` for the metric), C = ``keep [n_nodes]``. ``strength`` < 1 ablates u only that
    fraction of the way (first-order checks)."""
    idx, tc, L = p.index, p.tc, p.model.n_layers
    out = torch.zeros(len(edges), dtype=torch.float64)
    for c, rows in enumerate(p.chunks):
        b, weight = rows.stop - rows.start, (rows.stop - rows.start) / p.task.n
        base: dict[str, Tensor] = {}
        m_c = float(p.score(c, p._forward(c, keep[None], seen=base)))
        held = {t: base[f"write{t}"] - tc.skip_layer(base[f"in{t}"], t) for t in range(L)}   # [b, P, D]
        for k in range(0, len(edges), per_pass):
            part = edges[k:k + per_pass]
            K = len(part)
            # Pass 1: u ablated, the slots between u and d held.
            keep_a = keep[None].repeat(K, 1)
            writes: dict[int, tuple[Tensor, Tensor]] = {}
            for j, (u, d) in enumerate(part):
                keep_a[j, u] = False
                kind, s, pos, f = idx.describe(u)
                top = L if d == LOGITS else idx.describe(d)[1]
                for t in range(s + 1, top):
                    mask, value = writes.setdefault(t, (torch.zeros(K, dtype=torch.bool),
                                                        held[t].new_zeros(K * b, *held[t].shape[1:])))
                    mask[j] = True
                    value[j * b:(j + 1) * b] = held[t] + _own_write(p, base, rows, u, t, strength)
            seen: dict[str, Tensor] = {}
            logits = p._forward(c, keep_a, strength=strength, seen=seen, surgery=Surgery(writes, {}))
            fixes: dict[int, list[tuple[int, int, int, Tensor]]] = {}
            for j, (u, d) in enumerate(part):
                block = slice(j * b, (j + 1) * b)
                if d == LOGITS:
                    out[k + j] += (float(p.score(c, logits[block])) - m_c) * weight
                    continue
                kind, layer, pos, f = idx.describe(d)
                x_new, x_old = seen[f"in{layer}"][block, pos], base[f"in{layer}"][:, pos]
                if kind == "feature" and pos < p.feature_start:
                    continue  # no features there (circuits.replacement.slots): nothing to move
                if kind == "feature":
                    add = tc.encode(x_new, layer).acts[:, f] - base[f"acts{layer}"][:, pos, f]
                else:
                    add = (p.error_part(x_new, seen[f"out{layer}"][block, pos], layer, pos)
                           - p.error_part(x_old, base[f"out{layer}"][:, pos], layer, pos))
                fixes.setdefault(layer, []).append((j, pos, f, add))
            # Pass 2: C with each d moved by what it lost.
            if fixes:
                logits = p._forward(c, keep[None].repeat(K, 1), surgery=Surgery({}, fixes))
                for j, (u, d) in enumerate(part):
                    if d != LOGITS:
                        out[k + j] += (float(p.score(c, logits[j * b:(j + 1) * b])) - m_c) * weight
    return out


def _own_write(p: FeaturePatcher, base: dict[str, Tensor], rows: slice, u: int, t: int, strength: float) -> Tensor:
    """``[b, P, D]``: how ablating u changes its own decoded write to layer t (a CLT feature writes
    to every later layer; anything else writes nothing beyond its own layer)."""
    kind, s, pos, f = p.index.describe(u)
    held = base[f"write{t}"]
    change = torch.zeros_like(held)
    if kind == "feature" and s in p.tc.sources(t):
        delta = strength * (p.ablated.acts[s, rows, pos, f] - base[f"acts{s}"][:, pos, f])   # [b]
        change[:, pos] = delta[:, None] * p.tc.decoder_at(s, t)[f]
    return change

