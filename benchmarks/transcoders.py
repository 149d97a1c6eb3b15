"""Transcoder throughput and quality: harvest vs a bare forward, training steps, and every built preset.

    python benchmarks/transcoders.py [--threads 2] [--eval-tokens 16384] [--skip-eval] [--skip-harvest]

Prints four tables: harvest tokens/s next to the bare model forward (fp32 and bf16
autocast); training tokens/s of one optimiser step on harvested-size batches, PLT and
CLT; the CLT's rate over the PLT's at the same width, k and skip; and for each preset set
found in the cache, FVU, L0, dead fraction, CE recovered and KL from
``circuits.replacement.evaluate`` on held-out packaged text.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `transcoders` package it benchmarks.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.machine

# On a shared CPU, OpenMP threads that spin while waiting burn the cores the other jobs need
# (and inflate CPU time); this must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.machine import print_machine  # noqa: E402

from circuits import load_model  # noqa: E402
from circuits.replacement.evaluate import evaluate  # noqa: E402
from transcoders import (  # noqa: E402
    PRESETS,
    TrainConfig,
    TranscoderConfig,
    build_transcoder,
    harvest,
    load_transcoders,
)
from transcoders.precision import autocast, use_bf16  # noqa: E402
from transcoders.sets import preset_dir  # noqa: E402
from transcoders.train import Objective, adam  # noqa: E402


def _rate(fn: Callable[[], object], tokens: int, reps: int) -> float:
    return _rates(fn, tokens, reps)[0]


def _rates(fn: Callable[[], object], tokens: int, reps: int) -> tuple[float, float]:
    """Tokens per wall second and per CPU second of this process."""
    fn()  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return tokens * reps / (time.perf_counter() - t0), tokens * reps / (time.process_time() - c0)


def harvest_table(model, batch: int, seq_len: int, reps: int) -> pd.DataFrame:
    ids = torch.randint(0, model.dims.d_vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    n = ids.numel()
    rows = []
    with torch.no_grad():
        rows.append(("bare forward, fp32", _rate(lambda: model.hf(ids), n, reps)))
        with autocast(model.device, "bf16"):
            rows.append(("bare forward, bf16 autocast", _rate(lambda: model.hf(ids), n, reps)))
    rows.append(("harvest all layers, fp32", _rate(lambda: harvest(model, ids, precision="fp32"), n, reps)))
    rows.append(("harvest all layers, bf16 autocast", _rate(lambda: harvest(model, ids, precision="bf16"), n, reps)))
    return pd.DataFrame(rows, columns=["what", "tokens/s"]).set_index("what")


def train_table(model, batch_tokens: int, reps: int) -> pd.DataFrame:
    """One optimiser step (forward, backward, clip, Adam) on random pairs, as ``train`` runs it:
    sparse decoding under ``DENSITY_LIMIT``, fused Adam. fp32 always; bf16 autocast only where the
    CPU has fast bf16 (``transcoders.precision``). Tokens per CPU-second is what the step costs
    one core, and is steadier than wall time on a shared machine."""
    L, D = model.dims.n_layers, model.dims.d_model
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch_tokens, L, D, generator=g), torch.randn(batch_tokens, L, D, generator=g)
    precisions = ["fp32"] + (["bf16"] if use_bf16(torch.device("cpu"), "auto") else [])
    rows = []
    # TopK with and without the skip (the PLT presets dropped theirs), so that each CLT row has a PLT
    # row of the same width, k and skip to be read against.
    for kind, activation, width, k, skip in (("plt", "topk", 1024, 64, True), ("plt", "topk", 1024, 64, False),
                                             ("plt", "jumprelu", 1024, 64, True), ("clt", "topk", 1024, 64, True),
                                             ("clt", "topk", 1024, 64, False)):
        cfg = TrainConfig(kind=kind, activation=activation, d_features=width, k=k, skip=skip,
                          l0=float(k) if activation == "jumprelu" else None)
        torch.manual_seed(0)
        tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=L, d_model=D, d_features=width,
                                               activation=activation, k=k, skip=skip)).train()
        objective = Objective(tc, cfg)
        params = [p for p in tc.parameters() if p.requires_grad]
        opt = adam(params, lr=1e-4)
        coeff = torch.tensor(1e-2)
        for precision in precisions:
            def step() -> None:
                with autocast(model.device, precision):
                    stats = objective(x, y, coeff)
                opt.zero_grad()
                stats.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()

            wall, cpu = _rates(step, batch_tokens, reps)
            rows.append((f"{kind} {activation} width {width} k {k}{' skip' if skip else ''}", precision, wall, cpu))
    return pd.DataFrame(rows, columns=["training step", "precision", "tokens/s", "tokens/CPU-s"]).set_index(
        ["training step", "precision"])


def clt_ratio(steps: pd.DataFrame) -> pd.DataFrame:
    """The CLT step's tokens/s over the PLT's at the same width, k and skip, per precision (#16 asks >= 0.5)."""
    rows = []
    for (name, precision), rate in steps["tokens/s"].items():
        if name.startswith("clt "):
            plt_name = "plt " + name[len("clt "):]
            rows.append((name, precision, rate / steps.loc[(plt_name, precision), "tokens/s"]))
    return pd.DataFrame(rows, columns=["training step", "precision", "CLT / PLT tokens/s"]).set_index(
        ["training step", "precision"])


def eval_table(model, n_tokens: int) -> pd.DataFrame:
    rows = []
    for name in PRESETS:
        if not (preset_dir(name) / "config.yaml").is_file():
            print(f"(preset {name} is not built: `transcoders train --preset {name}`)")
            continue
        tc = load_transcoders(model, name)
        t0 = time.perf_counter()
        ev = evaluate(model, tc, n_tokens=n_tokens)
        meta = preset_dir(name) / "eval.json"
        train_s = json.loads(meta.read_text()).get("train_wall_s") if meta.is_file() else None
        rows.append({"set": name, **ev.summary(), "eval_s": time.perf_counter() - t0,
                     "train_min": None if train_s is None else train_s / 60})
    return pd.DataFrame(rows).set_index("set") if rows else pd.DataFrame()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--skip-harvest", action="store_true", help="only the training steps (and the sets)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    print_machine()
    print(f"# {model}; bf16 rows force bf16 (on an AVX2 CPU it is emulated: see the capability above)\n")
    fmt = {"float_format": lambda v: f"{v:,.1f}"}
    if not args.skip_harvest:
        print(harvest_table(model, batch=8, seq_len=128, reps=args.reps).to_string(**fmt), "\n")
    steps = train_table(model, batch_tokens=1024, reps=max(1, args.reps - 1))
    print(steps.to_string(**fmt), "\n")
    print(clt_ratio(steps).to_string(float_format=lambda v: f"{v:.2f}"), "\n")
    if not args.skip_eval:
        table = eval_table(model, args.eval_tokens)
        if len(table):
            print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
