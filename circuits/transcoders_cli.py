"""The ``transcoders`` command line: ``train``, ``evaluate`` and ``presets``.

    transcoders train --preset smollm2-quick                   # the default set for the default model
    transcoders train --model smollm2 --kind clt --width 4096 --k 32 --out DIR
    transcoders train --model smollm2 --kind plt --width 2048 --l0 48      # JumpReLU steered to L0 48
    torchrun --nproc-per-node 4 -m circuits transcoders train ...   # data-parallel over 4 GPUs or CPU workers
    transcoders evaluate --set smollm2-quick --n-tokens 16384

``python -m circuits transcoders ...`` is the same command. It lives in ``circuits``, not in
``transcoders``, because it loads a model to harvest from (``circuits.load_model``), and the
``transcoders`` library never imports ``circuits`` (tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from transcoders.precision import PRECISIONS, use_bf16
from transcoders.sets import PRESETS
from transcoders.train import TrainConfig

PRECISION_HELP = ("auto (default): bf16 only where this machine runs it faster than float32 (CPUs with "
                  "AVX-512 BF16 or AMX, recent GPUs); bf16 or fp32 force it")


def _load_model(name: str | None, device: str | None) -> Any:
    # Lazily: --help and a wrong flag need no model code.
    from circuits import load_model

    return load_model(name, device=device)


def _train_config(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    """The TrainConfig the flags describe (a preset's, with any flag given overriding it)."""
    flags = {
        "kind": args.kind, "d_features": args.width, "k": args.k, "l0": args.l0, "activation": args.activation,
        "n_tokens": args.n_tokens, "skip": args.skip, "seed": args.seed, "lr": args.lr,
        "decoder_lr_scale": args.decoder_lr_scale,
        "batch_tokens": args.batch_tokens, "seq_len": args.seq_len, "num_threads": args.threads,
        "sparsity": args.sparsity, "sparsity_coeff": args.sparsity_coeff, "checkpoint_every": args.checkpoint_every,
        "precision": args.precision, "skip_init": args.skip_init, "init_from": args.init_from,
        "freeze_encoder": args.freeze_encoder, "warmup_steps": args.warmup_steps,
        "decay_fraction": args.decay_fraction, "model_batch": args.model_batch,
    }
    if args.l0 is not None and args.activation is None:
        flags["activation"] = "jumprelu"
    given = {k: v for k, v in flags.items() if v is not None}
    if args.preset:
        preset = PRESETS[args.preset]
        if args.model and args.model.lower() not in (preset.model, "smollm2") and not args.force:
            raise SystemExit(f"preset {preset.name} is for {preset.model}, not {args.model}. "
                             "Fix: drop --model, or pass --force.")
        return preset.train_config(**given), preset.model
    if args.init_from:
        # A CLT started from a PLT has the PLT's shape: flags given still override (and a mismatch is named).
        from transcoders.sets import init_shape

        given = {"kind": "clt", **init_shape(args.init_from), **given}
    if "k" not in given and "l0" not in given:
        raise SystemExit("say how sparse: --k K (TopK/BatchTopK) or --l0 TARGET (JumpReLU), or pick a --preset "
                         f"({', '.join(PRESETS)}).")
    return TrainConfig(**given), args.model


def _corpus(args: argparse.Namespace) -> Any:
    """``--packaged`` sources and ``--text`` files/directories as one corpus; None (neither given)
    means the packaged default."""
    if not args.text and not args.packaged:
        return None
    from transcoders.corpus import Corpus

    parts = ([Corpus.packaged(args.packaged)] if args.packaged else []) + (
        [Corpus.from_files(args.text)] if args.text else [])
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _add_text_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--text", action="append", help=f"{what} these text files or directories "
                   "(default: the packaged English text)")
    p.add_argument("--packaged", nargs="+", metavar="SOURCE",
                   help="packaged text sources by name: besides the default shakespeare wikipedia seinfeld docutils "
                        "brown, also code, wikipedia-fr and wikipedia-es (with --text: both)")


def _train(args: argparse.Namespace) -> int:
    import torch

    from transcoders.distributed import context, init_from_env
    from circuits.replacement.evaluate import evaluate
    from transcoders.sets import load_init, preset_dir
    from transcoders.train import run_name, train

    init_from_env()
    dctx = context()
    cfg, model_name = _train_config(args)
    device = args.device
    if device is None and dctx.active:
        device = f"cuda:{dctx.local_rank}" if torch.cuda.is_available() else "cpu"
    corpus = _corpus(args)  # a missing or wrong --text fails here, before the model loads
    if args.preset and not args.out and corpus is not None and corpus.identity() is not None:
        # The preset's folder holds the set load_transcoders(model) picks by default: trained on other
        # text, it would replace that set without saying so.
        raise SystemExit(f"--preset {args.preset} with --text/--packaged would save a set trained on other text "
                         f"in the preset's own folder ({preset_dir(args.preset)}). Fix: pass --out DIR.")
    model = _load_model(model_name, device)
    out = Path(args.out) if args.out else (preset_dir(args.preset) if args.preset else None)
    if out is None:
        from transcoders.cache import cache_dir

        out = cache_dir("transcoders") / run_name(model.name, cfg, corpus.identity() if corpus else None)
    if dctx.is_main:
        print(f"training {cfg.kind} ({cfg.activation}, width {cfg.d_features}) on {model.name} for "
              f"{cfg.n_tokens:,} tokens; saving to {out}", file=sys.stderr)
    init, init_meta = load_init(model, cfg, build=True) if cfg.init_from else (None, {})
    t0, cpu0 = time.perf_counter(), time.process_time()
    tc = train(model, cfg, corpus=corpus, run_dir=args.run_dir, save_dir=out, init=init, metadata=init_meta)
    # CPU time as well as wall time: on a shared machine the wall clock mostly measures the neighbours.
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if dctx.is_main:
        print(f"trained in {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU ({cfg.n_tokens / wall:.0f} tokens/s); "
              f"saved {out}", file=sys.stderr)
        if args.eval_tokens:
            ev = evaluate(model, tc, corpus, n_tokens=args.eval_tokens, seq_len=cfg.seq_len, precision=cfg.precision)
            print(ev.layers.to_string(float_format=lambda v: f"{v:.3f}"))
            print(ev)
            from transcoders.writes import dumps, write_folder

            record = dumps({**ev.summary(), "train_wall_s": wall, "train_cpu_s": cpu,
                            "threads": torch.get_num_threads()}, indent=2)
            write_folder(out, {"eval.json": lambda p: p.write_text(record)}, replace_all=False)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from circuits.replacement.evaluate import evaluate
    from transcoders.sets import load_transcoders

    model = _load_model(args.model, args.device)
    tc = load_transcoders(model, args.set)
    ev = evaluate(model, tc, _corpus(args), n_tokens=args.n_tokens, seq_len=args.seq_len,
                  precision=args.precision, per_layer=args.per_layer)
    print(ev.layers.to_string(float_format=lambda v: f"{v:.3f}"))
    print(ev)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from circuits.replacement.evaluate import evaluate
    from circuits.replacement.finetune import finetune_kl, learning_rate
    from transcoders.io import read_config, save_transcoders
    from transcoders.sets import default_preset, load_transcoders, set_dir
    from transcoders.writes import check_output_folder

    out = check_output_folder(args.out)  # before the work: a wrong --out fails in a second
    model = _load_model(args.model, args.device)
    tc = load_transcoders(model, args.set).to(model.dtype)
    # What the set records of its own training (tokens, time, recipe, its start) goes with it, so that
    # the fine-tuned set's cost counts them (benchmarks/quality_budget.py adds the fine-tune's seconds).
    source = set_dir(args.set or default_preset(model.name).name) / "config.yaml"  # type: ignore[union-attr]
    record = read_config(source).get("circuit_engine", {}) if source.is_file() else {}
    own = {"format_version", *tc.cfg.to_dict()}
    carried = {k: v for k, v in record.items() if k not in own}
    corpus = _corpus(args)
    def measured() -> Any:
        return evaluate(model, tc, corpus, n_tokens=args.eval_tokens, seq_len=args.seq_len, precision="fp32",
                        progress=False)

    before = measured() if args.eval_tokens else None
    lr = learning_rate(tc, args.lr)
    t0, cpu0 = time.perf_counter(), time.process_time()
    finetune_kl(model, tc, corpus, n_tokens=args.n_tokens, seq_len=args.seq_len, lr=lr,
                recon_weight=args.recon_weight, params=args.params, seed=args.seed, precision=args.precision)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    save_transcoders(tc, out, metadata={**carried, "finetuned_from": str(args.set or "default"),
                                        "finetune_tokens": args.n_tokens,
                                        "finetune_lr": lr, "finetune_recon_weight": args.recon_weight,
                                        "finetune_params": args.params,
                                        "finetune_precision": "bf16" if use_bf16(model.device, args.precision) else "fp32",
                                        "finetune_seconds": seconds, "finetune_cpu_seconds": cpu_seconds})
    print(f"fine-tuned on {args.n_tokens:,} tokens in {seconds / 60:.1f} min; saved {out}", file=sys.stderr)
    if before is not None:
        print(f"before: {before}\nafter:  {measured()}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from transcoders.sets import preset_dir, stale_fields

    for p in PRESETS.values():
        built = "built" if (preset_dir(p.name) / "config.yaml").is_file() else "not built"
        if stale := stale_fields(p.name):
            built += f" (an older recipe: {', '.join(stale)} differ; train it again for the current one)"
        c = p.config
        print(f"{p.name:16} {p.model:24} {c.kind} {c.activation} width {c.d_features} k {c.k} "
              f"{c.n_tokens:,} tokens; {p.cost}; {built}{' (default)' if p.default else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="transcoders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a PLT or CLT set (resumes a killed run)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe; other flags override it")
    t.add_argument("--model", help="model name or path (default: SmolLM2-135M-Instruct)")
    t.add_argument("--kind", choices=["plt", "clt"])
    t.add_argument("--width", type=int, help="features per layer")
    t.add_argument("--k", type=int, help="TopK/BatchTopK: features per token and layer")
    t.add_argument("--l0", type=float, help="JumpReLU: target L0 per layer")
    t.add_argument("--activation", choices=["jumprelu", "topk", "batchtopk", "relu"])
    t.add_argument("--sparsity", choices=["l0", "tanh"], help="JumpReLU penalty (default l0)")
    t.add_argument("--sparsity-coeff", type=float)
    t.add_argument("--skip", action=argparse.BooleanOptionalAction,
                   help="learn a linear skip connection, or not (--no-skip); default: the preset's, else none")
    t.add_argument("--skip-init", choices=["zero", "lstsq"],
                   help="lstsq: start the skip at the least-squares map from MLP input to output")
    t.add_argument("--n-tokens", type=int)
    t.add_argument("--batch-tokens", type=int)
    t.add_argument("--seq-len", type=int)
    t.add_argument("--model-batch", type=int, help="rows of --seq-len tokens harvested a forward")
    t.add_argument("--lr", type=float)
    t.add_argument("--warmup-steps", type=int, help="steps of linear warm-up of the learning rate")
    t.add_argument("--decay-fraction", type=float,
                   help="the learning rate decays linearly to zero over this last fraction of the steps")
    t.add_argument("--decoder-lr-scale", type=float,
                   help="the decoders learn at --lr times this (a CLT's 0.25: each later layer sums many decoders)")
    t.add_argument("--init-from", metavar="SET",
                   help="a CLT only: start from this PLT set's features (preset, directory or hf://), its "
                        "cross-layer decoders at zero; a preset not built is trained first")
    t.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction,
                   help="with --init-from: keep the PLT's encoders, so only the decoders learn (faster steps)")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    t.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    t.add_argument("--device")
    _add_text_options(t, "train on")
    t.add_argument("--out", help="where to save the set (default: the cache)")
    t.add_argument("--run-dir", help="where checkpoints go (default: the cache)")
    t.add_argument("--eval-tokens", type=int, default=16_384, help="evaluate on this many held-out tokens (0: skip)")
    t.add_argument("--force", action="store_true", help="run a preset on another model")
    t.set_defaults(func=_train)
    e = sub.add_parser("evaluate", help="FVU, L0, dead features, CE recovered and KL of a set")
    e.add_argument("--model")
    e.add_argument("--set", help="preset name, directory or hf://org/repo (default: the model's default set)")
    e.add_argument("--n-tokens", type=int, default=16_384)
    e.add_argument("--seq-len", type=int, default=128)
    e.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    e.add_argument("--per-layer", action="store_true",
                   help="also each layer's KL replaced alone and left out (about 20x the time: use ~2048 tokens)")
    _add_text_options(e, "evaluate on the held-out split of")
    e.add_argument("--device")
    e.set_defaults(func=_evaluate)
    f = sub.add_parser("finetune", help="fine-tune a set end to end on the replaced model's next-token KL")
    f.add_argument("--model")
    f.add_argument("--set", help="preset name, directory or hf://org/repo (default: the model's default set)")
    f.add_argument("--out", required=True, help="where to save the fine-tuned set (a new or engine-written folder)")
    f.add_argument("--n-tokens", type=int, default=32_768)
    f.add_argument("--seq-len", type=int, default=128)
    f.add_argument("--lr", type=float, help="peak learning rate (default: 1e-4 for a PLT, 1e-5 for a CLT)")
    f.add_argument("--recon-weight", type=float, default=1.0, help="weight of the layerwise reconstruction loss")
    f.add_argument("--params", choices=["decoders", "all"], default="decoders",
                   help="what learns: what the features write (decoders, b_dec, skip; the default) or the encoders too")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    f.add_argument("--eval-tokens", type=int, default=16_384, help="evaluate before and after, in fp32 (0: skip)")
    _add_text_options(f, "fine-tune on")
    f.add_argument("--device")
    f.set_defaults(func=_finetune)
    p = sub.add_parser("presets", help="list the presets and whether they are built")
    p.set_defaults(func=_presets)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
