"""How good is a transcoder set: ``evaluate(model, tc, corpus, n_tokens=...)``.

Per layer, on the original model's activations: FVU, L0 and the fraction of features
that never fired. For the whole model, with *every* MLP replaced by the transcoder at
once (a forward hook swaps each MLP's write for the reconstruction computed from the
replaced model's own MLP inputs), on held-out text: next-token cross-entropy against
the original model and against all MLPs zero-ablated, the fraction of CE loss recovered
``(CE_zero - CE_replaced) / (CE_zero - CE_model)``, and KL(original ‖ replaced).

The first ``skip_first`` positions of every row keep their true MLP output and are left
out of every figure: transcoders are not trained there (the first token is an attention
sink with outsized activations), and circuit-tracer likewise zeroes features at position 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from transcoders.harvest import check_finite
from transcoders.io import check_fits
from transcoders.model import Transcoder
from transcoders.precision import Precision, autocast


@dataclass
class Evaluation:
    """The figures of one evaluation run."""

    layers: pd.DataFrame
    """One row per layer: ``fvu``, ``l0``, ``dead_fraction`` (never active in ``n_tokens``)."""
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


def _io_modules(model: Any, site_in: str, site_out: str, layer: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The module whose *input* is the transcoder's input, and the one whose *output* it replaces."""
    reads = model.norm("ln_mlp", layer) if site_in == "resid_mid" else model.module(site_in, layer)
    return reads, model.module(site_out, layer)


class _Replacement:
    """Forward hooks that swap each layer's MLP write for the transcoder's (or zeros), in place."""

    def __init__(self, model: Any, tc: Transcoder, mode: str, skip_first: int) -> None:
        self.tc, self.mode, self.skip_first = tc, mode, skip_first
        self.acts: list[Tensor] = []
        self.inputs: dict[int, Tensor] = {}
        self.handles = []
        for layer in range(tc.cfg.n_layers):
            reads, writes = _io_modules(model, tc.cfg.input_site, tc.cfg.output_site, layer)
            self.handles.append(reads.register_forward_pre_hook(self._read(layer), with_kwargs=True))
            self.handles.append(writes.register_forward_hook(self._write(layer)))

    def _read(self, layer: int) -> Callable[..., None]:
        def hook(_m: Any, args: tuple, kwargs: dict) -> None:
            self.inputs[layer] = args[0] if args else next(iter(kwargs.values()))
        return hook

    def _write(self, layer: int) -> Callable[..., Any]:
        def hook(_m: Any, _args: Any, out: Any) -> Any:
            value = out[0] if isinstance(out, tuple) else out
            if self.mode == "zero":
                new = torch.zeros_like(value)
            else:
                x = self.inputs.pop(layer)
                tc = self.tc
                acts = tc.encode(x.to(tc.b_enc.dtype), layer).acts
                if layer == 0:
                    self.acts = []
                self.acts.append(acts)
                recon = tc.decode_layer(torch.stack(self.acts, dim=-2), layer) + tc.skip_layer(x.to(tc.b_enc.dtype), layer)
                new = recon.to(value.dtype)
            new = torch.cat([value[:, :self.skip_first], new[:, self.skip_first:]], dim=1)
            return (new, *out[1:]) if isinstance(out, tuple) else new
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Recorder:
    """Hooks that record every layer's transcoder input and MLP write in an unmodified forward."""

    def __init__(self, model: Any, tc: Transcoder) -> None:
        self.x: dict[int, Tensor] = {}
        self.y: dict[int, Tensor] = {}
        self.handles = []
        for layer in range(tc.cfg.n_layers):
            reads, writes = _io_modules(model, tc.cfg.input_site, tc.cfg.output_site, layer)
            self.handles.append(reads.register_forward_pre_hook(
                lambda _m, a, kw, layer=layer: self.x.__setitem__(layer, a[0] if a else next(iter(kw.values()))),
                with_kwargs=True))
            self.handles.append(writes.register_forward_hook(
                lambda _m, _a, out, layer=layer: self.y.__setitem__(layer, out[0] if isinstance(out, tuple) else out)))

    def stacked(self, n: int) -> tuple[Tensor, Tensor]:
        return torch.stack([self.x[i] for i in range(n)], -2), torch.stack([self.y[i] for i in range(n)], -2)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _next_token_logprobs(logits: Tensor, skip_first: int) -> Tensor:
    """Log-probabilities ``[B, T - 1 - skip_first, vocab]`` for the positions that are scored."""
    return F.log_softmax(logits[:, skip_first:-1].float(), dim=-1)


@torch.no_grad()
def evaluate(model: Any, tc: Transcoder, corpus: Any = None, n_tokens: int = 16_384, *, seq_len: int = 128,
             batch_size: int = 8, seed: int = 0, split: str = "heldout", precision: Precision = "auto",
             skip_first: int = 1, token_batches: Iterator[Tensor] | None = None,
             progress: bool = True) -> Evaluation:
    """Evaluate ``tc`` on ``model`` over about ``n_tokens`` tokens of ``corpus``'s held-out split.

    ``corpus`` defaults to ``Corpus.packaged()``; ``token_batches`` (LongTensor ``[B, T]`` rows)
    replaces it. ``precision``: ``"auto"`` runs in bf16 only where the hardware runs it faster (as training
    does); see ``transcoders.precision``.
    """
    check_fits(tc, model)
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
    L, Fw = tc.cfg.n_layers, tc.cfg.d_features
    device = model.device
    sq_err = torch.zeros(L, dtype=torch.float64)
    sum_y = torch.zeros(L, tc.cfg.d_model, dtype=torch.float64)
    sum_y2 = torch.zeros(L, dtype=torch.float64)
    l0_sum = torch.zeros(L, dtype=torch.float64)
    fired = torch.zeros(L, Fw, dtype=torch.bool)
    ce = {"model": 0.0, "replaced": 0.0, "zero": 0.0}
    kl, n_scored, n_pairs = 0.0, 0, 0
    bar = tqdm(desc="evaluate", unit="tok", file=sys.stderr, disable=not progress, total=n_tokens, dynamic_ncols=True)
    for ids in token_batches:
        ids = ids.to(device)
        targets = ids[:, skip_first + 1:]
        with autocast(device, precision):
            rec = _Recorder(model, tc)
            try:
                logits = model.hf(ids).logits
            finally:
                rec.remove()
            x, y = rec.stacked(L)
            x, y = x[:, skip_first:].float(), y[:, skip_first:].float()
            check_finite(x.reshape(-1, L, x.shape[-1]), "transcoder inputs", "evaluate")
            out = tc(x.to(tc.b_enc.dtype))
        recon = out.recon.float()
        sq_err += (recon - y).square().sum(-1).flatten(0, -2).sum(0).double().cpu()
        sum_y += y.flatten(0, -3).sum(0).double().cpu()
        sum_y2 += y.square().sum(-1).flatten(0, -2).sum(0).double().cpu()
        active = (out.acts != 0).flatten(0, -3)
        l0_sum += active.sum(-1).sum(0).double().cpu()
        fired |= active.any(0).cpu()
        n_pairs += active.shape[0]

        lp_model = _next_token_logprobs(logits, skip_first)
        del logits
        ce["model"] += float(-lp_model.gather(-1, targets[..., None]).sum())
        for mode in ("replaced", "zero"):
            hooks = _Replacement(model, tc, mode, skip_first)
            try:
                with autocast(device, precision):
                    lp = _next_token_logprobs(model.hf(ids).logits, skip_first)
            finally:
                hooks.remove()
            ce[mode] += float(-lp.gather(-1, targets[..., None]).sum())
            if mode == "replaced":
                kl += float((lp_model.exp() * (lp_model - lp)).sum())
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
    }).set_index("layer")
    return Evaluation(layers, ce["model"] / n_scored, ce["replaced"] / n_scored, ce["zero"] / n_scored,
                      kl / n_scored, n_scored)
