"""The full IOI graph's edge phase against the machine's matrix-multiply peak (issue #19, point 4).

    .venv/bin/python -m benchmarks.edge_phase [--threads 2] [--set smollm2-quick] [--cap N]

1. The machine's float32 GEMM peak at this thread count: the best of a large square product and of
   the shapes the edge phase runs (rows of a target batch times d_model, against d_model × d_model,
   the value projection and a readout table).
2. ``circuits.trace`` of the IOI prompt with every active feature (or ``--cap``), timed plainly: the
   phases ``graph.metadata["seconds"]`` records.
3. The same trace under ``torch.profiler`` (input shapes recorded): the FLOPs of every matrix
   product (mm, addmm, addmm_, bmm, baddbmm; 2·m·k·n from the shapes), the time in them and in
   everything else, the operators that take the most time. Achieved GFLOP/s = those FLOPs / the
   plain run's edge-phase seconds (the forward and the targets add a few GFLOP of their own).

Both traces leave head loadings out (``head_loadings="none"``): the graph circuit-tracer builds.
The profiler's own overhead inflates the second run's times; its FLOP count does not depend on it.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads cost ~20 ms an op on a shared CPU
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import cpu_seconds  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_")


def gemm_flops(key: str, shapes: list) -> float:
    """2·m·k·n of one call of a matrix-product operator, from its recorded input shapes."""
    a, b = (shapes[0], shapes[1]) if key in ("aten::mm", "aten::bmm") else (shapes[1], shapes[2])
    if not a or not b:
        return 0.0
    batch = a[0] if len(a) == 3 else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


def minor_faults() -> int:
    """Page faults served without I/O so far: mostly first touches of new memory, which cost about
    25 µs a 4 KB page on the VMs this is measured on."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def gemm_rate(m: int, k: int, n: int, seconds: float = 1.0) -> tuple[float, float]:
    """GFLOP/s of ``[m, k] @ [k, n]`` in float32 over repeated runs for about ``seconds``: (median, best).
    On this 2-core VM the best run is often 1.5x the median; the median is the rate to plan with."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    times: list[float] = []
    while sum(times) < seconds or len(times) < 11:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t)
    times.sort()
    flop = 2 * m * k * n / 1e9
    return flop / times[len(times) // 2], flop / times[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", default="smollm2-quick", help="transcoder set (from the cache)")
    ap.add_argument("--cap", type=int, default=None, help="max_feature_nodes (default: every active feature)")
    ap.add_argument("--top", type=int, default=12, help="operators listed by time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()

    from circuits import load_model, trace
    from transcoders import load_transcoders

    model = load_model()
    tc = load_transcoders(model, args.set)
    d = model.d_model
    dv = model.dims.n_kv_heads * model.dims.d_head
    shapes = [(2048, 2048, 2048), (4096, d, d), (4096, dv, d), (4096, d, dv), (1024, d, d), (256 * 14, d, 1024)]
    rates = {s: gemm_rate(*s) for s in shapes}
    peak = max(r[0] for r in rates.values())
    best = max(r[1] for r in rates.values())
    print("\n| GEMM m × k × n (float32) | median GFLOP/s | best GFLOP/s |\n|---|---|---|")
    for s, r in rates.items():
        print(f"| {s[0]} × {s[1]} × {s[2]} | {r[0]:.1f} | {r[1]:.1f} |")
    print(f"# peak taken: {peak:.1f} GFLOP/s (the best median; best single run {best:.1f}) on "
          f"{torch.get_num_threads()} threads", flush=True)

    trace(PROMPT, model, tc, max_feature_nodes=8, head_loadings="none")  # warm-up: first-call costs out of the timed run
    t, c, faults = time.perf_counter(), cpu_seconds(), minor_faults()
    graph = trace(PROMPT, model, tc, max_feature_nodes=args.cap, head_loadings="none")
    wall, cpu, faults = time.perf_counter() - t, cpu_seconds() - c, minor_faults() - faults
    phases = graph.metadata["seconds"]
    print(f"\n# plain run: {wall:.1f} s wall, {cpu:.1f} s CPU; {graph.n_features:,} features, "
          f"{graph.adjacency.nnz:,} edges; {faults:,} minor page faults; phases (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()), flush=True)
    del graph  # a full graph is GBs (597M edges at k = 128): held through the profiled run, both did not fit in 24 GB

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trace(PROMPT, model, tc, max_feature_nodes=args.cap, head_loadings="none")
    by_shape = prof.key_averages(group_by_input_shape=True)
    flops = sum(gemm_flops(e.key, e.input_shapes) * e.count for e in by_shape if e.key in GEMM_OPS)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    gemm_us = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS)
    edges_s = phases.get("edges", wall)
    print(f"\n# profiled run: matrix products {flops / 1e12:.3f} TFLOP in {gemm_us / 1e6:.1f} s of "
          f"{total_us / 1e6:.1f} s profiled op time (self CPU time, summed over ops)")
    print("\n| measure | value |\n|---|---|")
    print(f"| matrix-product FLOPs of the trace | {flops / 1e12:.3f} TFLOP |")
    print(f"| edge phase, plain run | {edges_s:.1f} s |")
    print(f"| achieved, FLOPs / edge phase | {flops / edges_s / 1e9:.1f} GFLOP/s |")
    print(f"| GEMM peak measured above (median; best run) | {peak:.1f}; {best:.1f} GFLOP/s |")
    print(f"| floor at that peak (median; best run) | {flops / peak / 1e9:.1f}; {flops / best / 1e9:.1f} s |")
    print(f"| time in matrix products (profiled) | {100 * gemm_us / max(total_us, 1):.0f}% |")
    print(f"| their own rate (profiled) | {flops / max(gemm_us, 1) / 1e3:.1f} GFLOP/s |")
    print("\n| operator | self CPU s | calls | GFLOP/s |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        f = sum(gemm_flops(x.key, x.input_shapes) * x.count for x in by_shape if x.key == e.key) if e.key in GEMM_OPS else 0
        rate = f"{f / e.self_cpu_time_total / 1e3:.1f}" if f and e.self_cpu_time_total else ""
        print(f"| {e.key} | {e.self_cpu_time_total / 1e6:.2f} | {e.count:,} | {rate} |")
    print("\n| matrix product (input shapes) | calls | self CPU s | GFLOP/s |\n|---|---|---|---|")
    top = sorted((x for x in by_shape if x.key in GEMM_OPS), key=lambda x: -x.self_cpu_time_total)[: args.top]
    for x in top:
        f = gemm_flops(x.key, x.input_shapes) * x.count
        print(f"| {x.key} {x.input_shapes} | {x.count:,} | {x.self_cpu_time_total / 1e6:.2f} | "
              f"{f / max(x.self_cpu_time_total, 1) / 1e3:.1f} |")


if __name__ == "__main__":
    main()
