"""Verification speed: every kept edge of the demo's pruned IOI graph measured by patching.

    .venv/bin/python -m benchmarks.verify [--threads 2] [--graph PATH] [--skip-before]

Traces the demo's graph (the IOI prompt, the default set, the 4,096 most influential features,
influence-pruned at 0.8 / 0.98: about 1,000 nodes and 100k edges; ``--graph`` caches it as .npz),
then verifies it twice, back to back under the same load:

- before: what ``verify_edges`` did until issue #19, rebuilt from the public pieces: sources in id
  order, 32 per pass, every pass from layer 0 with every MLP run and every position's logits;
- after: ``verify_edges`` as it is now (layer-ordered batches resumed at their lowest source's
  layer, no MLPs, last-position logits).

Prints wall and process CPU seconds, the load average before and after each, and the largest
difference between the two sets of measured effects (they must agree: tests/test_verify.py checks
it in float64 on tiny models).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads cost ~20 ms an op on a shared CPU
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.machine import print_machine  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"


def demo_graph(model, tc, path: str | None):
    """The demo's pruned graph (cached at ``path`` when given)."""
    import graphs
    from circuits import trace

    if path and Path(path).exists():
        return graphs.load(path)
    t = time.perf_counter()
    graph = graphs.prune(trace(PROMPT, model=model, transcoders=tc, max_feature_nodes=4096), 0.8, 0.98).graph
    print(f"# traced and pruned in {time.perf_counter() - t:.1f} s", flush=True)
    if path:
        graph.save(path)
    return graph


def before(graph, model, tc, batch_size: int = 32) -> np.ndarray:
    """Measured effects ``[n_edges]`` (in ``graph.edges()`` order) the way verification ran before #19."""
    from circuits.attribution.verify import _reader
    from circuits.replacement import CleanState, ablation_edits, ablation_values, forward
    from circuits.replacement.forward import SparseEditor

    class RealMlps(SparseEditor):  # asks for the true MLP output, so every MLP runs, as before
        def real(self, layer, real, x):
            return real

    clean = CleanState.of(model, tc, [int(t) for t in graph.tokens],
                          feature_start=int(graph.metadata.get("feature_start", 0)))
    rows, cols, _ = graph.edges()
    targets, t_of_edge = np.unique(rows, return_inverse=True)
    sources, s_of_edge = np.unique(cols, return_inverse=True)
    read = _reader(graph, clean, targets)
    zero, ids = ablation_values(clean), graph.node_ids

    def run(edits):
        return read(forward(model, None, clean=clean, editor=RealMlps(edits, model.n_layers), attention="live",
                            features="frozen", errors="clean"))

    base = run(ablation_edits(zero, [[]]))[0]
    measured = np.zeros(len(rows))
    for lo in range(0, len(sources), batch_size):
        chunk = sources[lo:lo + batch_size]
        values = run(ablation_edits(zero, [[ids[s]] for s in chunk]))
        mine = (s_of_edge >= lo) & (s_of_edge < lo + len(chunk))
        measured[mine] = (base[None] - values)[s_of_edge[mine] - lo, t_of_edge[mine]].double().numpy()
    return measured


def after(graph, model, tc) -> np.ndarray:
    from circuits.attribution.verify import verify_edges
    from graphs import measured_effects

    verified = verify_edges(graph, model, tc)
    effects, ids = measured_effects(verified), graph.node_ids
    rows, cols, _ = graph.edges()
    return np.array([effects[(ids[t], ids[s])] for t, s in zip(rows, cols)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--graph", default=None, help="cache the pruned graph here (.npz)")
    ap.add_argument("--skip-before", action="store_true", help="time only the current verify_edges")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    from circuits import load_model
    from transcoders import load_transcoders

    model = load_model()
    tc = load_transcoders(model)
    graph = demo_graph(model, tc, args.graph)
    n_sources = len(np.unique(graph.edges()[1]))
    print(f"# graph: {graph.n_nodes:,} nodes, {graph.adjacency.nnz:,} edges, {n_sources:,} sources", flush=True)
    rows, results = [], {}
    for name, fn in (("before", before), ("after", after)):
        if name == "before" and args.skip_before:
            continue
        load0 = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        results[name] = fn(graph, model, tc)
        rows.append((name, time.perf_counter() - wall, time.process_time() - cpu, load0, os.getloadavg()[0]))
        print(f"# {name}: {rows[-1][1]:.1f} s wall, {rows[-1][2]:.1f} s CPU", flush=True)
    print("\n| verify | wall s | CPU s | load before | load after |")
    print("|---|---|---|---|---|")
    for name, wall, cpu, l0, l1 in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {l0:.1f} | {l1:.1f} |")
    if len(results) == 2:
        scale = np.abs(results["before"]).max()
        diff = np.abs(results["after"] - results["before"]).max()
        print(f"\n# largest |after - before| = {diff:.2e} ({diff / scale:.1e} of the largest |effect|), float32")


if __name__ == "__main__":
    main()
