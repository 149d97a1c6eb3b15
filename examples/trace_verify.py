"""Trace a prompt with verify=True: every edge of the pruned graph is also measured by patching.

    python examples/trace_verify.py            # SmolLM2: minutes on a CPU
    python examples/trace_verify.py --tiny     # a tiny random model: seconds

An edge's weight is its exact direct effect in the frozen replacement model (attention patterns and
norm scales held). Verifying ablates each source in the replacement model with attention and norms
live, and reads the change at each target: ``measured_effect``. Edges whose measured effect has the
other sign, or a very different size, are flagged. Prints the summary and the most disagreeing edges.
"""

from __future__ import annotations

from _common import IOI_PROMPT, load, parser

import graphs
from circuits import trace


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, trace=True)
    p.add_argument("prompt", nargs="?", default=IOI_PROMPT)
    args = p.parse_args(argv)
    model, tc = load(args)

    graph = trace(args.prompt, model=model, transcoders=tc, verify=True,
                  max_feature_nodes=args.max_feature_nodes or None)  # pruned, then every edge measured
    v = graph.metadata["verification"]
    print(graph)
    print(f"verified {v['n_edges']} edges in {v['seconds']:.1f} s: {v['n_flagged']} flagged "
          f"({v['n_sign']} by sign, {v['n_size']} by size)")

    measured = graphs.measured_effects(graph)  # {(target id, source id): effect}
    flags = graphs.effect_flags(graph)         # {(target id, source id): "sign" | "size"}, flagged ones only
    ids = graph.node_ids
    coo = graph.adjacency.tocoo()
    weight = {(ids[t], ids[s]): float(w) for t, s, w in zip(coo.row, coo.col, coo.data)}
    # The edges where attribution and patching disagree most: where frozen attention misleads.
    worst = sorted(weight, key=lambda e: -abs(measured[e] - weight[e]))[:5]
    print("edge (source -> target): attribution weight, measured effect, flag")
    for target, source in worst:
        print(f"  {source} -> {target}: {weight[target, source]:+.4f}, {measured[target, source]:+.4f}, "
              f"{flags.get((target, source), '-')}")
    return v


if __name__ == "__main__":
    main()
