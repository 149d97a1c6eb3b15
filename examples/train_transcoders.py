"""Train a small transcoder set on your own text, evaluate it, save it and trace with it.

    python examples/train_transcoders.py                          # SmolLM2 on the packaged text: minutes
    python examples/train_transcoders.py --text my_notes/ --tokens 500000 --out my_set
    python examples/train_transcoders.py --tiny                   # a tiny random model: seconds

Per-layer transcoders (PLT) with TopK activations and a skip connection, one per MLP. Evaluation
replaces every MLP with its transcoder on held-out text: FVU and L0 per layer, and how much of the
cross-entropy that zero-ablating the MLPs costs the transcoders win back. The set is saved in
circuit-tracer's format (config.yaml + layer_{i}.safetensors) in --out/set, loaded back, and used
for a trace. A killed run resumes from its last checkpoint (in the cache) when run again.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import IOI_PROMPT, load, output_folder, parser

from circuits import trace
from circuits.replacement import evaluate
from circuits.tasks import ioi
from transcoders import Corpus, TrainConfig, load_transcoders, train


def main(argv: list[str] | None = None) -> Path:
    p = parser(__doc__, transcoders=False, out=True)
    p.add_argument("--text", nargs="*", help="text files or folders (.txt, .md, .jsonl); default the packaged text")
    p.add_argument("--width", type=int, help="features per layer (default 1024; tiny: 32)")
    p.add_argument("--k", type=int, help="active features per token and layer (default 32; tiny: 4)")
    p.add_argument("--tokens", type=int, help="training tokens (default 200,000; tiny: 2,000)")
    args = p.parse_args(argv)
    for name, real, tiny in (("width", 1024, 32), ("k", 32, 4), ("tokens", 200_000, 2_000)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else real)
    out = output_folder(args.out, "train")
    model, _ = load(args, transcoders=False)

    if args.text:
        corpus = Corpus.from_files(args.text)
    elif args.tiny:
        corpus = Corpus.from_files([ioi_text(out / "text.jsonl", model)])
    else:
        corpus = Corpus.packaged()  # Shakespeare and Milton, Wikipedia summaries, Seinfeld, Brown
    # The tiny model gets short rows and small batches: its text is a few thousand tokens.
    small = dict(seq_len=16, model_batch=4, chunk_batches=4, batch_tokens=64, warmup_steps=5) if args.tiny else {}
    cfg = TrainConfig(kind="plt", d_features=args.width, activation="topk", k=args.k, skip=True,
                      n_tokens=args.tokens, **small)
    tc = train(model, cfg, corpus=corpus, save_dir=out / "set", progress=not args.tiny)
    print(f"trained {cfg.kind.upper()} x {tc.cfg.n_layers} layers, {cfg.d_features} features, k={cfg.k}, "
          f"on {cfg.n_tokens:,} tokens")

    seq_len = 16 if args.tiny else 128
    # The tiny text's held-out split is a dozen short documents (which ones depends on the file's path),
    # so small batches: a batch larger than the split would leave nothing to evaluate.
    ev = evaluate(model, tc, corpus, n_tokens=64 * seq_len, seq_len=seq_len, batch_size=2 if args.tiny else 8,
                  progress=False)
    print(ev.layers.round(3).to_string())
    print(ev)
    (out / "evaluation.json").write_text(json.dumps(ev.summary(), indent=1))

    # Saved in circuit-tracer's format: anything that reads its sets reads this one.
    loaded = load_transcoders(model, out / "set")
    graph = trace(IOI_PROMPT, model=model, transcoders=loaded)
    print(f"traced with the saved set: {graph}; replacement score {graph.replacement_score:.3f}")
    files = sorted(f.name for f in (out / "set").iterdir() if not f.name.startswith("."))
    print(f"wrote {out}: set/ ({', '.join(files)}), evaluation.json")
    return out


def ioi_text(path: Path, model: object) -> Path:
    """A few hundred IOI sentences as JSON lines (one document each), for the tiny model to learn from."""
    task = ioi.dataset(model.tokenizer, n=400, seed=1)  # type: ignore[attr-defined]
    docs = [f"{prompt} {model.tokenizer.decode(answer)} ." for prompt, answer in  # type: ignore[attr-defined]
            zip(task.clean_prompts, task.answers.tolist())]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


if __name__ == "__main__":
    main()
