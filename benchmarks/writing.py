"""Writing the demo's files: each writer of ``circuits demo`` timed alone on the demo's pruned graph.

    .venv/bin/python -m benchmarks.writing [--threads 2] [--graph PATH] [--reps 2]

Traces the demo's graph as ``benchmarks/verify.py`` does (the IOI prompt, the default set, the 4,096
most influential features, pruned at 0.8 / 0.98; ``--graph`` caches it as .npz), then times, best of
``--reps``: the networkx conversion, the GraphML file, the viewer's JSON, the HTML page, and the two
strongest-path searches summary.md makes. Files go to a temporary folder and are removed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import print_machine  # noqa: E402
from benchmarks.verify import demo_graph  # noqa: E402


def best_of(reps: int, f: Callable[[], object]) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--graph", help="cache the traced, pruned graph here (.npz) and reuse it")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    import torch

    import graphs
    from circuits import load_model
    from graphs.draw import drawable
    from graphs.html import write_html
    from graphs.paths import strongest_paths
    from graphs.summary import _top_logit
    from transcoders import load_transcoders

    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    model = load_model()
    graph = demo_graph(model, load_transcoders(model), args.graph)
    print(f"# the demo's pruned graph: {graph.n_nodes:,} nodes, {graph.adjacency.nnz:,} edges\n")
    readable = drawable(graph, max_nodes=None, max_edges=None)
    top = _top_logit(readable)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows = [
            ("networkx graph (`to_networkx`)", lambda: graphs.to_networkx(graph)),
            ("graph.graphml (`to_networkx` + `write_graphml`)",
             lambda: graphs.write_graphml(graphs.to_networkx(graph), out / "graph.graphml")),
            ("graph.json (`write_viewer_json`)", lambda: graphs.write_viewer_json(graph, out / "graph.json")),
            ("graph.html (`write_html`)", lambda: write_html(graph, out / "graph.html")),
            ("strongest paths, all (summary.md)", lambda: strongest_paths(readable, top, k=5)),
            ("strongest paths, through the model (summary.md)",
             lambda: strongest_paths(readable, top, k=5, direct=False)),
        ]
        print(f"| step | best of {args.reps}, s |\n|---|---|")
        for name, f in rows:
            print(f"| {name} | {best_of(args.reps, f):.2f} |", flush=True)
        sizes = {p.name: p.stat().st_size / 2**20 for p in out.iterdir()}
        print("\n# files: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in sorted(sizes.items())))


if __name__ == "__main__":
    main()
