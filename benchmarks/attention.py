"""What seeing through attention costs and shows on the default model: ``python benchmarks/attention.py``.

On the README's IOI prompt with SmolLM2-135M and the ``smollm2-quick`` transcoders:

1. the time head loadings add to a trace (``head_loadings="none"`` vs ``"auto"``, the default, and
   ``"targets"``), for the salient logits and for the logit difference (" Mary", " John"), capped at the
   demo's 4,096 features (and uncapped with ``--full``);
2. how much of the attention-edge mass into (" Mary", " John") loads on the heads node ACDC keeps for IOI
   (``discover_nodes``; its head list is cached in ``~/.cache/circuit-engine/benchmarks/``, as it takes
   ~15 min on a shared 2-core CPU; ``--pairs`` IOI pairs, 32 by default where the README uses 64);
3. the QK pairs that explain the strongest name mover's END → IO attention, and what they cost.

Prints a table per part, under the machine header (``benchmarks/machine.py``); the load average is
printed beside each timing, as the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import print_machine  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"
CACHE = Path(os.environ.get("CIRCUITS_CACHE", Path.home() / ".cache" / "circuit-engine")) / "benchmarks"


def acdc_heads(model, n_pairs: int, seed: int = 0) -> dict:
    """Node ACDC's IOI heads (README's call, ``n_pairs`` pairs), cached by (pairs, seed)."""
    path = CACHE / "ioi_acdc_heads.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("n_pairs") == n_pairs and cached.get("seed") == seed:
            return cached
    from circuits import discover_nodes
    from circuits.tasks import ioi

    t0 = time.perf_counter()
    task = ioi.dataset(model.tokenizer, n=n_pairs, seed=seed)
    c = discover_nodes(model, task, ablation="mean", candidates=100, include_mlps=False, precision="auto",
                       progress=False)
    out = {"n_pairs": n_pairs, "seed": seed, "candidates": 100, "heads": [list(map(int, h)) for h in c.heads],
           "faithfulness": float(c.faithfulness), "seconds": round(time.perf_counter() - t0, 1),
           "load": os.getloadavg()[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def timed(fn, *args, **kwargs):
    """``(result, wall s, load average)``; ``timed.cpu``: the CPU seconds the call used (all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    timed.cpu = time.process_time() - c0
    return out, time.perf_counter() - t0, os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=32, help="IOI pairs for node ACDC (README: 64)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="also time the uncapped traces (~1 min each idle)")
    ap.add_argument("--no-timing", action="store_true", help="skip part 1 (trace only the logit difference)")
    args = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from circuits import load_model, qk_attribution, trace
    from graphs.heads import parse_head
    from transcoders import load_transcoders

    print_machine()
    model = load_model()
    tc = load_transcoders(model)
    diff = (" Mary", " John")

    print("\n## Time head loadings add to a trace\n")
    print("| targets | features | head_loadings | trace s | CPU s | of which loadings s | load |")
    print("|---|---|---|---|---|---|---|")
    caps = [4096, None] if args.full else [4096]
    graphs = {}
    cases = [("' Mary' − ' John'", diff)] if args.no_timing else [("salient logits", None), ("' Mary' − ' John'", diff)]
    for cap in caps:
        for name, targets in cases:
            # "auto" (the default) loads the chosen target, or the top logit of the salient ones.
            modes = ("none", "auto", "targets") if targets is None else ("none", "auto")
            for mode in (("auto",) if args.no_timing else modes):
                g, wall, load = timed(trace, PROMPT, model, tc, targets=targets, max_feature_nodes=cap,
                                      head_loadings=mode)
                graphs[(name, cap, mode)] = g
                extra = g.metadata["seconds"].get("head loadings", 0.0)
                print(f"| {name} ({g.count('logit')}) | {'all' if cap is None else cap} | {mode} | {wall:.1f} | "
                      f"{timed.cpu:.1f} | {extra:.1f} | {load:.1f} |", flush=True)

    g = graphs[("' Mary' − ' John'", 4096, "auto")]
    table = g.head_table
    acdc = acdc_heads(model, args.pairs)
    keep = np.zeros(table.values.shape[1], dtype=bool)
    for layer, head in acdc["heads"]:
        keep[layer * table.n_heads + head] = True
    mass = np.abs(table.values)
    share = mass[:, keep].sum() / mass.sum()
    signed = table.values[:, keep].sum() / table.values.sum()
    print("\n## Attention-edge mass into ' Mary' − ' John' on node ACDC's IOI heads\n")
    print(f"ACDC ({acdc['n_pairs']} pairs, {acdc['candidates']} candidates): {len(acdc['heads'])} of "
          f"{keep.size} heads ({keep.mean():.1%}), faithfulness {acdc['faithfulness']:.3f}, "
          f"{acdc['seconds']:.0f} s at load {acdc['load']:.1f}")
    print("\n| edges loaded | share of Σ|loading| on ACDC heads | share of Σ loading (signed) | direct part |")
    print("|---|---|---|---|")
    print(f"| {len(table.values)} | {share:.3f} | {signed:.3f} | {np.abs(table.direct).sum() / (mass.sum() + np.abs(table.direct).sum()):.3f} |")
    per_head = table.values.sum(0)
    top = np.argsort(-np.abs(per_head))[:10]
    print("\nHeads carrying the most (signed sum of loadings over all edges into the target):\n")
    print("| head | Σ loading | in ACDC's circuit |")
    print("|---|---|---|")
    names = [f"L{i // table.n_heads}.H{i % table.n_heads}" for i in range(keep.size)]
    for i in top:
        print(f"| {names[i]} | {per_head[i]:.3f} | {'yes' if keep[i] else 'no'} |")

    # The strongest name mover: of the heads that attend from END to IO (frozen pattern >= 0.1), the one
    # carrying most of the target (signed sum of its loadings).
    io = int(np.flatnonzero(np.array(g.token_texts) == " Mary")[0])
    L = model.n_layers
    _, rec = model.record(PROMPT, [("attn_pattern", layer) for layer in range(L)])
    end_io = torch.stack([rec[("attn_pattern", layer)][:, -1, io] for layer in range(L)]).reshape(-1).numpy()
    movers = np.flatnonzero(end_io >= 0.1)
    mover = int(movers[np.argmax(per_head[movers])])
    layer, head = parse_head(names[mover])
    print(f"\nHeads attending END → IO with weight >= 0.1: {len(movers)}; the one carrying most: {names[mover]} "
          f"(Σ loading {per_head[mover]:.3f}, attention {end_io[mover]:.3f}, rank {int((per_head > per_head[mover]).sum()) + 1} "
          "among all heads)")
    from circuits.attribution.qk import strongest_attention_qk

    _, wall_summary, load_summary = timed(strongest_attention_qk, g, model, tc)
    print(f"strongest_attention_qk (what summary.md adds, pairs only): {wall_summary:.1f} s, load {load_summary:.1f}")
    qk, wall, load = timed(qk_attribution, PROMPT, model, tc, layer=layer, head=head, query=-1, key=io)
    print(f"\n## QK pairs for the strongest name mover {names[mover]}: END → IO (' Mary', position {io})\n")
    print(f"qk_attribution: {wall:.1f} s (both sides' head loadings included), load {load:.1f}\n")
    print(qk.table(8))
    for side, loads in (("query", qk.query_loadings), ("key", qk.key_loadings)):
        marg = list(qk.marginals(side).items())[:4]
        print(f"\n{side} side, largest marginals (and the heads that carried them):\n")
        for src, v in marg:
            via = loads.get(src, {}) if loads else {}
            vias = ", ".join(f"{h} {x:.2f}" for h, x in list(via.items())[:3])
            print(f"- {src}: {v:.3f}" + (f" (via {vias})" if vias else ""))


if __name__ == "__main__":
    main()
