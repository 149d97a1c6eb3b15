"""``graph.html``: one self-contained page to explore an attribution graph offline.

The page inlines its script, its style and the graph's data (``graphs.html_data.page_data``): it
loads nothing from the network and opens from disk or from ``circuits view``'s local server. Its
script (``graphs/html_assets/viewer.js``) is written for this page, small and without libraries:
edges on a canvas (a graph may hold 100,000), nodes in SVG, the token axis along the bottom,
layers upward and logits on top. Hover shows a feature's label and top contexts; click pins,
shift-click twice pins the strongest path between two nodes; pinned nodes group into named
supernodes; the side panel scores the pinned subgraph and lists a node's edges with their
measured effects, flags and head loadings; a slider prunes by cumulative influence.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphs.html_data import page_data
from transcoders.writes import finite_or_none, write_text

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph

_BODY = """<header><h1>{title}</h1><div class="sub">{sub}</div></header>
<main>
<div id="pane"><canvas id="edges"></canvas><canvas id="highlight"></canvas>
<svg id="svg"><g id="axes"></g><g id="supers"></g><g id="nodes"></g></svg></div>
<aside id="side">
<h2>Scores</h2>
<table>
<tr><th></th><th class="num">replacement</th><th class="num">completeness</th></tr>
<tr><td>graph</td><td class="num" id="graph-replacement"></td><td class="num" id="graph-completeness"></td></tr>
<tr><td>pinned (<span id="sub-features">0</span> features)</td><td class="num" id="sub-replacement"></td>
<td class="num" id="sub-completeness"></td></tr>
</table>
<div class="hint">In the pinned subgraph, every feature not pinned counts as an error.</div>
<h2>Pruning</h2>
<div class="row"><span>cumulative influence ≤</span><b id="threshold-value"></b></div>
<input type="range" id="threshold" min="0" max="1" step="0.005" value="1">
<div class="hint" id="shown"></div>
<h2>Pinned</h2>
<div class="hint">Click a node to pin it; shift-click two nodes to pin the strongest path between them.
<span id="path-note"></span></div>
<div id="pinned"></div>
<button id="clear">Clear pins</button>
<h2>Supernodes</h2>
<div class="row"><input type="text" id="supernode-name" placeholder="name"><button id="group">Group selected</button></div>
<div class="hint" id="group-note"></div>
<div id="supernodes"></div>
<h2>Node</h2>
<div id="detail"></div>
<h2>Legend</h2>
<div class="legend hint"><span class="pos">━ positive</span><span class="neg">━ negative</span><span>┅ verified edge
flagged</span><br>● feature (size: influence) · ■ error (grey) · ■ token (green) · ■ logit (purple)</div>
</aside>
</main>
<div id="tip"></div>"""


def to_html(graph: AttributionGraph, *, title: str | None = None, **kwargs: Any) -> str:
    """The page for ``graph`` (a pruned graph, usually); ``kwargs`` as for ``page_data``."""
    data = page_data(graph, title=title, **kwargs)
    return render_page(data)


def render_page(data: dict[str, Any]) -> str:
    """The page for ``page_data``'s output."""
    # Inside <script>, "</script" or "<!--" in a label would end or confuse the block: escape every "<".
    payload = json.dumps(finite_or_none(data), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    sub = f"{data['scan']} · {len(data['nodes']['id']):,} nodes · {len(data['edges']['s']):,} edges"
    body = _BODY.format(title=html.escape(data["title"]), sub=html.escape(sub))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(data['title'])}</title>"
            "<link rel=\"icon\" href=\"data:,\">"  # no favicon request: nothing to fetch, nothing to 404
            f"<style>{_asset('viewer.css')}</style></head>\n<body>\n{body}\n"
            f"<script id=\"graph-data\" type=\"application/json\">{payload}</script>\n"
            f"<script>{_asset('viewer.js')}</script>\n</body></html>\n")


def write_html(graph: AttributionGraph, path: str | Path, **kwargs: Any) -> Path:
    """Write ``to_html(graph, **kwargs)`` to ``path``, atomically."""
    return write_text(path, to_html(graph, **kwargs))


def _asset(name: str) -> str:
    return resources.files("graphs").joinpath("html_assets", name).read_text(encoding="utf-8")
