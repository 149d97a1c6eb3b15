"""EAP and EAP-IG at feature granularity: node scores for every node, edge scores among kept ones.

A node's score estimates m(node ablated) − m(M) to first order:

    score(n) = Σ_prompts (a_n^corrupted − a_n^clean) · ∂m/∂a_n

where a_n is a feature's activation, an error vector or a token embedding, and ∂m/∂a_n is
taken in the live replacement model (``patcher``). EAP-IG averages ∂m/∂a_n over inputs
interpolated between the corrupted and the clean embeddings (Hanna et al.'s EAP-IG: midpoint
rule, α = (i + ½) / steps), as the head-level ``EdgePatcher.edge_scores`` does.

An edge u → d is scored as EAP scores edges: u's activation difference times the gradient of
the metric with respect to d's input *through that edge*, i.e. through the direct paths from u
to d (residual stream, attention, norms and transcoder skips, with every MLP slot in between
held at its value):

    score(u → d) = Σ_prompts Δa_u · (∂pre_d/∂a_u)|direct · ∂m/∂pre_d

For d = logits the last factor is 1. One backward pass per target node, so edges are scored
among the nodes a circuit keeps, not among all of them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from circuits.discovery.features.patcher import FeaturePatcher, Grads

LOGITS = -1
"""The destination index of edges into the metric (the logits)."""


def node_scores(p: FeaturePatcher, method: Literal["eap", "eap-ig"] = "eap", *,
                steps: int = 5) -> tuple[Tensor, Grads]:
    """``[n_nodes]`` float64 node scores, and the gradients at the clean input (for edge scores)."""
    if method not in ("eap", "eap-ig"):
        raise ValueError(f"unknown method {method!r}: use 'eap' or 'eap-ig'")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    clean_grads = p.gradients(1.0)
    if method == "eap":
        g = clean_grads
    else:
        runs = [p.gradients((i + 0.5) / steps) for i in range(steps)]
        g = Grads(sum(r.embed for r in runs) / steps, sum(r.write for r in runs) / steps)  # type: ignore[arg-type]
    c, x, acc = p.clean, p.ablated, p.acc_dtype
    s_embed = ((x.embed - c.embed).to(acc) * g.embed).sum((0, 2))                  # [P]
    s_feat = ((x.acts - c.acts).to(acc) * p.feature_grads(g.write)).sum(1)         # [L, P, F]
    s_err = ((x.errors - c.errors).to(acc) * g.write).sum((1, 3))                  # [L, P]
    scores = torch.cat([s_embed, s_feat.flatten(), s_err.flatten()]).double().cpu()
    return scores, clean_grads


def edge_scores(p: FeaturePatcher, kept: list[int], grads: Grads) -> dict[tuple[int, int], float]:
    """EAP scores ``{(src, dst): score}`` of the edges among the ``kept`` nodes and into the logits
    (``dst = LOGITS``); ``grads`` are the clean-input gradients from ``node_scores``."""
    idx, tc, L = p.index, p.tc, p.model.n_layers
    described = {i: idx.describe(i) for i in kept}
    targets = [i for i in kept if described[i][0] != "embedding"] + [LOGITS]
    g_a = p.feature_grads(grads.write)                                            # [L, n, P, F]
    acc = p.acc_dtype
    d_embed = (p.ablated.embed - p.clean.embed).to(acc)
    d_acts = (p.ablated.acts - p.clean.acts).to(acc)
    d_err = (p.ablated.errors - p.clean.errors).to(acc)
    decoders = [tc.decoder_vectors(s).detach().to(acc) for s in range(L)]                   # [F, n_targets, D]
    out: dict[tuple[int, int], float] = {}
    n, P, D = p.task.n, p.task.n_pos, p.model.d_model
    for c, rows in enumerate(p.chunks):
        b = rows.stop - rows.start
        leaves = [torch.zeros(b, P, D, dtype=p.model.dtype, device=p.model.device, requires_grad=True)
                  for _ in range(L + 1)]
        seen: dict[str, Tensor] = {}
        with torch.enable_grad():
            logits = p._forward(c, None, leaves=leaves, seen=seen, direct=True)
            for t in targets:
                y, t_layer = _readout(p, t, described.get(t), rows, seen, logits, g_a, grads, b / n)
                sources = [u for u in kept if described[u][1] < t_layer]
                if not sources or not y.requires_grad:
                    continue
                gs = [g.to(acc) if g is not None else None
                      for g in torch.autograd.grad(y, leaves, retain_graph=True, allow_unused=True)]
                for u in sources:
                    kind, s, pos, f = described[u]
                    if kind == "embedding":
                        v = 0.0 if gs[0] is None else float((d_embed[rows, pos] * gs[0][:, pos]).sum())
                    elif kind == "error":
                        g = gs[s + 1]
                        v = 0.0 if g is None else float((d_err[s, rows, pos] * g[:, pos]).sum())
                    else:
                        v = 0.0
                        for k in range(decoders[s].shape[1]):
                            g = gs[s + k + 1]
                            if g is not None and s + k < t_layer:
                                v += float((d_acts[s, rows, pos, f] * (g[:, pos] @ decoders[s][f, k])).sum())
                    out[(u, t)] = out.get((u, t), 0.0) + v
    return out


def _readout(p: FeaturePatcher, target: int, described: tuple[str, int, int, int] | None, rows: slice,
             seen: dict[str, Tensor], logits: Tensor, g_a: Tensor, grads: Grads,
             weight: float) -> tuple[Tensor, int]:
    """The scalar whose gradient gives the edges into ``target``, and the target's layer (sources
    must lie below it): ∂m/∂pre_d · pre_d summed over prompts for a feature, ∂m/∂e · e(x) for an
    error, the metric for the logits."""
    if target == LOGITS:
        return p.score(p.chunks.index(rows), logits) * weight, p.model.n_layers
    kind, layer, pos, f = described  # type: ignore[misc]
    x = seen[f"in{layer}"][:, pos]                                                  # [b, D]
    if kind == "feature":
        active = (p.clean.acts[layer, rows, pos, f] != 0).float()
        w = g_a[layer, rows, pos, f] * active                                       # ∂m/∂pre: 1 where active
        return (p.tc.pre_acts(x, layer)[:, f].to(w.dtype) * w).sum(), layer
    e = p.error_part(x, seen[f"out{layer}"][:, pos], layer, pos)
    return (e.to(grads.write.dtype) * grads.write[layer, rows, pos]).sum(), layer
