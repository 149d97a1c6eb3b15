"""End-to-end fine-tuning of a transcoder set on what the model's output needs.

Training fits each layer's MLP output on its own. The graphs, though, explain the whole replacement
model (every MLP replaced, errors left out), whose mistakes compound from layer to layer. This
step lowers that model's next-token KL against the original directly, through the one forward
(``attention="live", features="recompute", errors="none"``, as ``evaluate`` runs it), with autograd
into the transcoders only: the model's weights stay frozen.

A reconstruction term (``recon_weight``; the training loss, FVU-like per layer) keeps every
feature's write close to what its MLP wrote, so that a graph still explains the model's MLPs and
not a different network that happens to end in the same logits.

What learns (``params``): by default only what the features *write* (decoders, ``b_dec``, the skip);
the encoders, which decide which features fire, stay as trained. Adam moves every weight it touches
by about the rate in the first steps whatever its gradient's size, and an encoder column's steps
all line up across its ``d_model`` inputs, so even a small rate shifts which features win the TopK;
on SmolLM2's long CLT, training everything at 1e-4 raised the held-out KL from 0.99 to 1.17
(BENCHMARKS.md). The rate warms up over the first tenth of the steps and decays linearly to zero
over the last half, as training's does.

The rate (``lr``) defaults by kind. One Adam step moves every decoder weight that has a gradient by
about the rate, and at a token all the active features' steps point the same way (the sign of that
token's output gradient), so a layer's write moves with the number of features writing to it: a
CLT's layer sums the writes of every layer below it. On SmolLM2's quick CLT (8k tokens, decoders):
1e-4 raised the held-out KL from 1.30 to 1.42, 3e-5 lowered it to 1.27, 1e-5 to 1.23; the PLT
had gained at 1e-4 (BENCHMARKS.md).

``precision="auto"`` runs the forward and backward under a bf16 autocast where bf16 is fast (a CPU with
AVX-512 BF16 or AMX, a GPU), as training does; the weights, their gradients and Adam stay in the
set's dtype, and the KL and reconstruction loss are taken in float32.

The set lives in ``transcoders``, but this runs the replacement model, so it lives here, beside
``evaluate`` (``transcoders`` never imports ``circuits``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits.models.adapter import Model
from circuits.replacement.evaluate import next_token_logprobs, token_kl
from circuits.replacement.forward import forward
from circuits.replacement.slots import check_feature_start
from transcoders.harvest import harvest_with_logits
from transcoders.io import check_fits
from transcoders.model import Transcoder
from transcoders.positions import FEATURE_START
from transcoders.precision import Precision, autocast
from transcoders.sparse import can_encode_active, reconstruct_active
from transcoders.train import adam, lr_schedule

Trained = Literal["decoders", "all"]
DEFAULT_LR = {"plt": 1e-4, "clt": 1e-5}  # module docstring


def learning_rate(tc: Transcoder, lr: float | None = None) -> float:
    """The peak rate ``finetune_kl`` uses: ``lr``, or ``DEFAULT_LR`` for the set's kind."""
    return DEFAULT_LR[tc.cfg.kind] if lr is None else lr


def finetune_kl(model: Model, tc: Transcoder, corpus: Any = None, n_tokens: int = 32_768, *, seq_len: int = 128,
                batch_size: int = 4, lr: float | None = None, recon_weight: float = 1.0, params: Trained = "decoders",
                seed: int = 0, feature_start: int = FEATURE_START, token_batches: Iterator[Tensor] | None = None,
                precision: Precision = "auto", progress: bool = True) -> list[float]:
    """Fine-tune ``tc`` in place on ``KL(model ‖ replacement) + recon_weight · reconstruction``.

    Args:
        corpus: a ``transcoders.Corpus`` (default the packaged text; its train split);
            ``token_batches`` (LongTensor ``[B, T]`` rows) replaces it.
        n_tokens: tokens in all; ``batch_size`` rows of ``seq_len`` per optimiser step.
        lr: Adam's peak learning rate; default ``DEFAULT_LR`` for the set's kind (``learning_rate``;
            small: the set is already trained; module docstring).
        recon_weight: weight of the layerwise reconstruction loss (0: KL only).
        params: ``"decoders"`` (what the features write: decoders, ``b_dec``, skip) or ``"all"``
            (the encoders too); module docstring.
        precision: ``"auto"`` (bf16 autocast where it is fast), ``"bf16"`` or ``"fp32"``; module docstring.

    Returns the KL (nats per scored token) of every step, before that step's update. ``tc`` is left
    in eval mode. The same seed and rows give the same weights.
    """
    check_fits(tc, model)
    start = check_feature_start(feature_start)
    if params not in ("decoders", "all"):
        raise ValueError(f"params must be 'decoders' or 'all', got {params!r}")
    if token_batches is None:
        if corpus is None:
            from transcoders.corpus import Corpus

            corpus = Corpus.packaged()
        token_batches = corpus.batches(model.tokenizer, seq_len=seq_len, batch_size=batch_size, split="train",
                                       seed=seed, max_tokens=n_tokens)
    batches = list(token_batches)  # token ids only; the schedule needs the number of steps
    if next(tc.parameters()).dtype != model.dtype:
        raise ValueError(f"the transcoders are {next(tc.parameters()).dtype} and the model {model.dtype}; "
                         "fine-tuning trains the set itself, so they must match. Fix: tc.to(model.dtype).")
    torch.manual_seed(seed)
    tc.eval()  # TopK per token, as the replacement model runs it
    frozen = [] if params == "all" else [p for p in tc.encoder_parameters() if p.requires_grad]
    for p in frozen:  # no gradient is computed for them at all, not only no step
        p.requires_grad_(False)
    try:
        return _run(model, tc, batches, start, learning_rate(tc, lr), recon_weight, precision, progress)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        tc.eval()


def _run(model: Model, tc: Transcoder, batches: list[Tensor], start: int, lr: float, recon_weight: float,
         precision: Precision, progress: bool) -> list[float]:
    """The optimisation loop of ``finetune_kl`` over its trainable parameters."""
    params = [p for p in tc.parameters() if p.requires_grad]
    opt = adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(len(batches), max(1, len(batches) // 10), 0.5))
    kls: list[float] = []
    bar = tqdm(desc="fine-tune KL", unit="tok", total=sum(b.numel() for b in batches), file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    for ids in batches:
        ids = ids.to(model.device)
        with torch.no_grad():
            x, y, logits = harvest_with_logits(model, ids, input_site=tc.cfg.input_site,
                                               output_site=tc.cfg.output_site, precision=precision, skip_first=start)
            lp_model = next_token_logprobs(logits, start)
        with autocast(model.device, precision):
            run = forward(model, tc, ids=ids, attention="live", features="recompute", errors="none",
                          feature_start=start, keep_inputs=False, grad=True)
            lp = next_token_logprobs(run.logits, start)
            kl = token_kl(lp_model, lp).mean()
            loss = kl
            if recon_weight:
                loss = loss + recon_weight * _reconstruction(tc, x.to(params[0].dtype), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        kls.append(float(kl.detach()))
        bar.update(ids.numel())
        bar.set_postfix(kl=f"{kls[-1]:.3f}", refresh=False)
    bar.close()
    return kls


def _reconstruction(tc: Transcoder, x: Tensor, y: Tensor) -> Tensor:
    """Each layer's squared error over its target's mean square, averaged over layers (scalar):
    every layer counts alike whatever its scale, as in training. ``x, y``: ``[N, n_layers, d_model]``.
    A TopK set runs training's active-entry kernels (``transcoders.sparse``); the dense decode was a
    quarter of a CLT's fine-tuning step."""
    if can_encode_active(tc):
        recon, target, _ = reconstruct_active(tc, x, y)  # [L, N, D], both in the same per-layer units
    else:
        recon, target = tc(x).recon.transpose(0, 1), y.transpose(0, 1)
    target = target.float()
    err = (recon.float() - target).square().mean((1, 2))  # [L]
    return (err / target.square().mean((1, 2)).clamp_min(1e-12)).mean()
