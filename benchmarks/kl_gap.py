"""How far the long goal's KL (0.5 nats a token) is, on the measured curves: KL against FVU, FVU against tokens.

    python benchmarks/kl_gap.py [--csv benchmarks/results/quality_budget.csv] [--goal 0.5]

Reads every measured set of ``benchmarks/quality_budget.py`` (its CSV; fine-tuned sets left out: a
fine-tune lowers the KL at the same FVU) and fits two power laws by least squares in log-log:

- KL against held-out FVU, over every set: how low the FVU must go for the goal's KL;
- FVU against training tokens, over the sets of the current recipe (TopK 128 without skip: L0 over
  100, PLT and PLT-made-CLT alike): how many tokens that FVU takes.

The tokens are then turned into hours at the long preset's own measured rate. Every figure past the
last measured set is an extrapolation of these fits, and is printed as one.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """``log y = a + b log x`` by least squares: ``(a, b, r²)``."""
    lx, ly = np.log(xs), np.log(ys)
    b, a = np.polyfit(lx, ly, 1)
    return float(a), float(b), float(np.corrcoef(lx, ly)[0, 1] ** 2)  # r² of a line is the squared correlation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=str(Path(__file__).parent / "results" / "quality_budget.csv"))
    parser.add_argument("--goal", type=float, default=0.5, help="the KL to reach, nats a token")
    parser.add_argument("--preset", default="smollm2-long-clt: long + 900k",
                        help="the row (its name's start) whose tokens/s turn tokens into hours")
    args = parser.parse_args()
    rows = [r for r in csv.DictReader(open(args.csv)) if "finetune" not in r["preset"]]
    fvu, kl = [float(r["fvu"]) for r in rows], [float(r["kl"]) for r in rows]
    a1, b1, r1 = fit(fvu, kl)
    need_fvu = math.exp((math.log(args.goal) - a1) / b1)
    recipe = [r for r in rows if float(r["l0"]) > 100 and float(r["l0"]) < 200]
    a2, b2, r2 = fit([float(r["tokens"]) for r in recipe], [float(r["fvu"]) for r in recipe])
    need_tokens = math.exp((math.log(need_fvu) - a2) / b2)
    ref = next(r for r in rows if r["preset"].startswith(args.preset))
    rate = float(ref["tokens"]) / float(ref["train_s"])
    best = min(rows, key=lambda r: float(r["kl"]))

    print(f"# {len(rows)} measured sets from {args.csv} (fine-tuned sets left out)\n")
    print("| fit | sets | law | r² |\n|---|---|---|---|")
    print(f"| KL against FVU | {len(rows)} | KL = {math.exp(a1):.2f} · FVU^{b1:.2f} | {r1:.3f} |")
    print(f"| FVU against tokens (TopK 128, no skip) | {len(recipe)} | FVU = {math.exp(a2):.2f} · tokens^{b2:.3f} "
          f"(×{2 ** b2:.3f} a doubling) | {r2:.3f} |")
    print("\n| | measured best | for KL ≤ " f"{args.goal} (extrapolated) |\n|---|---|---|")
    print(f"| set | {best['preset']} | |")
    print(f"| KL | {float(best['kl']):.3f} | {args.goal} |")
    print(f"| FVU | {float(best['fvu']):.3f} | {need_fvu:.3f} |")
    print(f"| tokens | {int(best['tokens']):,} | {need_tokens:,.0f} ({need_tokens / float(best['tokens']):.0f}×) |")
    print(f"| hours at the long preset's {rate:.0f} tokens/s ({ref['cpu']}) | {float(best['train_s']) / 3600:.2f} | "
          f"{need_tokens / rate / 3600:.0f} |")


if __name__ == "__main__":
    main()
