"""Why precision is measured, not assumed: ``python benchmarks/precision.py``.

Prints GFLOP/s of a float32 and a bf16-autocast matrix product on this CPU (one thread and all
threads), the speedup ``transcoders.precision``'s probe measures, and what ``precision="auto"``
picks here. On an AVX2 CPU bf16 is emulated and runs tens of times slower than float32; with
AVX-512 BF16 or AMX units it runs faster.

``--probe-repeats N`` runs the probe N more times (each a fresh measurement, as a new process would
make) and prints the spread of its speedup and how often ``"auto"`` would pick bf16: run it idle and
beside a busy neighbour to see whether the decision holds under load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.machine

import torch  # noqa: E402

from benchmarks.machine import print_machine  # noqa: E402
from transcoders import precision  # noqa: E402


def gflops(n: int, bf16: bool, seconds: float = 1.0) -> float:
    """Throughput of ``[n, n] @ [n, n]`` for about ``seconds``, best of three rounds."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    best = 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        a @ b  # warm-up
        for _ in range(3):
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 3:
                a @ b
                reps += 1
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def probe_spread(repeats: int) -> None:
    """The probe measured ``repeats`` times afresh: its speedup's spread and how often it picks bf16."""
    runs = [precision._probe_speedup.__wrapped__() for _ in range(repeats)]
    picks = sum(r >= precision.MIN_SPEEDUP for r in runs)
    print(f"\n| probe repeats | speedup min | median | max | picks bf16 (>= {precision.MIN_SPEEDUP}) |\n|---|---|---|---|---|")
    print(f"| {repeats} | {min(runs):.2f} | {statistics.median(runs):.2f} | {max(runs):.2f} | {picks} of {repeats} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-repeats", type=int, default=0, help="measure the probe this many more times")
    args = parser.parse_args()
    print_machine()
    threads = torch.get_num_threads()
    print("\n| matmul 512x512 | threads | fp32 GFLOP/s | bf16 autocast GFLOP/s | bf16 / fp32 |\n|---|---|---|---|---|")
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        f32, b16 = gflops(512, False), gflops(512, True)
        print(f"| | {t} | {f32:.1f} | {b16:.1f} | {b16 / f32:.3f} |", flush=True)
    torch.set_num_threads(threads)
    units = precision.cpu_has_bf16_units()
    probe = precision._probe_speedup()
    print(f"\n# bf16 units (AVX-512 BF16 or AMX): {units}; the probe's bf16 speedup: {probe:.3f}x; "
          f"precision='auto' picks {'bf16' if precision.use_bf16('cpu') else 'fp32'}")
    if args.probe_repeats:
        probe_spread(args.probe_repeats)


if __name__ == "__main__":
    main()
