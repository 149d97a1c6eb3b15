"""Pictures of graphs through graphviz: layers bottom to top, token positions left to right.

The prompt's tokens sit along the bottom row, one column per position; each layer that has a
drawn node gets a row above them (empty layers are left out, the row label says which layer);
logits sit on the top row above the last position. Features are amber boxes showing their
label (top-activating tokens) and ``L{layer} #{id}``; transcoder errors are grey dashed boxes.
Edges are blue when excitatory and red when inhibitory; their width is the share of the
target's input the edge carries (``|w| / Σ|w_in|``, over the whole unpruned graph). An edge that
attention carries (head loadings, ``graphs.heads``) is labelled with its strongest heads
(``heads=2``), each with its share of the edge's head loadings.

An ``AttributionGraph`` is influence-pruned and capped at ``max_nodes`` features and errors
first, so the picture reads at a glance: the most influential ones, at most three per (layer,
position) and errors in at most a quarter of the places (see ``cap``). Any ``networkx.DiGraph`` draws with the same code
(``Circuit.to_networkx()`` for one): it reads the node attributes ``kind``, ``layer``,
``position`` and ``label`` and the edge attribute ``weight``, each optional.

Coordinates are computed here and handed to graphviz's ``dot`` binary as ``dot -Kneato -n2``,
which keeps them and only routes the edges; ``dot`` must be installed (``make setup`` does it).
"""

from __future__ import annotations

import html
import math
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import graphviz
import networkx as nx
import numpy as np
import scipy.sparse as sp

from graphs.convert import to_networkx
from graphs.heads import DIRECT, OTHER, parse_heads
from graphs.metrics import PruneResult, node_influence, prune
from graphs.node_labels import show_token
from transcoders.writes import write_bytes, write_text

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"  # blue excites, red inhibits
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
SOURCE_SUFFIXES = (".dot", ".gv")

# Layout, in points (1/72 inch).
_SLOT_W, _ROW_H, _GAP, _MARGIN = 118.0, 74.0, 18.0, 70.0


class GraphvizMissingError(RuntimeError):
    """graphviz's ``dot`` binary, which draws the pictures, is not installed."""


def require_dot() -> str:
    """The path of graphviz's ``dot`` binary; raises ``GraphvizMissingError`` naming the fix."""
    found = shutil.which("dot")
    if found is None:
        raise GraphvizMissingError(
            "drawing graphs needs graphviz's `dot` program, which is not installed (the Python package "
            "`graphviz` only calls it). Fix: run `make setup`, or install it yourself: "
            "`sudo apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS), "
            "`conda install -c conda-forge graphviz`. GraphML and JSON exports work without it.")
    return found


def drawable(graph: AttributionGraph, *, max_nodes: int | None = 40, node_threshold: float = 0.8,
             edge_threshold: float = 0.98, max_edges: int | None = 90, pruned: PruneResult | None = None,
             influence: np.ndarray | None = None) -> nx.DiGraph:
    """The influence-pruned graph capped at ``max_nodes`` features and errors, as a networkx graph
    ready to draw (edges carry ``share``, nodes their influence in the full graph).

    ``max_nodes=None, max_edges=None``: the whole pruned graph (what the summary's paths search).
    ``pruned`` and ``influence`` (``[n_nodes]``): results already computed for ``graph``, reused.
    """
    if max_nodes is not None and max_nodes < 1:
        raise ValueError(f"max_nodes must be at least 1 (or None for all), got {max_nodes}")
    infl = node_influence(graph) if influence is None else influence
    if pruned is None:
        pruned = prune(graph, node_threshold=node_threshold, edge_threshold=edge_threshold)
    idx = np.flatnonzero(pruned.node_mask)
    g = to_networkx(pruned.graph, influence=infl[idx])
    # Shares of each kept target's whole input (all its sources, kept or not): the kept rows only,
    # so a graph of a hundred million edges is never copied whole.
    rows = abs(sp.csr_matrix(graph.adjacency[idx], dtype=np.float64))
    totals = np.maximum(np.asarray(rows.sum(axis=1)).ravel(), 1e-30)
    share = sp.coo_matrix(sp.diags(1.0 / totals) @ rows[:, idx])
    ids = pruned.graph.node_ids
    for *_, attrs in g.edges(data=True):
        attrs["share"] = 0.0  # an edge of weight 0 may have no stored share
    for t, s, value in zip(share.row.tolist(), share.col.tolist(), share.data.tolist()):
        if g.has_edge(ids[s], ids[t]):
            g.edges[ids[s], ids[t]]["share"] = value
    g.graph.update(n_nodes_full=graph.n_nodes, n_edges_full=int(graph.adjacency.nnz),
                   replacement_score=graph.replacement_score, completeness_score=graph.completeness_score)
    return cap(g, max_nodes=max_nodes, max_edges=max_edges)


def cap(g: nx.DiGraph, *, max_nodes: int | None = 40, max_edges: int | None = 90, max_per_cell: int = 3,
        error_share: float = 0.25) -> nx.DiGraph:
    """Keep the ``max_nodes`` most influential inner nodes (all tokens and logits) and the
    ``max_edges`` strongest edges, plus each kept node's strongest outgoing edge.

    At most ``max_per_cell`` inner nodes sit at one (layer, position), and errors take at most
    ``error_share`` of the slots while features are left to fill them: the picture is about the
    mechanism, and how much the errors carry is in its title (the replacement score).
    ``None`` keeps every node (no cell or error limits either) or every edge; inner nodes left
    feeding nothing are still removed. Ends are always kept: tokens and logits, and in other
    graphs (a head-level circuit, say) nodes without inputs or without outputs.
    """
    g = g.copy()
    inner = [n for n in g if not _is_end(g, n)]
    if max_nodes is not None:
        _keep_top_inner(g, inner, max_nodes, max_per_cell, error_share)
    # Inner nodes that feed nothing drawn explain nothing in the picture; removing one can strand another.
    inner_left = set(inner) & set(g)
    while True:
        dangling = [n for n in inner_left if g.out_degree(n) == 0]
        if not dangling:
            break
        g.remove_nodes_from(dangling)
        inner_left -= set(dangling)
    if max_edges is not None:
        strength = _edge_strength(g)
        edges = sorted(g.edges, key=lambda e: -strength[e])
        keep = set(edges[:max_edges])
        for n in g:
            out = [(n, t) for t in g.successors(n)]
            if out:
                keep.add(max(out, key=lambda e: strength[e]))
        g.remove_edges_from([e for e in list(g.edges) if e not in keep])
    g.graph["drawn_nodes"], g.graph["drawn_edges"] = g.number_of_nodes(), g.number_of_edges()
    return g


def _is_end(g: nx.DiGraph, n: Hashable) -> bool:
    kind = g.nodes[n].get("kind")
    if kind in ("token", "logit"):
        return True
    if kind in ("feature", "error"):  # an error has no inputs, yet it is no end: it can be capped
        return False
    return g.in_degree(n) == 0 or g.out_degree(n) == 0


def _keep_top_inner(g: nx.DiGraph, inner: list[Hashable], max_nodes: int, max_per_cell: int,
                    error_share: float) -> None:
    """Remove all but the chosen inner nodes from ``g`` (see ``cap``)."""
    ranked = sorted(inner, key=lambda n: -float(g.nodes[n].get("influence") or 0.0))
    # The per-cell limit stops one busy spot (the first token, an attention sink, say) from taking
    # every slot, so the picture shows the breadth of the graph.
    kept: set[Hashable] = set()
    per_cell: Counter = Counter()
    n_errors, max_errors = 0, max(1, int(error_share * max_nodes))
    for relax_errors in (False, True):  # a second pass lets errors fill slots features leave empty
        for n in ranked:
            if len(kept) == max_nodes:
                break
            cell = (g.nodes[n].get("layer"), g.nodes[n].get("position"))
            is_error = g.nodes[n].get("kind") == "error"
            if n in kept or per_cell[cell] >= max_per_cell or (is_error and not relax_errors
                                                                and n_errors >= max_errors):
                continue
            kept.add(n)
            per_cell[cell] += 1
            n_errors += is_error
    g.remove_nodes_from(set(inner) - kept)


def to_dot(g: nx.DiGraph, *, title: str | None = None, heads: int = 2) -> graphviz.Digraph:
    """The graphviz description of ``g``, with every node placed (see the module docstring); edges that
    attention carries are labelled with their ``heads`` strongest heads (0: none)."""
    pos, rows = _layout(g)
    strength = _edge_strength(g)
    dot = graphviz.Digraph(engine="neato", name="attribution")
    dot.attr("graph", splines="true", outputorder="edgesfirst", bgcolor="white", pad="0.3", sep="+2", esep="+1",
             fontname="Helvetica", fontsize="18", labelloc="t", labeljust="l")
    dot.attr("node", fontname="Helvetica", fontsize="10", margin="0.06,0.03")
    dot.attr("edge", arrowsize="0.5")
    if title is None:
        title = _default_title(g)
    if title:
        dot.attr("graph", label=title)
    for name, y in rows:
        dot.node(f"__row_{y:g}", label=name, shape="plaintext", fontcolor="#777777", fontsize="9",
                 pos=f"{-_MARGIN:.1f},{y:.1f}!", **{"class": "row-label"})
    for n, attrs in g.nodes(data=True):
        x, y = pos[n]
        dot.node(_key(n), pos=f"{x:.1f},{y:.1f}!", **_node_style(n, attrs))
    for s, t, attrs in g.edges(data=True):
        w = float(attrs.get("weight") or 0.0)
        z = strength[(s, t)]
        colour = POSITIVE if w >= 0 else NEGATIVE
        alpha = int(round(50 + 190 * z))  # faint when weak, so the strong paths stand out
        tip = _clean(f"{s} → {t}: weight {w:+.3g}")
        if attrs.get("share") is not None:
            tip += f", {100 * float(attrs['share']):.1f}% of the target's input"
        if attrs.get("measured_effect") is not None:
            tip += f", measured effect {float(attrs['measured_effect']):+.3g}"
        label = _head_label(attrs.get("heads"), heads)
        extra = {"label": label, "fontsize": "8", "fontcolor": "#555555"} if label else {}
        if label:
            tip += f", through {label}"
        dot.edge(_key(s), _key(t), color=f"{colour}{alpha:02x}", penwidth=f"{0.5 + 5.5 * z:.2f}", tooltip=tip,
                 **extra, **{"class": "positive" if w >= 0 else "negative"})
    return dot


def _head_label(text: str | None, n: int) -> str:
    """``"L20.H3 62%, L18.H1 20%"``: the ``n`` strongest heads of an edge's loadings (``graphs.heads``), each
    with its share of their absolute sum; empty when attention carries less than the direct path."""
    if not text or n <= 0:
        return ""
    entry = parse_heads(text)
    direct, other = abs(entry.pop(DIRECT, 0.0)), abs(entry.pop(OTHER, 0.0))
    total = sum(abs(v) for v in entry.values()) + other
    if total <= direct or total == 0:
        return ""
    return ", ".join(f"{name} {abs(v) / total:.0%}" for name, v in list(entry.items())[:n])


def svg(obj: AttributionGraph | nx.DiGraph, **kwargs: Any) -> str:
    """The picture as SVG text (``kwargs`` as for ``render``)."""
    require_dot()
    return _dot_of(obj, **kwargs).pipe(format="svg", neato_no_op=2, encoding="utf-8")


def render(obj: AttributionGraph | nx.DiGraph, path: str | Path, *, max_nodes: int = 40, max_edges: int = 90,
           node_threshold: float = 0.8, edge_threshold: float = 0.98, title: str | None = None,
           heads: int = 2) -> Path:
    """Draw ``obj`` to ``path``: ``.svg``, ``.png`` or ``.pdf`` (needs ``dot``), or ``.dot``/``.gv`` source.

    An ``AttributionGraph`` is pruned (``node_threshold``, ``edge_threshold``) and capped at
    ``max_nodes`` features and errors and ``max_edges`` edges; a networkx graph is only capped. ``heads``:
    how many heads label an edge that attention carries.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS and suffix not in SOURCE_SUFFIXES:
        raise ValueError(f"cannot draw to {suffix or 'a file without a suffix'!r}. Fix: use one of "
                         f"{', '.join([*FORMATS, *SOURCE_SUFFIXES])}.")
    dot = _dot_of(obj, max_nodes=max_nodes, max_edges=max_edges, node_threshold=node_threshold,
                  edge_threshold=edge_threshold, title=title, heads=heads)
    if suffix in SOURCE_SUFFIXES:
        return write_text(path, dot.source)
    require_dot()
    return write_bytes(path, dot.pipe(format=FORMATS[suffix], neato_no_op=2))


def repr_svg(graph: AttributionGraph) -> str | None:
    """SVG for Jupyter's rich display, or None (so Jupyter shows the text repr) when ``dot`` is missing."""
    if shutil.which("dot") is None:
        return None
    return svg(graph)


# --- internals --------------------------------------------------------------------------------


def _dot_of(obj: AttributionGraph | nx.DiGraph, *, max_nodes: int = 40, max_edges: int = 90,
            node_threshold: float = 0.8, edge_threshold: float = 0.98, title: str | None = None,
            heads: int = 2) -> graphviz.Digraph:
    if isinstance(obj, nx.DiGraph):
        g = cap(obj, max_nodes=max_nodes, max_edges=max_edges)
    elif hasattr(obj, "adjacency") and hasattr(obj, "node_ids"):  # an AttributionGraph (not imported: see graphs.graph)
        g = drawable(obj, max_nodes=max_nodes, max_edges=max_edges, node_threshold=node_threshold,
                     edge_threshold=edge_threshold)
    else:
        raise TypeError(f"cannot draw a {type(obj).__name__}. Fix: pass an AttributionGraph or a networkx.DiGraph "
                        "(e.g. circuit.to_networkx()).")
    return to_dot(g, title=title, heads=heads)


def _key(node: Hashable) -> str:
    return node if isinstance(node, str) else str(node)


def _edge_strength(g: nx.DiGraph) -> dict[tuple[Hashable, Hashable], float]:
    """Each edge's strength in [0, 1]: its ``share`` when known, else |weight| over the largest."""
    weights = {(s, t): abs(float(a.get("weight") or 0.0)) for s, t, a in g.edges(data=True)}
    shares = {(s, t): a.get("share") for s, t, a in g.edges(data=True)}
    biggest = max(weights.values(), default=0.0) or 1.0
    out = {}
    for e, w in weights.items():
        share = shares[e]
        # sqrt: a quarter of the input already reads as half-width, so mid-sized edges stay visible.
        out[e] = math.sqrt(min(1.0, float(share))) if share is not None else math.sqrt(w / biggest)
    return out


def _row_of(attrs: dict[str, Any]) -> tuple[int, float]:
    """(band, layer): tokens, then layers, then logits."""
    kind = attrs.get("kind")
    if kind == "token":
        return 0, 0.0
    if kind == "logit":
        return 2, 0.0
    layer = attrs.get("layer")
    return 1, float(layer) if layer is not None else 0.0


def _layout(g: nx.DiGraph) -> tuple[dict[Hashable, tuple[float, float]], list[tuple[str, float]]]:
    """Coordinates for every node, and the row labels with their heights."""
    rows = sorted({_row_of(a) for _, a in g.nodes(data=True)})
    y_of = {row: i * _ROW_H for i, row in enumerate(rows)}
    has_pos = any(a.get("position") is not None for _, a in g.nodes(data=True))
    cells: dict[tuple[tuple[int, float], int], list[Hashable]] = defaultdict(list)
    for n, a in sorted(g.nodes(data=True), key=lambda na: _order_key(na[0], na[1])):
        row = _row_of(a)
        column = int(a["position"]) if has_pos and a.get("position") is not None else 0
        if row[0] == 2:
            column = -1  # logits get a row of their own, centred over the last column
        cells[(row, column)].append(n)
    pos: dict[Hashable, tuple[float, float]] = {}
    if has_pos:
        columns = sorted({c for (_, c) in cells if c >= 0})
        width = {c: max(len(ns) for (r, cc), ns in cells.items() if cc == c) * _SLOT_W for c in columns}
        left, x0 = 0.0, {}
        for c in columns:
            x0[c] = left
            left += width[c] + _GAP
        for (row, c), ns in cells.items():
            if c < 0:
                continue
            start = x0[c] + (width[c] - len(ns) * _SLOT_W) / 2
            for i, n in enumerate(ns):
                pos[n] = (start + (i + 0.5) * _SLOT_W, y_of[row])
        centre = x0[columns[-1]] + width[columns[-1]] / 2 if columns else 0.0
    else:
        widest = max((len(ns) for ns in cells.values()), default=1) * _SLOT_W
        for (row, _), ns in cells.items():
            start = (widest - len(ns) * _SLOT_W) / 2
            for i, n in enumerate(ns):
                pos[n] = (start + (i + 0.5) * _SLOT_W, y_of[row])
        centre = widest / 2
    for (row, c), ns in cells.items():
        if c == -1:
            start = centre - len(ns) * _SLOT_W / 2
            for i, n in enumerate(ns):
                pos[n] = (start + (i + 0.5) * _SLOT_W, y_of[row])
    names = []
    for row in rows:
        band, layer = row
        names.append(("tokens" if band == 0 else "logits" if band == 2 else f"L{layer:g}", y_of[row]))
    return pos, names


def _order_key(node: Hashable, attrs: dict[str, Any]) -> tuple:
    """Within a cell: logits by probability, others by influence, most first."""
    if attrs.get("kind") == "logit":
        return (0, -float(attrs.get("prob") or 0.0), str(node))
    return (0, -float(attrs.get("influence") or 0.0), str(node))


def _node_style(node: Hashable, a: dict[str, Any]) -> dict[str, str]:
    kind = a.get("kind")
    label = str(a.get("label") or node)
    tip = _clean(f"{node}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}"
                                         for k, v in a.items() if k not in ("label",)))
    common = {"tooltip": tip, "class": str(kind or "node"), "width": f"{(_SLOT_W - 12) / 72:.2f}"}
    if kind == "feature":
        own = f"L{a.get('layer')} #{a.get('feature')}"
        text = _html(_shorten(label, 19)) if label != own else ""
        text += f'<BR/><FONT POINT-SIZE="7" COLOR="#7a6a3a">{own}</FONT>' if text else _html(own)
        return {**common, "shape": "box", "style": "rounded,filled", "fillcolor": "#fff1c1", "color": "#c9a227",
                "fontsize": "9", "label": f"<{text}>"}
    if kind == "error":
        # Smaller and grey: an error is what the transcoders miss, not a mechanism.
        return {**common, "shape": "box", "style": "filled,dashed", "fillcolor": "#e6e6e6", "color": "#8c8c8c",
                "fontcolor": "#555555", "fontsize": "8", "width": "0.8", "height": "0.3",
                "label": f"error L{a.get('layer')}"}
    if kind == "token":
        text = f'<B>{_html(_shorten(show_token(label), 16))}</B>'
        return {**common, "shape": "box", "style": "filled", "fillcolor": "#f4f4f4", "color": "#444444",
                "label": f"<{text}>"}
    if kind == "logit":
        prob = a.get("prob")
        text = f'<B>{_html(_shorten(show_token(label), 16))}</B>'
        if prob is not None:
            text += f'<BR/><FONT POINT-SIZE="8">p = {float(prob):.2f}</FONT>'
        return {**common, "shape": "box", "style": "rounded,filled,bold", "fillcolor": "#d4e6f5",
                "color": "#2166ac", "label": f"<{text}>"}
    return {**common, "shape": "box", "style": "rounded", "label": _shorten(label, 22)}


def _default_title(g: nx.DiGraph) -> str:
    prompt = g.graph.get("prompt")
    parts = []
    if prompt:
        parts.append(f"“{_shorten(str(prompt), 90)}”")
    scores = [(k, g.graph.get(k)) for k in ("replacement_score", "completeness_score")]
    if all(v is not None for _, v in scores):
        parts.append(f"replacement {scores[0][1]:.2f} · completeness {scores[1][1]:.2f}"
                     f" · {g.graph.get('drawn_nodes', g.number_of_nodes())} of "
                     f"{g.graph.get('n_nodes_full', g.number_of_nodes())} nodes drawn")
    parts.append("blue excites, red inhibits; width = share of the target's input; grey dashed = transcoder error")
    return "\n".join(parts) + "\n"


def _clean(text: str) -> str:
    """Text graphviz can carry: control characters (a NUL ends dot's input) written as escapes."""
    return _CONTROL.sub(lambda m: "\\n" if m.group() == "\n" else f"\\x{ord(m.group()):02x}", str(text))


_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _shorten(text: str, limit: int) -> str:
    text = _clean(" ".join(str(text).split()) if text.strip() else text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _html(text: str) -> str:
    return html.escape(text, quote=False)
