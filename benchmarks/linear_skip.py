"""How far a linear map goes: each layer's least-squares skip, fitted on training pairs, on held-out pairs.

    python benchmarks/linear_skip.py [--train-batches 6] [--heldout-batches 2] [--ridges 1e-3 1e-2 0.1 1 10]

Harvests ``--train-batches`` batches of 8 × 128 tokens of the packaged text's train split and
``--heldout-batches`` of its held-out split (SmolLM2, fp32), fits the least-squares skip that
``TrainConfig(skip_init="lstsq")`` starts from (``transcoders.train._fit_skip``) at each ridge, and
prints its FVU on both (mean, median and worst layer). A skip start is only worth having if the
held-out FVU stays near the training one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.*
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/transcoders.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-batches", type=int, default=6)
    parser.add_argument("--heldout-batches", type=int, default=2)
    parser.add_argument("--ridges", nargs="+", type=float, default=[1e-3, 1e-2, 0.1, 1.0, 10.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from benchmarks.machine import print_machine
    from circuits import load_model
    from transcoders import TranscoderConfig, build_transcoder
    from transcoders.corpus import Corpus
    from transcoders.harvest import harvest
    from transcoders.train import _fit_skip, _init_normalisation

    torch.set_num_threads(args.threads)
    print_machine()
    model = load_model()
    corpus = Corpus.packaged()

    def pairs(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = corpus.batches(model.tokenizer, seq_len=128, batch_size=8, split=split, seed=0)
        xs, ys = zip(*[harvest(model, next(rows), precision="fp32") for _ in range(n)])
        return torch.cat(xs), torch.cat(ys)

    x, y = pairs("train", args.train_batches)
    hx, hy = pairs("heldout", args.heldout_batches)
    L, D = model.dims.n_layers, model.dims.d_model
    tc = build_transcoder(TranscoderConfig(kind="plt", n_layers=L, d_model=D, d_features=1, activation="topk", k=1,
                                           skip=True))
    _init_normalisation(tc, x, y)
    var = (hy - hy.mean(0)).square().sum((0, 2))
    print(f"# {x.shape[0]:,} training pairs, {hx.shape[0]:,} held-out pairs, {L} layers of d_model {D}\n")
    print("| ridge (× mean eigenvalue) | train FVU (mean) | held-out FVU mean | median | worst layer |")
    print("|---|---|---|---|---|")
    for ridge in args.ridges:
        fit = _fit_skip(tc, x, y, ridge=ridge)
        with torch.no_grad():
            pred = tc.skip(hx) + tc.b_dec / tc.output_scale[:, None]
        fvu = (pred - hy).square().sum((0, 2)) / var
        print(f"| {ridge:g} | {float(fit.mean()):.3f} | {float(fvu.mean()):.3f} | {float(fvu.median()):.3f} | "
              f"{float(fvu.max()):.1f} (layer {int(fvu.argmax())}) |")


if __name__ == "__main__":
    main()
