"""graph.html's load time in a real browser (Debian's Chromium, headless, via selenium) at viewer scale.

A synthetic graph of 5,000 nodes and 100,000 edges (30 layers, 16 positions, 10 logits, random
weights from lower levels to higher) is written as graph.html, served by ``circuits view``'s server,
and loaded in Chromium. ``load`` is the page's own clock: milliseconds from navigation to the end of
its first render (download, JSON parse, layout, every edge and node drawn). ``slider`` is one redraw
after moving the pruning slider to half the influence; ``pin`` one click-to-pin (scores and redraw).

    .venv/bin/python benchmarks/viewer.py [--nodes 5000] [--edges 100000] [--repeats 3]
    .venv/bin/python benchmarks/viewer.py --dir out/ioi     # a trace's own graph.html instead
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.machine import print_machine  # noqa: E402
from browser_helpers import chromium, console_errors, load_viewer, skip_reason  # noqa: E402
from graphs import AttributionGraph  # noqa: E402
from graphs.graph import empty_nodes  # noqa: E402
from graphs.html import write_html  # noqa: E402
from graphs.html_server import ViewerServer  # noqa: E402


def synthetic_graph(n_nodes: int, n_edges: int, *, n_layers: int = 30, n_pos: int = 16, n_logits: int = 10,
                    seed: int = 0) -> AttributionGraph:
    """``n_nodes`` nodes (features, one error per layer and position, tokens, logits) and ``n_edges`` distinct
    edges, each from a node to one of a higher level."""
    rng = np.random.default_rng(seed)
    n_err = n_layers * n_pos
    n_feat = n_nodes - n_err - n_pos - n_logits
    nodes = empty_nodes(n_nodes)
    f, e = slice(0, n_feat), slice(n_feat, n_feat + n_err)
    t, lg = slice(e.stop, e.stop + n_pos), slice(e.stop + n_pos, n_nodes)
    nodes["kind"][f], nodes["kind"][e], nodes["kind"][t], nodes["kind"][lg] = "feature", "error", "token", "logit"
    layers = np.sort(rng.integers(0, n_layers, n_feat))
    nodes["layer"][f], nodes["position"][f] = layers, rng.integers(1, n_pos, n_feat)
    nodes["feature"][f] = rng.integers(0, 16_384, n_feat)
    nodes["activation"][f] = rng.gamma(2.0, size=n_feat)
    nodes["layer"][e], nodes["position"][e] = np.divmod(np.arange(n_err), n_pos)
    nodes["layer"][t], nodes["position"][t] = -1, np.arange(n_pos)
    nodes["token_id"][t] = rng.integers(0, 50_000, n_pos)
    nodes["token"][t] = [f" w{i}" for i in range(n_pos)]
    nodes["layer"][lg], nodes["position"][lg] = n_layers, n_pos - 1
    nodes["token_id"][lg] = np.arange(n_logits)
    nodes["token"][lg] = [f" out{i}" for i in range(n_logits)]
    nodes["prob"][lg] = np.sort(rng.dirichlet(np.ones(n_logits + 1))[:n_logits])[::-1]
    level = nodes["layer"]
    targets = np.flatnonzero(np.isin(nodes["kind"], ("feature", "logit")))
    targets = targets[np.argsort(level[targets], kind="stable")]
    sources = np.flatnonzero(nodes["kind"] != "logit")
    keys = np.zeros(0, dtype=np.int64)
    while len(keys) < n_edges:
        s = rng.choice(sources, 2 * n_edges)
        start = np.searchsorted(level[targets], level[s], side="right")  # the first target above the source
        s, start = s[start < len(targets)], start[start < len(targets)]
        tgt = targets[start + (rng.random(len(start)) * (len(targets) - start)).astype(np.int64)]
        keys = np.unique(np.concatenate([keys, tgt.astype(np.int64) * n_nodes + s]))
    keys = rng.permutation(keys)[:n_edges]
    adjacency = sp.csr_matrix((rng.normal(size=n_edges).astype(np.float32), np.divmod(keys, n_nodes)),
                              shape=(n_nodes, n_nodes))
    metadata = {"model": "synthetic", "n_layers": n_layers, "n_pos": n_pos, "transcoder_set": "synthetic"}
    return AttributionGraph(" ".join(nodes["token"][t]), nodes["token_id"][t].copy(), list(nodes["token"][t]), nodes,
                            adjacency, metadata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--edges", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="a trace's --out folder: time its graph.html instead")
    args = ap.parse_args()
    reason = skip_reason()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.dir:
            path = Path(args.dir) / "graph.html"
        else:
            path = write_html(synthetic_graph(args.nodes, args.edges), Path(tmp) / "graph.html", node_threshold=1.0)
        build, size = time.perf_counter() - t0, path.stat().st_size
        loads, sliders, pins = [], [], []
        with ViewerServer(path.parent) as server, chromium() as driver:
            driver.set_script_timeout(120)
            for _ in range(args.repeats):
                ready = load_viewer(driver, server.url)
                loads.append(ready["ready"])
                sliders.append(driver.execute_async_script(_SLIDER))
                pins.append(driver.execute_async_script(_PIN))
            errors = console_errors(driver)
    print(f"# page {size / 2**20:.1f} MiB, written in {build:.2f} s (Python); "
          f"median of {args.repeats} loads; console errors: {len(errors)}")
    print("| nodes | edges | load (ms) | slider redraw (ms) | pin (ms) |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {ready['nodes']:,} | {ready['edges']:,} | {statistics.median(loads):.0f} | "
          f"{statistics.median(sliders):.0f} | {statistics.median(pins):.0f} |")


# Times from the input event until the frame after the redraw has been painted.
_SLIDER = """
const done = arguments[arguments.length - 1];
const s = document.getElementById('threshold');
const t0 = performance.now();
s.value = s.max / 2; s.dispatchEvent(new Event('input'));
requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0)));
"""
_PIN = """
const done = arguments[arguments.length - 1];
const node = document.querySelector('#nodes .node.f');
const t0 = performance.now();
node.dispatchEvent(new MouseEvent('click', {bubbles: true}));
requestAnimationFrame(() => done(performance.now() - t0));
"""


if __name__ == "__main__":
    main()
