"""A short Markdown account of a graph: what was traced, how much the errors carry, what was
kept, and the strongest paths from the prompt's tokens to the top logit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import networkx as nx

from graphs.draw import drawable
from graphs.heads import DIRECT, OTHER, strongest_attention_edge
from graphs.node_labels import show_token
from graphs.nodes import NODE_KINDS
from graphs.paths import strongest_paths

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph



def summary(graph: AttributionGraph, *, pruned: nx.DiGraph | None = None, drawn: nx.DiGraph | None = None,
            node_threshold: float = 0.8, edge_threshold: float = 0.98, k: int = 5, qk: Any = None) -> str:
    """Markdown: prompt and model, top logits, scores, node counts (full, pruned, ``drawn``), the
    ``k`` strongest token → top-logit paths in the pruned graph, and, where the graph has head loadings,
    the strongest attention edge into the top logit with the heads that carry it.

    ``pruned``: ``graphs.draw.drawable(graph, max_nodes=None, max_edges=None, ...)`` if already made.
    ``qk``: the ``circuits.attribution.QKAttribution`` of that edge's strongest head
    (``circuits.attribution.qk.strongest_attention_qk``): its top ``2 * k`` query × key pairs are listed.
    """
    meta = graph.metadata
    if pruned is None:
        pruned = drawable(graph, max_nodes=None, max_edges=None, node_threshold=node_threshold,
                          edge_threshold=edge_threshold)
    lines = ["# Attribution graph", "", f"prompt: {graph.prompt!r}  "]
    tc = meta.get("transcoders") or {}
    described = ", ".join(str(x) for x in (tc.get("kind"), tc.get("d_features") and f"{tc['d_features']} features "
                                           "per layer", tc.get("activation")) if x)
    lines.append(f"model: {meta.get('model', '?')} · transcoders: {described or '?'} · {graph.n_pos} tokens  ")
    seconds = meta.get("seconds")
    if isinstance(seconds, dict):
        lines.append(f"traced in {sum(seconds.values()):.1f} s ({meta.get('dtype', '?')}, {meta.get('device', '?')})")
    lines += ["", "## Top logits", "", "| token | p |", "|---|---|"]
    lines += [f"| {show_token(tok)} | {p:.3f} |" for tok, p in graph.top_logits]
    lines += ["", "## Scores (full graph)", "",
              f"- replacement score: {graph.replacement_score:.3f} (share of the tokens' and errors' influence on "
              "the logits that tokens carry; 1 = errors carry none)",
              f"- completeness score: {graph.completeness_score:.3f} (influence-weighted share of node inputs that do "
              "not come from errors)", "", "## Nodes", ""]
    lines += _counts(graph, pruned, drawn, node_threshold, edge_threshold)
    top = _top_logit(pruned)
    if top is not None:
        attrs = pruned.nodes[top]
        lines += ["", f"## Strongest paths to {show_token(attrs.get('token', top))} (p = {attrs.get('prob', 0):.3f})",
                  "", "Strength: the product of each edge's share of its target's input; sign: excites (+) or "
                  "inhibits (−) the logit. Direct token → logit edges tend to lead the first list, so the second "
                  "leaves them out.", ""]
        for title, paths in (("All paths", strongest_paths(pruned, top, k=k)),
                             ("Through the model (at least one feature or error)",
                              strongest_paths(pruned, top, k=k, direct=False))):
            lines += [f"{title}:", ""]
            if not paths:
                lines.append("(none survive pruning)")
            for i, p in enumerate(paths, 1):
                steps = " → ".join(_name(pruned, n) for n in p.nodes)
                lines.append(f"{i}. {100 * p.strength:.2f}% {'+' if p.sign > 0 else '−'}  {steps}")
            lines.append("")
    lines += _attention(graph, qk, k)
    return "\n".join(lines).rstrip("\n") + "\n"


def _attention(graph: AttributionGraph, qk: Any, k: int) -> list[str]:
    edge = strongest_attention_edge(graph)
    if edge is None:
        return []
    s, t, entry = edge
    heads = ", ".join(f"{name} {v:+.3g}" for name, v in entry.items() if name not in (OTHER, DIRECT))
    lines = ["## Attention into the top logit", "",
             f"Strongest attention edge: {s} → {t}, through {heads} (other heads {entry.get(OTHER, 0.0):+.3g}, "
             f"no attention {entry.get(DIRECT, 0.0):+.3g}).", ""]
    if qk is not None:
        lines += [f"Why L{qk.layer}.H{qk.head} attends from position {qk.query} to {qk.key}: the query-side × "
                  "key-side source pairs of its pre-softmax score (``circuits.attribution.qk``).", "",
                  qk.table(2 * k), ""]
    return lines


def _counts(graph: AttributionGraph, pruned: nx.DiGraph, drawn: nx.DiGraph | None, node_threshold: float,
            edge_threshold: float) -> list[str]:
    kept = Counter(k for _, k in pruned.nodes(data="kind"))
    shown = Counter(k for _, k in drawn.nodes(data="kind")) if drawn is not None else None
    head = f"| kind | full graph | pruned ({node_threshold:g} / {edge_threshold:g}) |" + (" drawn |" if shown else "")
    rows = [head, "|---|---|---|" + ("---|" if shown else "")]
    for kind in NODE_KINDS:
        row = f"| {kind}s | {graph.count(kind)} | {kept[kind]} |"
        rows.append(row + (f" {shown[kind]} |" if shown is not None else ""))
    edges = f"| edges | {graph.adjacency.nnz} | {pruned.number_of_edges()} |"
    rows.append(edges + (f" {drawn.number_of_edges()} |" if drawn is not None else ""))
    return rows


def _top_logit(g: nx.DiGraph) -> Hashable | None:
    logits = [(a.get("prob") or 0.0, n) for n, a in g.nodes(data=True) if a.get("kind") == "logit"]
    return max(logits)[1] if logits else None


def _name(g: nx.DiGraph, node: Hashable) -> str:
    a = g.nodes[node]
    kind = a.get("kind")
    if kind == "token":
        return f"{show_token(a.get('token', ''))}@{a.get('position')}"
    if kind == "logit":
        return f"logit {show_token(a.get('token', ''))}"
    if kind == "feature":
        label = a.get("label", "")
        own = f"L{a.get('layer')} #{a.get('feature')}@{a.get('position')}"
        return own if label.startswith(f"L{a.get('layer')} #") else f"{own} ({label})"
    return f"error L{a.get('layer')}@{a.get('position')}"
