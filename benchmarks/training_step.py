"""One training step of a preset's shape, with glibc's default malloc and with freed memory kept.

    python benchmarks/training_step.py [--threads 2] [--presets smollm2-quick smollm2-clt] [--steps 8]

A step is what ``transcoders.train`` runs: the objective (TopK through the active-entry kernels),
backward, gradient clip and fused Adam, on random pairs of the preset's batch size and SmolLM2's
shapes (30 layers, d_model 576). Each case runs in a fresh process, because the allocator setting
(``transcoders.allocator.keep_freed_memory``) is for the whole process and cannot be undone.
Prints the median wall milliseconds a step, tokens/s and tokens per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where benchmarks/transcoders.py
# would shadow the transcoders package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import run_case  # noqa: E402


def one_case(preset: str, malloc: str, threads: int, steps: int) -> dict:
    import torch

    from transcoders import PRESETS, TranscoderConfig, build_transcoder
    from transcoders.allocator import keep_freed_memory
    from transcoders.train import Objective, adam, freeze

    if malloc == "kept" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() did not apply here (not glibc, or MALLOC_* set)")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = PRESETS[preset].config
    L, D, N = 30, 576, cfg.batch_tokens
    tc = build_transcoder(TranscoderConfig(kind=cfg.kind, n_layers=L, d_model=D, d_features=cfg.d_features,
                                           activation=cfg.activation, k=cfg.k, skip=cfg.skip)).train()
    freeze(tc, cfg)  # a CLT started from a PLT trains its decoders only
    objective = Objective(tc, cfg)
    params = [p for p in tc.parameters() if p.requires_grad]
    opt = adam(params, lr=cfg.learning_rate)
    x, y = torch.randn(N, L, D), torch.randn(N, L, D)
    coeff = torch.tensor(cfg.sparsity_coeff)

    def step() -> None:
        stats = objective(x, y, coeff)
        opt.zero_grad(set_to_none=True)
        stats.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()

    for _ in range(2):
        step()
    walls, cpus = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"preset": preset, "malloc": malloc, "batch": N, "ms": wall * 1e3, "tokens_s": N / wall,
            "tokens_cpu_s": N / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=["smollm2-quick", "smollm2-clt"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--case", nargs=2, metavar=("PRESET", "MALLOC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(*args.case, args.threads, args.steps)))
        return
    from benchmarks.machine import print_machine

    print_machine()
    print(f"# OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE (set by the runner)')}, {args.threads} threads, "
          f"median of {args.steps} steps\n")
    print(f"{'preset':<14} {'batch':>5} {'malloc':<14} {'ms/step':>8} {'tokens/s':>9} {'tokens/CPU-s':>12}")
    for preset in args.presets:
        for malloc in ("system", "kept"):
            r = run_case(__file__, ["--case", preset, malloc, "--threads", str(args.threads), "--steps",
                                    str(args.steps)], f"{preset}/{malloc}")
            print(f"{r['preset']:<14} {r['batch']:>5} {'glibc default' if malloc == 'system' else 'freed kept':<14} "
                  f"{r['ms']:>8.0f} {r['tokens_s']:>9.0f} {r['tokens_cpu_s']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
