"""Trace a prompt, save its attribution graph (viewer JSON, GraphML), draw it (SVG) and view it.

    python examples/trace_render_view.py                       # SmolLM2 and its default transcoders
    python examples/trace_render_view.py "The capital of France is" --out out/france
    python examples/trace_render_view.py --tiny                # a tiny random model: seconds

Writes graph.html (an interactive page that works offline), graph.json (circuit-tracer's and
Neuronpedia's viewer schema), graph.graphml (Gephi, Cytoscape, networkx), graph.svg and summary.md, all
of the influence-pruned graph, into --out (a new or empty folder; default a new temp folder). With
--view it then serves the folder on localhost and opens graph.html, as `circuits view DIR` does.
(`circuits trace PROMPT --out DIR` writes the same files, with features labelled by their top contexts.)
"""

from __future__ import annotations

from pathlib import Path

from _common import IOI_PROMPT, load, output_folder, parser

import graphs
from circuits import trace
from graphs.html import write_html
from graphs.html_server import ViewerServer


def main(argv: list[str] | None = None) -> Path:
    p = parser(__doc__, out=True, trace=True)
    p.add_argument("prompt", nargs="?", default=IOI_PROMPT)
    p.add_argument("--view", action="store_true", help="serve the folder and open the graph (circuits view)")
    args = p.parse_args(argv)
    out = output_folder(args.out, "trace")
    model, tc = load(args)

    graph = trace(args.prompt, model=model, transcoders=tc, max_feature_nodes=args.max_feature_nodes or None)
    print(graph)
    print("top logits:", ", ".join(f"{tok!r} {prob:.3f}" for tok, prob in graph.top_logits[:3]))
    # Errors are nodes: how much of the graph the transcoders explain, not their error terms.
    print(f"replacement score {graph.replacement_score:.3f}, completeness score {graph.completeness_score:.3f}")

    # The full graph has every active feature; the files hold the influence-pruned one, as `circuits trace` does.
    pruned = graphs.prune(graph, node_threshold=0.8, edge_threshold=0.98)
    # Each kept node's cumulative influence lets a viewer's slider prune further, down from 0.8.
    slider = dict(cumulative=pruned.cumulative_scores[pruned.node_mask], node_threshold=0.8)
    graphs.write_viewer_json(pruned.graph, out / "graph.json", **slider)
    pruned.graph.save(out / "graph.graphml")
    write_html(pruned.graph, out / "graph.html", **slider)  # hover for labels, pin, group supernodes, slider
    graph.render(out / "graph.svg", max_nodes=40)  # prunes the same way, then keeps the 40 strongest nodes
    (out / "summary.md").write_text(graphs.summary(graph))
    g = graphs.load(out / "graph.graphml").to_networkx()  # every writer has its reader
    print(f"pruned graph: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges")
    print(f"wrote {out}: " + ", ".join(sorted(f.name for f in out.iterdir())))
    view(out, open_it=args.view)
    return out


def view(out: Path, *, open_it: bool) -> None:
    """Serve ``out`` on localhost and open its graph.html until Ctrl-C (`circuits view`), or say how to."""
    if not open_it:
        print(f"to explore it in the browser: circuits view {out}")
        return
    with ViewerServer(out) as server:  # 127.0.0.1 only, read-only
        print(f"serving {out} at {server.url} (Ctrl-C to stop)")
        server.open()
        try:
            server.thread.join()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
