"""Attribution speed and memory on the default model: ``python benchmarks/attribution.py``.

Traces the IOI prompt with the trained preset sets (``quick-*``, ``trained-clt-full``) and with
random transcoders whose thresholds are set so that a chosen number of features fire, and prints one table row per case:
wall seconds for ``trace`` (model already loaded), the CPU seconds it used (on a shared machine
the fairer figure: with one thread it is the wall time the run would take alone), the load
average when it ended, peak resident memory of the process, active features and edges. Each
case runs in a fresh subprocess so peaks do not carry over.

    python benchmarks/attribution.py                            # every case, torch's threads
    python benchmarks/attribution.py --case plt-full --threads 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on the path, where benchmarks/transcoders.py
# would shadow the transcoders package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks._common

from benchmarks._common import cpu_seconds, peak_rss_mb, run_case as run_in_subprocess  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"

# name: (kind, width, active features wanted, max_feature_nodes); kind "preset:NAME" traces with a
# trained set from the cache (`transcoders train --preset NAME`), whose own activations decide
# how many features fire.
CASES: dict[str, tuple[str, int, int, int | None]] = {
    "plt-full": ("plt", 2048, 16_000, None),
    "plt-capped": ("plt", 2048, 16_000, 1000),
    "clt-full": ("clt", 512, 16_000, None),
    "quick-full": ("preset:smollm2-quick", 0, 0, None),
    "quick-demo": ("preset:smollm2-quick", 0, 0, 4096),
    "trained-clt-full": ("preset:smollm2-clt", 0, 0, None),
}


def random_transcoders(model, kind: str, width: int, n_active: int, seed: int = 0):
    """Random JumpReLU transcoders whose per-layer thresholds let about ``n_active`` features fire on PROMPT."""
    import torch

    from transcoders import TranscoderConfig, build_transcoder

    torch.manual_seed(seed)
    cfg = TranscoderConfig(kind=kind, n_layers=model.n_layers, d_model=model.d_model, d_features=width,
                           activation="jumprelu", model_name=model.name)
    tc = build_transcoder(cfg).eval()
    _, rec = model.record(PROMPT, [("mlp_in", l) for l in range(model.n_layers)])
    per_layer = n_active / model.n_layers
    with torch.no_grad():
        for l in range(model.n_layers):
            pre = tc.pre_acts(rec[("mlp_in", l)], l).flatten()
            k = max(1, min(pre.numel(), round(pre.numel() - per_layer)))
            tc.log_threshold[l] = pre.kthvalue(k).values.clamp_min(1e-6).log()
    return tc


def run_case(name: str, threads: int | None) -> dict:
    import torch

    from circuits import load_model, trace

    if threads:
        torch.set_num_threads(threads)
    kind, width, n_active, cap = CASES[name]
    model = load_model()
    if kind.startswith("preset:"):
        from transcoders import load_transcoders

        tc = load_transcoders(model, kind.split(":", 1)[1])
    else:
        tc = random_transcoders(model, kind, width, n_active)
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    before = peak_rss_mb()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    graph = trace(PROMPT, model, tc, max_feature_nodes=cap)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    peak = peak_rss_mb()
    t = time.perf_counter()
    scores = graph.scores
    score_seconds = time.perf_counter() - t
    return {
        "case": name, "seconds": seconds, "cpu_seconds": cpu, "load": os.getloadavg()[0], "peak_rss_mb": peak, "rss_before_mb": before,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "active": graph.metadata["n_active_features"], "features": graph.n_features, "edges": graph.adjacency.nnz,
        "phases": graph.metadata["seconds"], "identity_error": graph.metadata["identity_error"],
        "score_seconds": score_seconds, "replacement": scores[0], "completeness": scores[1],
        "device": graph.metadata["device"], "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="run only these cases")
    parser.add_argument("--threads", type=int, action="append",
                        help="torch threads (repeatable: one row per value); default torch's choice")
    parser.add_argument("--json", action="store_true", help="print one JSON result (internal, per subprocess)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(run_case(args.case[0], (args.threads or [None])[0])))
        return
    from benchmarks.machine import print_machine

    print_machine()
    rows = []
    for threads in args.threads or [None]:
        for name in args.case or list(CASES):
            args = ["--json", "--case", name] + (["--threads", str(threads)] if threads else [])
            rows.append(run_in_subprocess(__file__, args, name))
            print(f"done: {name}, {rows[-1]['seconds']:.1f}s", file=sys.stderr)
    print(f"{'case':<11} {'threads':>7} {'active':>7} {'features':>8} {'edges':>11} {'trace s':>8} {'CPU s':>7} "
          f"{'load':>5} {'peak RSS MB':>11} {'before MB':>9} {'scores s':>8} {'identity err':>12}")
    for r in rows:
        print(f"{r['case']:<11} {r['threads']:>7} {r['active']:>7} {r['features']:>8} {r['edges']:>11,} "
              f"{r['seconds']:>8.2f} {r['cpu_seconds']:>7.1f} {r['load']:>5.1f} {r['peak_rss_mb']:>11.0f} "
              f"{r['rss_before_mb']:>9.0f} {r['score_seconds']:>8.2f} {r['identity_error']:>12.1e}")
    for r in rows:
        print(f"{r['case']}: phases {r['phases']}, replacement {r['replacement']:.3f}, "
              f"completeness {r['completeness']:.3f}, device {r['device']}, threads {r['threads']}, "
              f"OMP_WAIT_POLICY {r['omp_wait_policy']}")


if __name__ == "__main__":
    main()
