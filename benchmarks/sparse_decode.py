"""Sparse against dense decoding for one (source, target) layer pair, forward and backward.

    python benchmarks/sparse_decode.py [--tokens 1024] [--width 1024] [--d-model 576] [--k 16 64 128 256]

Times what ``transcoders.sparse`` runs per pair (``embedding_bag`` forward, ``embedding_bag`` by
feature for the decoder's gradient, ``sampled_addmm`` for the values' gradient) against the dense
matmuls (``acts @ W``, ``acts.T @ dout``, ``dout @ W.T``) at several k, in CPU milliseconds of one
thread: where the two cross is what ``DENSITY_LIMIT`` should sit below.

A second table times each sparse direction on its own, with float32 tables and with the bf16 tables
the decode's gathers read under a bf16 autocast (``transcoders.sparse._gather_dtype``), casts
included; ``sampled_addmm`` has no bf16 kernel, so the values' gradient is float32 either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.*
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/transcoders.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--k", nargs="+", type=int, default=[16, 64, 128, 256])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from benchmarks.machine import print_machine

    warnings.filterwarnings("ignore", category=UserWarning)  # "sparse CSR support is in beta" and kin
    torch.set_num_threads(1)
    print_machine()
    N, Fw, D = args.tokens, args.width, args.d_model
    g = torch.Generator().manual_seed(0)
    W, go = torch.randn(Fw, D, generator=g), torch.randn(N, D, generator=g)

    def cpu_ms(fn) -> float:
        fn()
        t0 = time.process_time()
        for _ in range(args.reps):
            fn()
        return (time.process_time() - t0) / args.reps * 1e3

    def pattern(k: int) -> dict:
        """One pair's active entries at ``k``, in the layouts the sparse kernels read."""
        vals, idx = torch.randn(N, Fw, generator=g).topk(k, -1)
        feat = idx.flatten()
        counts = torch.bincount(feat, minlength=Fw)
        return {"acts": torch.zeros(N, Fw).scatter(-1, idx, vals), "tok": torch.arange(N).repeat_interleave(k),
                "feat": feat, "v": vals.flatten(), "offsets": torch.arange(0, N * k, k),
                "by_feat": torch.argsort(feat, stable=True), "feat_offsets": torch.cumsum(counts, 0) - counts,
                "mask": torch.sparse_csr_tensor(torch.arange(0, N * k + 1, k), feat, torch.ones(N * k), (N, Fw))}

    def forward(p: dict, dtype: torch.dtype) -> torch.Tensor:
        return F.embedding_bag(p["feat"], W.to(dtype), p["offsets"], mode="sum", per_sample_weights=p["v"].to(dtype))

    def decoder_gradient(p: dict, dtype: torch.dtype) -> torch.Tensor:
        by_feat = p["by_feat"]
        return F.embedding_bag(p["tok"][by_feat], go.to(dtype), p["feat_offsets"], mode="sum",
                               per_sample_weights=p["v"][by_feat].to(dtype)).float()

    def values_gradient(p: dict) -> torch.Tensor:
        return torch.sparse.sampled_addmm(p["mask"], go, W.T, beta=0.0)

    patterns = {k: pattern(k) for k in args.k}
    print(f"\n# one pair: {N} tokens, width {Fw}, d_model {D}; CPU ms of one thread\n")
    print("| k | density | dense fwd + 2 bwd | sparse fwd + 2 bwd | sparse / dense |")
    print("|---|---|---|---|---|")
    for k, p in patterns.items():
        acts = p["acts"]
        dense = cpu_ms(lambda: (acts @ W, acts.T @ go, go @ W.T))
        sparse = cpu_ms(lambda: (forward(p, W.dtype), decoder_gradient(p, W.dtype), values_gradient(p)))
        print(f"| {k} | {k / Fw:.1%} | {dense:.1f} | {sparse:.1f} | {sparse / dense:.2f} |")

    print("\n# each sparse direction with float32 and with bf16 tables (the cast included); CPU ms of one thread\n")
    print("| k | forward fp32 | forward bf16 | decoder gradient fp32 | decoder gradient bf16 | values' gradient fp32 |")
    print("|---|---|---|---|---|---|")
    for k, p in patterns.items():
        fwd = [cpu_ms(lambda: forward(p, dtype)) for dtype in (torch.float32, torch.bfloat16)]
        grad = [cpu_ms(lambda: decoder_gradient(p, dtype)) for dtype in (torch.float32, torch.bfloat16)]
        values = cpu_ms(lambda: values_gradient(p))
        print(f"| {k} | {fwd[0]:.2f} | {fwd[1]:.2f} | {grad[0]:.2f} | {grad[1]:.2f} | {values:.2f} |")

if __name__ == "__main__":
    main()
