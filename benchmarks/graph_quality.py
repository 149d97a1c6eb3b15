"""Graph quality of a transcoder set: ``python benchmarks/graph_quality.py [--set NAME_OR_DIR]``.

Traces every prompt of the fixed set (``benchmarks/prompts.py``: 24 prompts of eight kinds) on the
default model and prints circuit-tracer's two graph scores (``graphs.metrics.graph_scores``):

- replacement: the share of the logits' end-to-end influence from tokens and errors that tokens
  carry (1 = no path through an error node);
- completeness: the influence-weighted share of node inputs that come from features and tokens.

Each as mean, spread and minimum over the prompts, and per kind. ``--policies`` compares position
policies (``circuits.replacement.slots``): ``first-constant`` (the default: no features at the first
token, whose MLP output is held as a constant, in each target's bias), ``first-error`` (the same,
with that output as error nodes), ``everywhere`` (features at every position) and ``bos``
(circuit-tracer's convention: a BOS prepended, nothing attributed to it); ``--eval-tokens N`` adds the set's held-out FVU,
CE and KL (``circuits.replacement.evaluate``). Graphs keep the ``--max-features`` most influential
features (circuit-tracer's greedy selection), the demo's cap by default. ``--error-layers`` splits the
replacement score's loss by the error nodes' layers (``graphs.metrics.error_share_by_layer``).

    python benchmarks/graph_quality.py                                        # the default set and policy
    python benchmarks/graph_quality.py --policies everywhere first-error first-constant bos --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Run as a script, Python puts benchmarks/ first on the path, where benchmarks/transcoders.py
# would shadow the transcoders package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.*

from benchmarks.prompts import PROMPTS  # noqa: E402

MAX_FEATURES = 4096
POLICIES = {"first-constant": (1, False, "constant"), "first-error": (1, False, "error"),
            "everywhere": (0, False, "constant"), "bos": (1, True, "constant")}
"""name: (feature_start, prepend_bos, early_mlp)."""


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f} (min {min(values):.3f})"


def score_prompts(model, tc, prompts, *, max_features: int = MAX_FEATURES, policy: str = "first-constant",
                  label: str = "", error_layers: bool = False
                  ) -> list[tuple[str, str, float, float, float, np.ndarray | None]]:
    """(name, kind, replacement, completeness, trace seconds, error share by layer ``[n_layers]``) of
    each prompt's graph; the shares (a second influence sweep) only with ``error_layers``, else None."""
    from circuits import trace
    from graphs.metrics import error_share_by_layer

    start, bos, early = POLICIES[policy]
    rows = []
    for p in prompts:
        t0 = time.perf_counter()
        graph = trace(p.text, model, tc, max_feature_nodes=max_features, feature_start=start,
                      prepend_bos=bos, early_mlp=early)
        rep, comp = graph.replacement_score, graph.completeness_score
        rows.append((p.name, p.kind, rep, comp, time.perf_counter() - t0,
                     error_share_by_layer(graph) if error_layers else None))
        print(f"{label or policy:<11} {p.name:<20} {p.kind:<11} tokens {graph.n_pos:>3}  replacement {rep:.3f}  "
              f"completeness {comp:.3f}  ({rows[-1][4]:.1f} s)", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", help="transcoder set: a preset name, a directory or hf://; default the model's set")
    parser.add_argument("--policies", nargs="+", default=["first-constant"], choices=list(POLICIES),
                        help="position policies to compare (module docstring)")
    parser.add_argument("--max-features", type=int, default=MAX_FEATURES, help="max_feature_nodes for every trace")
    parser.add_argument("--eval-tokens", type=int, default=0, help="also evaluate on this many held-out tokens")
    parser.add_argument("--threads", type=int, help="torch threads; default torch's choice")
    parser.add_argument("--prompts", nargs="+", help="only these prompt names")
    parser.add_argument("--error-layers", action="store_true",
                        help="also print which layers' error nodes the replacement score is lost to")
    args = parser.parse_args()

    import torch

    from benchmarks.machine import print_machine
    from circuits import load_model
    from transcoders import load_transcoders

    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    model = load_model()
    tc = load_transcoders(model, args.set) if args.set else load_transcoders(model)
    cfg = tc.cfg
    print(f"# set: {args.set or 'default'} ({cfg.kind}, {cfg.d_features} features a layer, {cfg.activation}"
          f"{' k=' + str(cfg.k) if getattr(cfg, 'k', None) else ''}); model {model.name}; "
          f"max_feature_nodes {args.max_features}")
    prompts = [p for p in PROMPTS if not args.prompts or p.name in args.prompts]
    results = {policy: score_prompts(model, tc, prompts, max_features=args.max_features, policy=policy,
                                     error_layers=args.error_layers)
               for policy in args.policies}

    print("\n| policy | prompts | replacement (mean ± sd, min) | completeness (mean ± sd, min) | trace s (mean) |")
    print("|---|---|---|---|---|")
    for policy, rows in results.items():
        print(f"| {policy} | {len(rows)} | {_spread([r[2] for r in rows])} | {_spread([r[3] for r in rows])} | "
              f"{statistics.fmean(r[4] for r in rows):.1f} |")
    kinds = sorted({p.kind for p in prompts}, key=[p.kind for p in prompts].index)
    print("\nBy kind (replacement / completeness, means):\n")
    print("| kind | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for kind in kinds:
        cells = []
        for rows in results.values():
            mine = [r for r in rows if r[1] == kind]
            cells.append(f"{statistics.fmean(r[2] for r in mine):.3f} / {statistics.fmean(r[3] for r in mine):.3f}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    if args.error_layers:
        print("\nWhere replacement is lost: each layer's error nodes' share of the tokens' and errors' influence "
              "(mean over prompts; the shares sum to 1 - replacement):\n")
        print("| policy | " + " | ".join(f"L{i}" for i in range(model.n_layers)) + " |")
        print("|---|" + "---|" * model.n_layers)
        for policy, rows in results.items():
            mean = np.mean([r[5] for r in rows], axis=0)
            print(f"| {policy} | " + " | ".join(f"{x:.3f}" for x in mean) + " |")
    if args.eval_tokens:
        from circuits.replacement import evaluate

        ev = evaluate(model, tc, n_tokens=args.eval_tokens, precision="fp32")
        print(f"\nHeld-out ({ev.n_tokens} tokens): {ev}")


if __name__ == "__main__":
    main()
