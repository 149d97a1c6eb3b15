"""How good is a transcoder set: ``evaluate(model, tc, corpus, n_tokens=...)``.

Per layer, on the original model's activations (``transcoders.harvest``): FVU, L0 and the
fraction of features that never fired. For the whole model, on held-out text, with *every* MLP
replaced at once: the replacement model's own forward (``circuits.replacement.forward`` with
``attention="live", features="recompute", errors="none"``): next-token cross-entropy against the
original model and against all MLPs zero-ablated, the fraction of CE loss recovered
``(CE_zero - CE_replaced) / (CE_zero - CE_model)``, and KL(original ‖ replaced). With
``per_layer=True``, per layer, the KL with only that layer replaced (``kl_alone``: its slot writes the
transcoders' output, every other slot the true MLP output) and with every layer replaced but that one
(``kl_restored``): which layers' transcoders the KL comes from, and whether their errors add up or
compound.

Positions before ``feature_start`` (the first token; ``transcoders.positions``) keep their true MLP
output in every run and are left out of every figure, as in harvest, training, trace and patching.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from circuits.ablation import zero_mlp_hooks
from circuits.hooks import hooked
from circuits.models.adapter import Model
from circuits.replacement.forward import SlotEditor, forward
from circuits.replacement.slots import as_compute, check_feature_start
from transcoders.harvest import harvest_with_logits
from transcoders.io import check_fits
from transcoders.model import Transcoder
from transcoders.positions import FEATURE_START
from transcoders.precision import Precision, autocast


@dataclass
class Evaluation:
    """The figures of one evaluation run."""

    layers: pd.DataFrame
    """One row per layer: ``fvu``, ``l0``, ``dead_fraction`` (never active in ``n_tokens``); with
    ``per_layer``, also ``kl_alone`` and ``kl_restored`` (nats/token; module docstring)."""
    ce_model: float
    """Next-token cross-entropy of the original model (nats/token)."""
    ce_replaced: float
    """… with every MLP replaced by its transcoder."""
    ce_zero_ablated: float
    """… with every MLP's output set to zero."""
    kl: float
    """KL(original ‖ replaced) of the next-token distributions, nats/token."""
    n_tokens: int
    """Tokens the figures average over."""

    @property
    def ce_recovered(self) -> float:
        """Fraction of the CE loss that zero-ablating the MLPs costs and the transcoders win back."""
        return (self.ce_zero_ablated - self.ce_replaced) / (self.ce_zero_ablated - self.ce_model)

    def summary(self) -> dict[str, float]:
        return {"fvu": float(self.layers.fvu.mean()), "l0": float(self.layers.l0.mean()),
                "dead_fraction": float(self.layers.dead_fraction.mean()), "ce_model": self.ce_model,
                "ce_replaced": self.ce_replaced, "ce_zero_ablated": self.ce_zero_ablated,
                "ce_recovered": self.ce_recovered, "kl": self.kl, "n_tokens": self.n_tokens}

    def __str__(self) -> str:
        s = self.summary()
        return (f"FVU {s['fvu']:.3f}  L0 {s['l0']:.1f}  dead {s['dead_fraction']:.3f}  |  CE model {s['ce_model']:.3f}  "
                f"replaced {s['ce_replaced']:.3f}  zero-ablated {s['ce_zero_ablated']:.3f}  recovered "
                f"{s['ce_recovered']:.1%}  KL {s['kl']:.3f}  ({s['n_tokens']} tokens)")


def next_token_logprobs(logits: Tensor, start: int) -> Tensor:
    """Log-probabilities ``[B, T - 1 - start, vocab]`` for the positions that are scored."""
    return F.log_softmax(logits[:, start:-1].float(), dim=-1)


def token_kl(lp_model: Tensor, lp: Tensor) -> Tensor:
    """KL(model ‖ other) of each position's next-token distribution, ``[...]`` from log-probabilities
    ``[..., vocab]`` (``lp`` may carry extra leading dimensions, broadcast against ``lp_model``)."""
    return (lp_model.exp() * (lp_model - lp)).sum(-1)


@torch.no_grad()
def evaluate(model: Model, tc: Transcoder, corpus: Any = None, n_tokens: int = 16_384, *, seq_len: int = 128,
             batch_size: int = 8, seed: int = 0, split: str = "heldout", precision: Precision = "auto",
             feature_start: int = FEATURE_START, token_batches: Iterator[Tensor] | None = None,
             progress: bool = True, per_layer: bool = False) -> Evaluation:
    """Evaluate ``tc`` on ``model`` over about ``n_tokens`` tokens of ``corpus``'s held-out split.

    ``corpus`` defaults to ``Corpus.packaged()``; ``token_batches`` (LongTensor ``[B, T]`` rows)
    replaces it. ``precision``: ``"auto"`` runs in bf16 only where the hardware runs it faster (as training
    does); see ``transcoders.precision``. ``per_layer`` adds ``kl_alone`` and ``kl_restored`` to ``layers``:
    2 × n_layers more replacement passes a batch (about 20 times the time; 2,048 tokens are enough to rank
    the layers).
    """
    check_fits(tc, model)
    start = check_feature_start(feature_start)
    if token_batches is None:
        if corpus is None:
            from transcoders.corpus import Corpus

            corpus = Corpus.packaged()
        # A budget smaller than one batch shrinks the batch, so small held-out splits still evaluate.
        batch_size = max(1, min(batch_size, n_tokens // seq_len))
        token_batches = corpus.batches(model.tokenizer, seq_len=seq_len, batch_size=batch_size, split=split,
                                       seed=seed, max_tokens=n_tokens)
    was_training = tc.training
    tc.eval()
    slots = as_compute(tc, model.device, model.dtype)  # what the replacement model runs (tc itself when it matches)
    L, Fw = tc.cfg.n_layers, tc.cfg.d_features
    device = model.device
    sq_err = torch.zeros(L, dtype=torch.float64)
    sum_y = torch.zeros(L, tc.cfg.d_model, dtype=torch.float64)
    sum_y2 = torch.zeros(L, dtype=torch.float64)
    l0_sum = torch.zeros(L, dtype=torch.float64)
    fired = torch.zeros(L, Fw, dtype=torch.bool)
    ce = {"model": 0.0, "replaced": 0.0, "zero": 0.0}
    kl, n_scored, n_pairs = 0.0, 0, 0
    kl_layers = torch.zeros(2, L, dtype=torch.float64)  # [alone, restored] summed over scored tokens
    bar = tqdm(desc="evaluate", unit="tok", file=sys.stderr, disable=not progress, total=n_tokens, dynamic_ncols=True)
    for ids in token_batches:
        ids = ids.to(device)
        targets = ids[:, start + 1:]
        x, y, logits = harvest_with_logits(model, ids, input_site=tc.cfg.input_site, output_site=tc.cfg.output_site,
                                           precision=precision, skip_first=start)
        x, y = x.float(), y.float()
        lp_model = next_token_logprobs(logits, start)
        with autocast(device, precision):
            out = tc(x.to(tc.b_enc.dtype))
        recon = out.recon.float()
        sq_err += (recon - y).square().sum(-1).sum(0).double().cpu()
        sum_y += y.sum(0).double().cpu()
        sum_y2 += y.square().sum(-1).sum(0).double().cpu()
        active = out.acts != 0
        l0_sum += active.sum(-1).sum(0).double().cpu()
        fired |= active.any(0).cpu()
        n_pairs += active.shape[0]

        with autocast(device, precision):
            lp = next_token_logprobs(forward(model, slots, ids=ids, attention="live", features="recompute",
                                              errors="none", feature_start=start).logits, start)
            with hooked(zero_mlp_hooks(model, tc.cfg.output_site, start)):
                lp_zero = next_token_logprobs(model.hf(ids).logits, start)
        ce["model"] += float(-lp_model.gather(-1, targets[..., None]).sum())
        ce["replaced"] += float(-lp.gather(-1, targets[..., None]).sum())
        ce["zero"] += float(-lp_zero.gather(-1, targets[..., None]).sum())
        kl += float(token_kl(lp_model, lp).sum())
        if per_layer:
            with autocast(device, precision):
                kl_layers += _layer_kl_sums(model, slots, ids, lp_model, start)
        n_scored += targets.numel()
        bar.update(ids.numel())
    bar.close()
    tc.train(was_training)
    if n_scored == 0:
        raise ValueError("evaluate saw no tokens. Fix: raise n_tokens, or pass a corpus with held-out text.")
    var = sum_y2 - sum_y.square().sum(-1) / n_pairs
    layers = pd.DataFrame({
        "layer": range(L),
        "fvu": (sq_err / var.clamp_min(1e-12)).numpy(),
        "l0": (l0_sum / n_pairs).numpy(),
        "dead_fraction": (~fired).float().mean(-1).numpy(),
    } | ({"kl_alone": (kl_layers[0] / n_scored).numpy(), "kl_restored": (kl_layers[1] / n_scored).numpy()}
         if per_layer else {})).set_index("layer")
    return Evaluation(layers, ce["model"] / n_scored, ce["replaced"] / n_scored, ce["zero"] / n_scored,
                      kl / n_scored, n_scored)


class ReplaceLayers(SlotEditor):
    """Rows of one live-error pass (``errors="live"``) that replace different layers: row ``r`` drops the
    error, so writes only the transcoders' output, at the layers where ``replace[r]`` ``[rows, n_layers]``
    is True (from position ``start`` on, as everywhere) and the true MLP output at the others."""

    def __init__(self, replace: Tensor, start: int) -> None:
        self.replace, self.start, self.n_rows = replace, start, replace.shape[0]

    def edits_errors(self, layer: int) -> bool:
        return bool(self.replace[:, layer].any())

    def error(self, layer: int, err: Tensor) -> Tensor:  # err: [rows, T, D]
        keep = (~self.replace[:, layer]).to(err.dtype)[:, None, None].repeat(1, err.shape[1], 1)
        keep[:, :self.start] = 1.0
        return err * keep


def _layer_kl_sums(model: Model, slots: Any, ids: Tensor, lp_model: Tensor, start: int,
                   max_tokens: int = 2048) -> Tensor:
    """``[2, L]`` KL(original ‖ variant) summed over the scored tokens of ``ids [B, T]``: each layer alone
    replaced, and every layer but that one. Variants run as batch rows, ``max_tokens`` tokens a pass
    (its logits are ``max_tokens × d_vocab``)."""
    B, L = ids.shape[0], model.n_layers
    eye = torch.eye(L, dtype=torch.bool, device=ids.device)
    replace = torch.cat([eye, ~eye])                                            # [2L, L]
    sums = torch.zeros(2 * L, dtype=torch.float64)
    for chunk in torch.arange(2 * L).split(max(1, max_tokens // ids.numel())):
        c = len(chunk)
        run = forward(model, slots, ids=ids.repeat(c, 1), attention="live", features="recompute", errors="live",
                      editor=ReplaceLayers(replace[chunk].repeat_interleave(B, 0), start), feature_start=start,
                      keep_inputs=False)
        lp = next_token_logprobs(run.logits, start).view(c, B, *lp_model.shape[1:])
        sums[chunk] = token_kl(lp_model, lp).sum((1, 2)).double().cpu()
    return sums.view(2, L)
