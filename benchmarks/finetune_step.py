"""Steps of end-to-end fine-tuning (``circuits.replacement.finetune_kl``) on SmolLM2, timed.

    python benchmarks/finetune_step.py [--threads 2] [--sets smollm2-clt smollm2-quick] [--params decoders all] [--steps 3]
                                       [--precision fp32 bf16]

A step is what ``transcoders finetune`` runs: the model's logits and MLP pairs without autograd, the
replacement model's forward with autograd (live attention, recomputed features, no errors), the KL
and reconstruction loss, backward, clip and Adam. ``--sets`` times saved sets (``smollm2-clt``); without
it, random sets of the presets' shape (width 1,024, TopK 128, no skip). Each batch is 4 rows of 128
tokens of the packaged text (train split). ``--precision``: fp32 by default (the figures before the
fine-tune took a precision were fp32); ``transcoders finetune`` runs ``auto``. A step's time is a run
of ``steps + 1`` steps less a run of one, so the set-up (Adam's state, about 18 s for a CLT) is not counted. Prints seconds a step and
tokens/s, with the machine and its CPU capability.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where benchmarks/transcoders.py
# would shadow the transcoders package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.machine import print_machine  # noqa: E402


def step_seconds(model, tc, params: str, steps: int, batch: int = 4, seq_len: int = 128,
                 precision: str = "fp32") -> float:
    """Wall seconds of one fine-tuning step of ``tc`` in a run: a run of ``steps + 1`` steps less a run of
    one (which pays the set-up: Adam's state, the first calls' kernel choices)."""
    from circuits.replacement.finetune import finetune_kl
    from transcoders.corpus import Corpus

    # Text, as the CLI trains on: rows of random ids ran a CLT step in 7.8 s where text took 11.0.
    rows = list(Corpus.packaged().batches(model.tokenizer, seq_len=seq_len, batch_size=batch, split="train", seed=0,
                                          max_tokens=(steps + 1) * batch * seq_len))

    def run(n: int) -> float:
        t0 = time.perf_counter()
        finetune_kl(model, tc, token_batches=iter(rows[:n]), params=params, precision=precision,  # type: ignore[arg-type]
                    progress=False)
        return time.perf_counter() - t0

    one = run(1)
    return (run(steps + 1) - one) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", default=["clt", "plt"], choices=["clt", "plt"])
    parser.add_argument("--params", nargs="+", default=["decoders", "all"], choices=["decoders", "all"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "auto"])
    parser.add_argument("--sets", nargs="+", default=[],
                        help="saved sets or presets to time instead of random ones (--kinds is then ignored)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from circuits.models.loading import load_model
    from transcoders import TranscoderConfig, build_transcoder, load_transcoders

    model = load_model()
    if args.sets:
        sets = {name: lambda name=name: load_transcoders(model, name) for name in args.sets}
    else:  # random: the weights' values change which features fire, not how many (k)
        sets = {f"random {kind.upper()}": lambda kind=kind: build_transcoder(TranscoderConfig(
            kind=kind, n_layers=model.n_layers, d_model=model.d_model, d_features=1024, activation="topk", k=128))
            for kind in args.kinds}
    print_machine()
    print("\n| set | learns | precision | steps | s / step | tokens/s |\n|---|---|---|---|---|---|")
    for name, make in sets.items():
        for params in args.params:
            for precision in args.precision:
                t = step_seconds(model, make(), params, args.steps, precision=precision)  # a fresh copy: each run trains it
                print(f"| {name} | {params} | {precision} | {args.steps} | {t:.1f} | {4 * 128 / t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
