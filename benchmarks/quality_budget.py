"""Quality against training budget: ``python benchmarks/quality_budget.py --kind plt clt``.

For each kind, one training run of its preset's recipe (the PLT: ``smollm2-quick``'s, which is also
``smollm2-long``'s, so that to 1.3M tokens this is the long preset's own run folder; the CLT:
``smollm2-clt``'s; or ``--preset``, with that kind) to the largest budget, saving the set at every
budget on the way (``train(save_at=...)``); the run resumes from its checkpoint, so a curve can be
built across several sessions. A row's preset column names the preset whose own run it is, else
"<recipe> recipe to N tokens". Each snapshot then gets:

- held-out FVU, CE and KL (``circuits.replacement.evaluate``, ``--eval-tokens``);
- mean replacement and completeness over the prompt set (``benchmarks/prompts.py``, or ``--prompts``);
- the time its training took: wall seconds and CPU seconds of the training process (on a shared
  machine the CPU seconds are the steadier clock; on two idle cores wall ≈ CPU / 2).

``--sets DIR ...`` measures saved sets the same way (``transcoders train --out DIR``), each a row
with the tokens and training time its metadata records (a set from ``transcoders finetune``: its training's and
the fine-tune's seconds). Rows are appended to ``--results`` (CSV, one row per kind and budget; a row already there is not
measured again), printed as a table, and plotted to ``--plot`` (PNG, needs matplotlib: ``pip install
matplotlib``) against tokens and against training time, so "which wins at equal time" can be read off.

A snapshot is taken at the learning rate of its moment (the run decays over the second half of the
largest budget only), so the small budgets are a little pessimistic against runs trained to that
budget alone (on the quick recipe at 150k: replacement 0.459 against 0.473, BENCHMARKS.md).

    python benchmarks/quality_budget.py --kind plt clt --budgets 150000 500000 1300000 --threads 2
    python benchmarks/quality_budget.py --kind plt --budgets 150000 --k 256 --threads 2   # a recipe variant
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.*
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/transcoders.py

from benchmarks.graph_quality import MAX_FEATURES, score_prompts  # noqa: E402
from benchmarks.prompts import PROMPTS  # noqa: E402

FIELDS = ["kind", "preset", "overrides", "tokens", "train_s", "train_cpu_s", "fvu", "ce_replaced", "ce_model", "kl",
          "replacement", "completeness", "min_replacement", "prompts", "cpu", "l0", "dead_fraction"]


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _append(path: Path, row: dict[str, object]) -> None:
    from transcoders.writes import write_text

    rows = _read(path) + [{k: str(row.get(k, "")) for k in FIELDS}]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(FIELDS)] + [",".join(_cell(r.get(k, "")) for k in FIELDS) for r in rows]
    write_text(path, "\n".join(lines) + "\n")  # atomic: a killed run never leaves half a file


def _cell(value: str) -> str:
    return f'"{value}"' if "," in value else value


def _plot(rows: list[dict[str, str]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no plot: matplotlib is not installed; `pip install matplotlib` to draw {path})", file=sys.stderr)
        return False
    import io

    from transcoders.writes import write_bytes

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6))
    # One curve per recipe: a run's snapshots share kind, preset and overrides; a saved set is a point.
    for group in sorted({(r["kind"], r["preset"], r["overrides"]) for r in rows}):
        mine = sorted((r for r in rows if (r["kind"], r["preset"], r["overrides"]) == group), key=lambda r: int(r["tokens"]))
        kind = f"{group[0]} {group[1]}"
        tokens = [int(r["tokens"]) / 1e6 for r in mine]
        # Wall time: what "equal time" means to a user. CPU seconds would count libgomp's spinning
        # threads (OMP_WAIT_POLICY=ACTIVE) as work; a run on a shared machine shows up late here.
        hours = [float(r["train_s"]) / 3600 for r in mine]
        rep = [float(r["replacement"]) for r in mine]
        comp = [float(r["completeness"]) for r in mine]
        kl = [float(r["kl"]) for r in mine]
        axes[0].plot(tokens, rep, "o-", label=f"{kind} replacement")
        axes[0].plot(tokens, comp, "s--", label=f"{kind} completeness")
        axes[1].plot(hours, rep, "o-", label=f"{kind} replacement")
        axes[2].plot(tokens, kl, "o-", label=kind)
    axes[0].set(xlabel="training tokens (M)", ylabel="score", xscale="log", title="graph scores against tokens")
    axes[1].set(xlabel="training wall hours", ylabel="mean replacement", title="at equal time")
    axes[2].set(xlabel="training tokens (M)", ylabel="KL nats/token", xscale="log", yscale="log",
                title="held-out KL(model || replaced)")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in (axes[0], axes[2]):  # plain token counts: log-axis minor labels ran into each other
        ax.set_xticks([0.15, 0.3, 0.5, 1.0, 2.0])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    for ax in axes:
        ax.grid(alpha=0.3)
        # Below each panel: inside, the legends hid the points.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    # Not tight_layout: it shrank the panels to fit the legends; saving with bbox_inches="tight" grows
    # the image around them instead, so the panels keep their size however many recipes there are.
    fig.subplots_adjust(wspace=0.3)
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png", bbox_inches="tight")  # the legends below
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, png.getvalue())
    return True


def _with_init(meta: dict, key: str, own: float) -> float:
    """A set's ``own`` tokens or training seconds, plus its start's (``init_<key>``) for a CLT started
    from a PLT set (init_from): its cost includes that set's training; and a fine-tuned set's seconds
    (``transcoders finetune`` records ``finetune_seconds`` and ``finetune_cpu_seconds``) include the fine-tune's."""
    extra = meta.get(key.replace("train_", "finetune_", 1), 0) if key.startswith("train_") else 0
    return own + meta.get(f"init_{key}", 0) + extra


def _measure(model, tc, meta: dict, prompts: list, args: argparse.Namespace, cpu: str) -> dict[str, object]:
    """One row's measures of the set ``tc``: held-out FVU/CE/KL, graph scores, training time from ``meta``."""
    from circuits.replacement import evaluate

    ev = evaluate(model, tc, n_tokens=args.eval_tokens, precision="fp32").summary()
    scores = score_prompts(model, tc, prompts, max_features=args.max_features, label=f"{tc.cfg.kind}")
    return {
        "train_s": f"{_with_init(meta, 'train_seconds', meta.get('train_seconds', float('nan'))):.0f}",
        "train_cpu_s": f"{_with_init(meta, 'train_cpu_seconds', meta.get('train_cpu_seconds', float('nan'))):.0f}",
        "fvu": f"{ev['fvu']:.3f}", "ce_replaced": f"{ev['ce_replaced']:.3f}", "ce_model": f"{ev['ce_model']:.3f}",
        "kl": f"{ev['kl']:.3f}",
        "replacement": f"{statistics.fmean(r[2] for r in scores):.3f}",
        "completeness": f"{statistics.fmean(r[3] for r in scores):.3f}",
        "min_replacement": f"{min(r[2] for r in scores):.3f}", "prompts": len(prompts), "cpu": cpu,
        "l0": f"{ev['l0']:.1f}", "dead_fraction": f"{ev['dead_fraction']:.3f}",  # is there capacity left unused?
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", nargs="+", default=["plt", "clt"], choices=["plt", "clt"])
    parser.add_argument("--preset", help="the recipe, its kind replaced by --kind (default: smollm2-quick for the "
                        "PLT, whose run to 1.3M tokens is smollm2-long's own, and smollm2-clt for the CLT)")
    parser.add_argument("--budgets", nargs="+", type=int, default=[150_000, 500_000, 1_300_000])
    parser.add_argument("--skip-init", choices=["zero", "lstsq"], help="override the preset's skip_init")
    parser.add_argument("--skip", choices=["yes", "no"], help="override the preset's linear skip")
    parser.add_argument("--k", type=int, help="override the preset's k (TopK)")
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    parser.add_argument("--prompts", nargs="+", help="only these prompt names (default: all of benchmarks/prompts.py)")
    parser.add_argument("--max-features", type=int, default=MAX_FEATURES)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--train-only", action="store_true", help="train (and snapshot) only; measure later")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure the snapshots already saved (a run may still be training)")
    parser.add_argument("--sets", nargs="+", type=Path, default=[],
                        help="also measure these saved sets (their kind, tokens and training time from the set's "
                             "own metadata; the row's preset column holds the directory's name)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/quality_budget.csv"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/quality_budget.png"))
    args = parser.parse_args()

    import torch

    from benchmarks.machine import print_machine
    from circuits import load_model
    from transcoders import PRESETS, load_transcoders, train
    from transcoders.cache import cache_dir
    from transcoders.io import read_config
    from transcoders.sets import load_init
    from transcoders.train import run_name
    from transcoders.warm_start import weights_digest

    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    model = load_model()
    prompts = [p for p in PROMPTS if not args.prompts or p.name in args.prompts]
    cpu = torch.backends.cpu.get_cpu_capability()
    overrides: dict[str, object] = {"skip_init": args.skip_init} if args.skip_init else {}
    if args.skip:
        overrides["skip"] = args.skip == "yes"
    if args.k:
        overrides["k"] = args.k
    done = {(r["kind"], r["preset"], r["overrides"], r["tokens"], r["prompts"]) for r in _read(args.results)}
    for where in args.sets:
        meta = read_config(where / "config.yaml").get("circuit_engine", {})
        recipe = {k: v for k, v in meta.get("train_config", {}).items()
                  if k in ("batch_tokens", "lr", "decoder_lr_scale", "decay_fraction", "warmup_steps",
                           "chunk_epochs", "init_from", "freeze_encoder")}
        row = {"kind": meta.get("kind", "?"), "preset": where.name, "overrides": str(recipe),
               "tokens": int(_with_init(meta, "tokens", meta.get("tokens", 0)))}
        if (row["kind"], row["preset"], row["overrides"], str(row["tokens"]), str(len(prompts))) in done:
            continue
        _append(args.results, {**row, **_measure(model, load_transcoders(model, where), meta, prompts, args, cpu)})
    for kind in ([] if args.sets and args.kind == parser.get_default("kind") else args.kind):
        preset = args.preset or {"plt": "smollm2-quick", "clt": "smollm2-clt"}[kind]
        cfg = PRESETS[preset].train_config(kind=kind, n_tokens=max(args.budgets),
                                                num_threads=args.threads, **overrides)
        init, init_meta = load_init(model, cfg, build=not args.measure_only) if cfg.init_from else (None, {})
        digest = weights_digest(init) if init is not None else None
        run_dir = cache_dir("transcoders", "runs", run_name(model.name, cfg, init=digest))
        # A row names the preset whose own run this is (to 1.3M tokens the PLT's is smollm2-long's),
        # so that a snapshot of a long run is not read as the short preset's result.
        label = next((name for name, p in PRESETS.items()
                      if run_name(model.name, p.config, init=digest) == run_dir.name),
                     f"{preset} recipe to {cfg.n_tokens:,} tokens")
        print(f"# {kind}: {cfg.n_tokens:,} tokens in {run_dir}, snapshots at {args.budgets}", file=sys.stderr)
        if not args.measure_only:
            train(model, cfg, run_dir=run_dir, save_at=args.budgets, init=init, metadata=init_meta)
        if args.train_only:
            continue
        for budget in sorted(args.budgets):
            where = run_dir / f"tokens-{budget}"
            if not (where / "config.yaml").is_file():
                continue
            meta = read_config(where / "config.yaml").get("circuit_engine", {})
            tokens = int(_with_init(meta, "tokens", budget))
            if (kind, label, str(overrides), str(tokens), str(len(prompts))) in done:
                continue
            _append(args.results, {"kind": kind, "preset": label, "overrides": str(overrides), "tokens": tokens,
                                   **_measure(model, load_transcoders(model, where), meta, prompts, args, cpu)})
    rows = _read(args.results)
    if rows:
        print("\n| kind | preset | overrides | tokens | train wall s | train CPU s | FVU | CE replaced / model | KL | "
              "replacement | completeness | min replacement | prompts | CPU | L0 | dead |")
        print("|---" * 16 + "|")
        for r in rows:
            print(f"| {r['kind']} | {r['preset']} | {r['overrides']} | {int(r['tokens']):,} | {r['train_s']} | "
                  f"{r['train_cpu_s']} | {r['fvu']} | {r['ce_replaced']} / {r['ce_model']} | {r['kl']} | "
                  f"{r['replacement']} | {r['completeness']} | {r['min_replacement']} | {r['prompts']} | {r['cpu']} | "
                  f"{r.get('l0', '')} | {r.get('dead_fraction', '')} |")
        if _plot(rows, args.plot):
            print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
