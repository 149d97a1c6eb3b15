"""Where a transcoder set's KL comes from: by layer (each spliced in alone, and each left out) and by token.

    python benchmarks/layer_kl.py [--sets smollm2-clt smollm2-quick] [--n-tokens 2048] [--threads 2]

The held-out KL of ``evaluate`` replaces every MLP at once. ``evaluate(..., per_layer=True)`` also
gives, per layer, the KL with only that layer replaced (``kl_alone``: every other slot writes the true
MLP output) and with every layer replaced but that one (``kl_restored``; ``all − restored`` is what
replacing the layer costs on top of the rest). The sum of ``kl_alone`` against the all-replaced KL
says whether the layers' errors add up or compound. The second table: how the all-replaced KL is
spread over tokens and positions (a few bad tokens, or every token a little). The third: where a
layer's FVU is set by a few tokens whose MLP output is tens of times the median's ("massive": a
squared norm over 20 times the median), the FVU of the other tokens, and which tokens those are.
Fp32, as every set is measured in BENCHMARKS.md. ``--tables`` picks tables (the first is most of the time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where benchmarks/transcoders.py
# would shadow the transcoders package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks.machine import print_machine  # noqa: E402


@torch.no_grad()
def token_kl(model, tc, n_tokens: int, seq_len: int = 128) -> Tensor:
    """``[rows, scored positions]`` KL(model ‖ every MLP replaced) of each held-out token (``evaluate``'s text)."""
    from circuits.replacement.evaluate import next_token_logprobs, token_kl
    from circuits.replacement.forward import forward
    from circuits.replacement.slots import as_compute
    from transcoders.corpus import Corpus
    from transcoders.positions import FEATURE_START

    slots, out = as_compute(tc, model.device, model.dtype), []
    for ids in Corpus.packaged().batches(model.tokenizer, seq_len=seq_len, batch_size=max(1, min(8, n_tokens // seq_len)),
                                         split="heldout", seed=0, max_tokens=n_tokens):
        lp_model = next_token_logprobs(model.hf(ids).logits, FEATURE_START)
        lp = next_token_logprobs(forward(model, slots, ids=ids, attention="live", features="recompute", errors="none",
                                         feature_start=FEATURE_START).logits, FEATURE_START)
        out.append(token_kl(lp_model, lp))
    return torch.cat(out)


@torch.no_grad()
def massive_tokens(model, tc, n_tokens: int, seq_len: int = 128, factor: float = 20.0) -> list[tuple]:
    """Per layer with massive tokens: ``(layer, FVU, FVU of the other tokens, their share of the output's
    squared norm, how many, the commonest three)`` on ``evaluate``'s held-out text."""
    from collections import Counter

    from transcoders.corpus import Corpus
    from transcoders.harvest import harvest
    from transcoders.positions import FEATURE_START

    batches = list(Corpus.packaged().batches(model.tokenizer, seq_len=seq_len, batch_size=8, split="heldout", seed=0,
                                             max_tokens=n_tokens))
    ids = torch.cat(batches)
    x, y = harvest(model, ids, input_site=tc.cfg.input_site, output_site=tc.cfg.output_site, precision="fp32",
                   skip_first=FEATURE_START)
    recon = tc(x.to(tc.b_enc.dtype)).recon.float()
    words = [model.tokenizer.decode([int(t)]) for t in ids[:, FEATURE_START:].flatten()]  # token-major, as x, y

    def fvu(r: Tensor, t: Tensor) -> float:
        return float((r - t).square().sum() / (t - t.mean(0)).square().sum())

    rows = []
    for layer in range(model.n_layers):
        t, r = y[:, layer].float(), recon[:, layer]
        norm = t.square().sum(-1)
        big = norm > factor * norm.median()
        if big.any():
            common = Counter(words[i] for i in big.nonzero().flatten().tolist()).most_common(3)
            rows.append((layer, fvu(r, t), fvu(r[~big], t[~big]), float(norm[big].sum() / norm.sum()), int(big.sum()),
                         ", ".join(f"{w!r} ×{n}" for w, n in common)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["smollm2-clt", "smollm2-quick"])
    parser.add_argument("--n-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tables", nargs="+", default=["layers", "tokens", "massive"],
                        choices=["layers", "tokens", "massive"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from circuits.models.loading import load_model
    from circuits.replacement.evaluate import evaluate
    from transcoders import load_transcoders

    model = load_model()
    sets = {name: load_transcoders(model, name) for name in args.sets}
    evals = {n: evaluate(model, tc, n_tokens=args.n_tokens, precision="fp32", per_layer=True)
             for n, tc in sets.items()} if "layers" in args.tables else {}
    tokens = {n: token_kl(model, tc, args.n_tokens) for n, tc in sets.items()} if "tokens" in args.tables else {}
    massive = {n: massive_tokens(model, tc, args.n_tokens) for n, tc in sets.items()} if "massive" in args.tables else {}
    print_machine()
    if evals:
        print(f"\nKL(model ‖ variant), nats a token, on {next(iter(evals.values())).n_tokens} held-out tokens\n")
        print("| layer | " + " | ".join(f"{s}: FVU | alone | all − restored" for s in evals) + " |")
        print("|---|" + "---|---|---|" * len(evals))
        for layer in range(model.n_layers):
            cells = [f"{ev.layers.fvu[layer]:.3f} | {ev.layers.kl_alone[layer]:.3f} | "
                     f"{ev.kl - ev.layers.kl_restored[layer]:.3f}" for ev in evals.values()]
            print(f"| {layer} | " + " | ".join(cells) + " |")
        cells = [f"{ev.layers.fvu.mean():.3f} | {ev.layers.kl_alone.sum():.3f} | "
                 f"{(ev.kl - ev.layers.kl_restored).sum():.3f}" for ev in evals.values()]
        print("| mean FVU; sums | " + " | ".join(cells) + " |")
        print("| every layer replaced | " + " | ".join(f" | {ev.kl:.3f} | " for ev in evals.values()) + " |")
    if tokens:
        print("\n| set | KL | median token | share of the KL in the top 1% / 10% / 50% of tokens | positions 1–8 | "
              "positions 64+ |\n|---|---|---|---|---|---|")
        for name, k in tokens.items():
            flat = k.flatten().sort(descending=True).values
            share = [float(flat[:max(1, int(len(flat) * q))].sum() / flat.sum()) for q in (0.01, 0.1, 0.5)]
            print(f"| {name} | {k.mean():.3f} | {flat[len(flat) // 2]:.3f} | {' / '.join(f'{s:.2f}' for s in share)} | "
                  f"{k[:, :8].mean():.3f} | {k[:, 63:].mean():.3f} |")
    for name, rows in massive.items():
        print(f"\n{name}: layers with massive tokens (squared norm over 20× the median)\n")
        print("| layer | FVU | FVU of the other tokens | massive tokens' share of the output | massive tokens | commonest |")
        print("|---|---|---|---|---|---|")
        for layer, f_all, f_rest, share, n, common in rows:
            print(f"| {layer} | {f_all:.3f} | {f_rest:.3f} | {share:.2f} | {n} | {common} |")

if __name__ == "__main__":
    main()
