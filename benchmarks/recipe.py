"""Recipe sweep for per-layer transcoders: ``python benchmarks/recipe.py --runs base batch_tokens=256 ...``.

Each run is the quick preset (``--preset``) as a PLT with some fields overridden, trained by
``transcoders.train`` itself on a few layers (``--layers``) and scored by held-out FVU on those layers.
A PLT's layers do not interact (each reads its own MLP input and writes its own output; only the
global gradient-norm clip couples them), so a run on five layers shows what the same recipe does to
those layers of the full set, at a sixth of the cost. The activations are harvested once, into memory,
and every run reads them through a stand-in model: the runs differ only in their recipe, and none
pays for the model's forward. The FVU is the error nodes' share in a graph before anything else, so it
is the measure that ranks recipes; the winners still go through ``graph_quality.py`` on the full set.

A run is ``name`` or ``field=value[,field=value...]`` over ``TrainConfig`` (``base`` is the preset).
Times are training alone (no harvest): wall and CPU seconds of this process.

    python benchmarks/recipe.py --layers 3 9 15 21 27 --runs base batch_tokens=256 batch_tokens=256,lr=4e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.*
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/transcoders.py

import torch  # noqa: E402
from torch import Tensor  # noqa: E402


class CachedModel:
    """A stand-in for the model in ``transcoders.train``: its "token rows" are row numbers into
    activations harvested once (``x, y [rows, seq_len, n_layers, d_model]``, bf16, the precision the
    training buffer keeps anyway), and ``record_batch`` hands back those rows."""

    def __init__(self, name: str, x: Tensor, y: Tensor, sites: tuple[str, str]) -> None:
        self.name, self.x, self.y, self.sites = name, x, y, sites
        self.dims = SimpleNamespace(n_layers=x.shape[2], d_model=x.shape[3])
        self.tokenizer = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def record_batch(self, ids: Tensor, sites: Any, *, stop_early: bool = True) -> dict[tuple[str, int], Tensor]:
        rows = ids[:, 0]
        out = {}
        for site, layer in sites:
            source = self.x if site == self.sites[0] else self.y
            out[(site, layer)] = source[rows, :, layer].float()
        return out

    def rows(self, batch: int) -> Iterator[Tensor]:
        """Row numbers in model batches ``[batch, seq_len]`` (each row filled with its number), in order."""
        n, t = self.x.shape[:2]
        for start in range(0, n - batch + 1, batch):
            yield torch.arange(start, start + batch)[:, None].expand(batch, t).contiguous()


def harvest_rows(model: Any, batches: Iterator[Tensor], n_rows: int, layers: list[int], sites: tuple[str, str],
                 desc: str) -> tuple[Tensor, Tensor]:
    """``x, y [n_rows, seq_len, len(layers), d_model]`` (bf16) for the first ``n_rows`` corpus rows."""
    from tqdm import tqdm

    xs, ys, got = [], [], 0
    keys = [(s, layer) for layer in layers for s in sites]
    with tqdm(total=n_rows, desc=desc, unit="row", file=sys.stderr) as bar:
        for ids in batches:
            rec = model.record_batch(ids, keys)
            xs.append(torch.stack([rec[(sites[0], layer)] for layer in layers], 2).bfloat16())
            ys.append(torch.stack([rec[(sites[1], layer)] for layer in layers], 2).bfloat16())
            got += ids.shape[0]
            bar.update(ids.shape[0])
            if got >= n_rows:
                break
    return torch.cat(xs)[:n_rows], torch.cat(ys)[:n_rows]


def parse_run(text: str, base: Any) -> Any:
    """``base`` (a TrainConfig) with ``field=value`` overrides; values parsed as the field's type."""
    if text == "base":
        return base
    changes: dict[str, Any] = {}
    for part in text.split(","):
        field, _, value = part.partition("=")
        if not hasattr(base, field):
            raise SystemExit(f"{field!r} is not a TrainConfig field (run {text!r}). Fix: use one of "
                             f"{', '.join(f.name for f in dataclasses.fields(base))}.")
        current = getattr(base, field)
        if isinstance(current, bool):
            changes[field] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            changes[field] = int(float(value))
        elif isinstance(current, float) or field == "lr":
            changes[field] = float(value)
        else:
            changes[field] = value
    return dataclasses.replace(base, **changes)


def rows_needed(cfg: Any, tokens_per_row: int) -> int:
    """Corpus rows a run reads: whole chunks, each ``chunk_batches × model_batch`` rows."""
    from transcoders.buffer import StreamSpec

    spec = StreamSpec(cfg.chunk_batches, cfg.model_batch * tokens_per_row, cfg.batch_tokens, cfg.chunk_epochs)
    steps = cfg.n_tokens // cfg.batch_tokens
    return math.ceil(steps / spec.steps_per_chunk) * cfg.chunk_batches * cfg.model_batch


@torch.no_grad()
def heldout_fvu(tc: Any, x: Tensor, y: Tensor, skip_first: int) -> tuple[Tensor, Tensor]:
    """FVU and L0 per layer ``[n_layers]`` on held-out rows ``x, y [rows, seq_len, n_layers, d_model]``."""
    xs = x[:, skip_first:].flatten(0, 1).float()
    ys = y[:, skip_first:].flatten(0, 1).float()
    sq = torch.zeros(xs.shape[1])
    l0 = torch.zeros(xs.shape[1])
    for part in range(0, xs.shape[0], 2048):
        out = tc(xs[part:part + 2048])
        sq += (out.recon - ys[part:part + 2048]).square().sum((0, 2))
        l0 += (out.acts != 0).sum((0, 2)).float()
    var = (ys - ys.mean(0)).square().sum((0, 2))
    return sq / var, l0 / xs.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2-quick")
    parser.add_argument("--layers", nargs="+", type=int, default=[3, 9, 15, 21, 27])
    parser.add_argument("--runs", nargs="+", default=["base"])
    parser.add_argument("--heldout-tokens", type=int, default=16_384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="keep the harvested activations in this file (GBs) for the next sweep "
                        "of the same layers and rows")
    args = parser.parse_args()

    from benchmarks.machine import print_machine
    from circuits import load_model
    from transcoders import PRESETS, train
    from transcoders.corpus import Corpus

    torch.set_num_threads(args.threads)
    print_machine()
    base = PRESETS[args.preset].train_config(kind="plt", num_threads=args.threads, checkpoint_every=10**9)
    configs = [(run, parse_run(run, base)) for run in args.runs]
    for run, cfg in configs:
        if cfg.kind != "plt" or cfg.seq_len != base.seq_len or cfg.skip_first != base.skip_first:
            raise SystemExit(f"run {run!r}: only PLT runs with the preset's seq_len and skip_first share the cache.")
    model = load_model()
    sites = (base.input_site, base.output_site)
    corpus = Corpus.packaged()
    need = max(rows_needed(cfg, base.seq_len - base.skip_first) for _, cfg in configs)
    # The preset's own token order (train() reads corpus.batches with these arguments).
    stream = corpus.batches(model.tokenizer, seq_len=base.seq_len, batch_size=base.model_batch, split="train",
                            seed=base.seed, epochs=None)
    n_held = math.ceil(args.heldout_tokens / (base.seq_len - base.skip_first))
    key = {"model": model.name, "layers": args.layers, "seq_len": base.seq_len, "batch": base.model_batch,
           "seed": base.seed, "sites": sites}
    saved = torch.load(args.cache, weights_only=True) if args.cache and args.cache.is_file() else None
    if saved is not None and saved["key"] == repr(key) and len(saved["x"]) >= need and len(saved["hx"]) >= n_held:
        x, y, hx, hy = saved["x"][:need], saved["y"][:need], saved["hx"][:n_held], saved["hy"][:n_held]
    else:
        x, y = harvest_rows(model, stream, need, args.layers, sites, "harvest train")
        held = corpus.batches(model.tokenizer, seq_len=base.seq_len, batch_size=base.model_batch, split="heldout",
                              seed=base.seed, epochs=None)
        hx, hy = harvest_rows(model, held, n_held, args.layers, sites, "harvest held-out")
        if args.cache:
            import io

            from transcoders.writes import write_bytes

            buffer = io.BytesIO()
            torch.save({"key": repr(key), "x": x, "y": y, "hx": hx, "hy": hy}, buffer)
            write_bytes(args.cache, buffer.getvalue())
    cached = CachedModel(model.name, x, y, sites)
    del model

    print(f"\n# layers {args.layers}; {need} rows harvested ({need * (base.seq_len - base.skip_first):,} pairs); "
          f"held-out {hx.shape[0] * (base.seq_len - base.skip_first):,} pairs")
    print("| run | steps | tokens | train wall s | train CPU s | held-out FVU (mean) | per layer | L0 |")
    print("|---|---|---|---|---|---|---|---|")
    for run, cfg in configs:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = time.perf_counter(), time.process_time()
            tc = train(cached, cfg, run_dir=tmp, token_batches=lambda c=cfg: cached.rows(c.model_batch))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        fvu, l0 = heldout_fvu(tc, hx, hy, cfg.skip_first)
        per = " ".join(f"{v:.3f}" for v in fvu.tolist())
        print(f"| {run} | {cfg.n_tokens // cfg.batch_tokens} | {cfg.n_tokens:,} | {wall:.0f} | {cpu:.0f} | "
              f"**{fvu.mean():.3f}** | {per} | {l0.mean():.1f} |", flush=True)


if __name__ == "__main__":
    main()
