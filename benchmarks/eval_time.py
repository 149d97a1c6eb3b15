"""Wall time of ``evaluate`` on a saved set, to compare two versions of the code.

    python benchmarks/eval_time.py [--set smollm2-clt] [--n-tokens 4096] [--root DIR] [--threads 2]

``--root`` runs the engine of another checkout (``git worktree add DIR <commit>``) on the same set, model
and text. One untimed run of 1,024 tokens first (kernel choices, the set paging in), then one timed run;
prints the figures too, which two versions of the same computation must agree on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="smollm2-clt")
    parser.add_argument("--n-tokens", type=int, default=4096)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the checkout to time")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    # This file's folder must not come first (benchmarks/transcoders.py would shadow the package).
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(args.root).resolve()))
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks.machine import print_machine
    from circuits.models.loading import load_model
    from circuits.replacement.evaluate import evaluate
    from transcoders import load_transcoders

    model = load_model()
    tc = load_transcoders(model, args.set)
    evaluate(model, tc, n_tokens=1024, precision="fp32", progress=False)
    t0 = time.perf_counter()
    ev = evaluate(model, tc, n_tokens=args.n_tokens, precision="fp32", progress=False)
    seconds = time.perf_counter() - t0
    print_machine()
    print(f"\n| code | set | tokens | evaluate, s | KL | FVU |\n|---|---|---|---|---|---|\n"
          f"| {sys.modules['circuits.replacement.evaluate'].__file__} | {args.set} | {ev.n_tokens} | {seconds:.1f} | "
          f"{ev.kl:.4f} | {ev.layers.fvu.mean():.4f} |")


if __name__ == "__main__":
    main()
