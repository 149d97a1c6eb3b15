"""How stable the head-level IOI circuit of the default model is across resampled datasets.

tests/test_ioi_circuit_real.py discovers the circuit on one dataset (64 pairs, seed 0). This
runs the same discovery — node ACDC over the 100 heads of largest EAP score, mean ablation over
the ABC prompts of each template, tau 2% of m(M) − m(∅), bf16 search, float32 faithfulness — on
other draws of the IOI dataset, and asks of each circuit what the test asks: its faithfulness,
and which of its heads pass a role probe (``circuits.probes.ioi_head_roles``, measured on that
run's prompts). It then counts in how many runs each head appears. Run:

    .venv/bin/python -m benchmarks.node_stability [--runs 0:64,1:64,2:64,3:64,0:128] [--threads 2]

Each run is ``seed:n`` (dataset seed, prompt pairs). Prints a row per run and a table of heads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

# Passive OpenMP waiting: spinning threads slow every small op on a shared CPU (see BENCHMARKS.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# As in benchmarks.discovery: benchmarks/transcoders.py must not shadow the transcoders package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.machine

import torch

from benchmarks.machine import print_machine

from circuits import load_model
from circuits.discovery import discover_nodes
from circuits.patching.nodes import NodePatcher
from circuits.probes import ioi_head_roles
from circuits.tasks import ioi


def parse_runs(spec: str) -> list[tuple[int, int]]:
    """``"0:64,1:64"`` -> ``[(0, 64), (1, 64)]`` (dataset seed, prompt pairs)."""
    try:
        return [(int(seed), int(n)) for seed, n in (run.split(":") for run in spec.split(","))]
    except ValueError:
        raise SystemExit(f"--runs takes seed:n pairs separated by commas, like 0:64,1:64; got {spec!r}")


def one_run(model, seed: int, n: int, tau_fraction: float, max_chunks: int | None = None, batch_size: int = 64) -> dict:
    """Discover the circuit on ``ioi.dataset(seed, n)`` and probe every head on the same prompts."""
    task = ioi.dataset(model.tokenizer, n=n, seed=seed)
    start = time.perf_counter()
    patcher = NodePatcher(model, task, ablation="mean", precision="auto", batch_size=batch_size)
    circuit = discover_nodes(model, task, patcher=patcher, method="acdc", candidates=100, include_mlps=False,
                             precision="auto", tau=tau_fraction * abs(patcher.m_full - patcher.m_empty),
                             max_chunks=max_chunks, progress=False)
    seconds = time.perf_counter() - start
    roles = ioi_head_roles(model, task, circuit.heads)
    return {"seed": seed, "n": n, "f": circuit.faithfulness, "seconds": seconds, "effects": circuit.head_effects(),
            "roles": roles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="0:64,1:64,2:64,3:64,0:128", help="seed:n pairs, comma separated")
    ap.add_argument("--tau", type=float, default=0.02, help="ACDC threshold, fraction of m(M) - m(∅)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--max-chunks", type=int, default=None,
                    help="a test reads at most this many prompt chunks, then its mean decides (acdc_nodes max_chunks)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="prompts a chunk (64: one chunk, every test reads every prompt; the real-model tier uses 8)")
    args = ap.parse_args()
    runs = parse_runs(args.runs)
    if args.max_chunks and args.batch_size >= min(n for _, n in runs):
        raise SystemExit(f"--max-chunks caps the chunks a test reads, and --batch-size {args.batch_size} makes one chunk "
                         "of every prompt: pass --batch-size 8 with it")
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    model = load_model()
    results = []
    print("| seed | pairs | heads | faithfulness | discovery s | \\|effect\\| recognised | heads no probe recognises |")
    print("|---|---|---|---|---|---|---|")
    for seed, n in runs:
        r = one_run(model, seed, n, args.tau, args.max_chunks, args.batch_size)
        results.append(r)
        total = sum(abs(e) for e in r["effects"].values())
        unknown = {h: e for h, e in r["effects"].items() if not r["roles"][h]}
        share = 1 - sum(abs(e) for e in unknown.values()) / total
        names = ", ".join(f"{l}.{h} ({e:+.2f})" for (l, h), e in unknown.items()) or "none"
        print(f"| {seed} | {n} | {len(r['effects'])} | {r['f']:.3f} | {r['seconds']:.0f} | {share:.0%} | {names} |",
              flush=True)

    counts = Counter(h for r in results for h in r["effects"])
    mean = {h: sum(r["effects"][h] for r in results if h in r["effects"]) / k for h, k in counts.items()}
    print(f"\n# heads by the number of runs (of {len(results)}) that keep them; effect = mean over those runs")
    print("| head | runs | mean effect | roles (first run that keeps it) |")
    print("|---|---|---|---|")
    for head, k in sorted(counts.items(), key=lambda hk: (-hk[1], -abs(mean[hk[0]]))):
        roles = next(r["roles"][head] for r in results if head in r["effects"])
        print(f"| {head[0]}.{head[1]} | {k} | {mean[head]:+.2f} | {', '.join(roles) or '**none**'} |")
    print(f"\n# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
