"""Trace memory and time against prompt length on the default model: ``python benchmarks/memory.py``.

Traces 16, 64, 256 and 1,024 tokens of real text (held-out Wikipedia summaries from the
packaged corpus, joined with blank lines and cut to length) with at most 4,096 feature rows,
on SmolLM2-135M-Instruct with its default transcoders (``smollm2-quick``; ``--random-transcoders``
builds random ones of the same shape, TopK with the same k, where the set is not trained yet:
memory and time depend on shapes and on how many features fire, not on weights). Each length
runs in a fresh subprocess, and the table sets the plan's estimate beside what was measured:

- estimate: the memory plan's peak (``circuits.attribution.memory``), what the trace allocates
  on top of the loaded model and transcoders;
- measured: the growth of the process's peak resident memory over the trace (VmHWM, reset just
  before it, after a warm-up trace of 8 tokens), the same quantity;
- peak RSS: the whole process's peak, model and Python included.

    python benchmarks/memory.py                                  # 16, 64, 256, 1024 tokens
    python benchmarks/memory.py --lengths 16 64 --random-transcoders --threads 2
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import time
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on the path, where benchmarks/transcoders.py
# would shadow the transcoders package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks._common

from benchmarks._common import cpu_seconds, peak_rss_mb, run_case  # noqa: E402

LENGTHS = (16, 64, 256, 1024)
MAX_FEATURES = 4096


def real_text_ids(tokenizer, n_tokens: int) -> list[int]:
    """``n_tokens`` ids of held-out Wikipedia summaries (the packaged corpus), joined with blank lines."""
    from transcoders.corpus import Corpus

    text, ids = "", []
    for doc in Corpus.packaged(["wikipedia"]).documents("heldout"):
        text += doc.text + "\n\n"
        if len(text) > 6 * n_tokens:  # ~4 characters a token: tokenize only when surely enough
            ids = tokenizer(text)["input_ids"]
            if len(ids) >= n_tokens:
                return ids[:n_tokens]
    raise SystemExit(f"the packaged Wikipedia text has fewer than {n_tokens} tokens. Fix: run `make setup` "
                     "(python -m circuits fetch) to fetch the packaged corpus.")


def default_shaped_random(model):
    """Random transcoders of the default preset's shape (kind, width, activation, k, skip)."""
    import torch

    from transcoders import TranscoderConfig, build_transcoder
    from transcoders.sets import default_preset

    preset = default_preset(model.name)
    if preset is None:
        raise SystemExit(f"{model.name} has no default transcoder preset to copy the shape of.")
    c = preset.config
    torch.manual_seed(0)
    cfg = TranscoderConfig(kind=c.kind, n_layers=model.n_layers, d_model=model.d_model, d_features=c.d_features,
                           activation=c.activation, k=c.k, skip=c.skip, model_name=model.name)
    return build_transcoder(cfg).eval(), f"random {c.kind.upper()} of {preset.name}'s shape ({c.d_features} " \
                                         f"features a layer, {c.activation} k={c.k})"


def _vm(field: str) -> float | None:
    """A /proc/self/status field in MiB (VmRSS, VmHWM), None off Linux."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Set VmHWM back to the current RSS (Linux), so the next peak is the trace's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def one_length(n_tokens: int, max_features: int, random_transcoders: bool, threads: int | None) -> dict:
    import torch

    from circuits import load_model, trace

    if threads:
        torch.set_num_threads(threads)
    model = load_model()
    if random_transcoders:
        tc, source = default_shaped_random(model)
    else:
        from transcoders import load_transcoders

        try:
            tc = load_transcoders(model)
        except Exception as exc:  # not trained yet: say how to go on
            raise SystemExit(f"the default transcoders did not load ({exc}). Fix: `make transcoders`, or pass "
                             "--random-transcoders for random ones of the same shape.") from exc
        source = f"default set ({getattr(tc.cfg, 'kind', '?')}, {tc.cfg.d_features} features a layer)"
    ids = real_text_ids(model.tokenizer, n_tokens)
    # The first trace in a process also pages in code and fills allocator pools (about 0.6 GB
    # here, whatever the size): warm up on 8 tokens so that the measured rise is the trace's data.
    trace(ids[:8], model, tc, max_feature_nodes=64)
    exact_peak = _reset_peak()
    before = _vm("VmRSS") if exact_peak else peak_rss_mb()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    graph = trace(ids, model, tc, max_feature_nodes=max_features)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    after = _vm("VmHWM") if exact_peak else peak_rss_mb()
    mem = graph.metadata["memory"]
    return {
        "tokens": n_tokens, "active": graph.metadata["n_active_features"], "features": graph.n_features,
        "edges": graph.adjacency.nnz, "batch": mem["batch_size"], "estimate_mib": mem["estimated_peak"] / 2**20,
        "measured_mib": after - before, "peak_rss_mib": peak_rss_mb(), "resident_mib": mem["resident"] / 2**20,
        "disk_mib": mem["rows_on_disk"] / 2**20, "budget_mib": mem["budget"] / 2**20, "phases": mem["phases"],
        "stored_mib": mem["rows_stored"] / 2**20, "stored_expected_mib": mem["rows_expected"] / 2**20,
        "seconds": seconds, "cpu_seconds": cpu, "load": os.getloadavg()[0], "threads": torch.get_num_threads(),
        "laps": graph.metadata["seconds"], "transcoders": source, "exact_peak": exact_peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="prompt lengths in tokens")
    parser.add_argument("--max-features", type=int, default=MAX_FEATURES, help="max_feature_nodes for every trace")
    parser.add_argument("--random-transcoders", action="store_true",
                        help="random transcoders of the default set's shape (until smollm2-quick is trained)")
    parser.add_argument("--threads", type=int, help="torch threads; default torch's choice")
    parser.add_argument("--json", action="store_true", help="print one JSON result (internal, per subprocess)")
    args = parser.parse_args()
    if args.json:
        faulthandler.enable()  # a crash in a case that runs for an hour says where it was
        print(json.dumps(one_length(args.lengths[0], args.max_features, args.random_transcoders, args.threads)))
        return

    import torch

    from benchmarks.machine import machine_lines

    if args.threads:
        torch.set_num_threads(args.threads)
    header = machine_lines() + [f"# torch.backends.cpu.get_cpu_capability(): {torch.backends.cpu.get_cpu_capability()}"]
    rows = []
    for n in args.lengths:
        case = ["--json", "--lengths", str(n), "--max-features", str(args.max_features)]
        case += ["--random-transcoders"] if args.random_transcoders else []
        case += ["--threads", str(args.threads)] if args.threads else []
        rows.append(run_case(__file__, case, f"{n} tokens"))
        r = rows[-1]
        print(f"done: {n} tokens in {r['seconds']:.0f} s, peak +{r['measured_mib']:.0f} MiB "
              f"(estimated {r['estimate_mib']:.0f})", file=sys.stderr, flush=True)
    print("\n".join(header))
    print(f"# load average after: {os.getloadavg()[0]:.2f}; model: SmolLM2-135M-Instruct (float32); transcoders: "
          f"{rows[0]['transcoders']}; prompt: held-out Wikipedia summaries (packaged corpus); "
          f"max_feature_nodes={args.max_features}; memory budget {rows[0]['budget_mib'] / 1024:.1f} GiB (default)")
    print("\n| prompt tokens | active features | features | edges | batch | estimate MiB | measured MiB | "
          "estimate / measured | peak RSS MiB | rows stored MiB (expected) | rows on disk MiB | wall s | CPU s | load |")
    print("|" + "---|" * 14)
    for r in rows:
        print(f"| {r['tokens']:,} | {r['active']:,} | {r['features']:,} | {r['edges']:,} | {r['batch']} | "
              f"{r['estimate_mib']:,.0f} | {r['measured_mib']:,.0f} | {r['estimate_mib'] / r['measured_mib']:.2f} | "
              f"{r['peak_rss_mib']:,.0f} | {r['stored_mib']:,.0f} ({r['stored_expected_mib']:,.0f}) | "
              f"{r['disk_mib']:,.0f} | {r['seconds']:,.1f} | {r['cpu_seconds']:,.1f} | {r['load']:.1f} |")
    print("\nestimate: the plan's peak over the trace; measured: the rise of peak RSS over the trace "
          "(VmHWM reset before it, after a warm-up trace); peak RSS: the whole process, model included.")
    for r in rows:
        phases = ", ".join(f"{k} {v / 2**20:,.0f}" for k, v in r["phases"].items())
        print(f"{r['tokens']} tokens: planned MiB by phase: {phases}; seconds by phase: {r['laps']}")


if __name__ == "__main__":
    main()
