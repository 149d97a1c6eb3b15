"""Train a PLT or CLT on a model's MLPs: ``train(model, TrainConfig(...))``.

One model forward per batch harvests every layer's (MLP input, MLP output) pair; the
pairs stream through a shuffle buffer (``transcoders.buffer``) into Adam. Inputs and
outputs are normalised per layer to unit scale (estimated from the first chunk) so
one learning rate and one sparsity coefficient fit every layer; the scales are folded
into the weights when the set is saved. Checkpoints are atomic and a killed run resumes
bit-identically. Under ``torchrun`` the objective is wrapped in DDP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from copy import deepcopy as copy_module
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from transcoders.activations import step_l0
from transcoders.allocator import keep_freed_memory
from transcoders.buffer import PairStream, StreamSpec
from transcoders.cache import cache_dir
from transcoders.checkpoint import load_checkpoint, save_checkpoint
from transcoders.distributed import all_reduce_mean, barrier, context
from transcoders.harvest import HarvestModel, NonFiniteError
from transcoders.model import Activation, Kind, Transcoder, TranscoderConfig, TranscoderOutput, build_transcoder
from transcoders.positions import FEATURE_START
from transcoders.precision import Precision, autocast, check_precision, use_bf16
from transcoders.sparse import can_encode_active, reconstruct_active, sparse_decode
from transcoders.warm_start import check_compatible, start_from_plt, weights_digest

Sparsity = Literal["tanh", "l0"]
log = logging.getLogger("transcoders.train")


@dataclass
class TrainConfig:
    """What to train and how. Token counts are totals over all ranks."""

    kind: Kind = "plt"
    d_features: int = 2048  # features per layer (the CLI's --width)
    activation: Activation = "batchtopk"
    k: int = 32  # features per token and layer, for topk / batchtopk
    l0: float | None = None  # JumpReLU: steer the sparsity coefficient to this L0 per layer
    sparsity: Sparsity = "l0"  # JumpReLU penalty: straight-through L0, or Anthropic's tanh
    sparsity_coeff: float = 1e-2  # its weight (the starting value when l0 is set)
    tanh_scale: float = 4.0  # c in tanh(c · act · ‖decoder‖)
    skip: bool = False  # learn a linear skip connection W_skip
    skip_init: Literal["zero", "lstsq"] = "zero"  # lstsq: start the skip (and b_dec) at the least-squares fit
    n_tokens: int = 1_000_000  # training pairs (tokens) in all
    seq_len: int = 128
    model_batch: int = 8  # rows per harvest forward
    chunk_batches: int = 16  # harvest forwards per shuffle-buffer chunk
    chunk_epochs: int = 1  # passes over each chunk
    batch_tokens: int = 1024  # pairs per optimiser step (per rank)
    lr: float | None = None  # default: 2e-4 · sqrt(2^14 / d_features), as in sparsify
    decoder_lr_scale: float = 1.0  # the decoders learn at lr times this (param_groups says why)
    # A CLT only: start from this PLT set's features (a preset, directory or hf://; transcoders.warm_start),
    # which train() is given as init; optionally with its encoders frozen, so only the decoders learn.
    init_from: str | None = None
    freeze_encoder: bool = False
    warmup_steps: int = 50
    decay_fraction: float = 0.2  # linear decay to zero over the last fraction of steps
    grad_clip: float = 1.0
    seed: int = 0
    precision: Precision = "auto"  # bf16 only where it runs faster (transcoders.precision)
    skip_first: int = FEATURE_START  # positions dropped from each row (the attention sink; transcoders.positions)
    dead_window: int = 200_000  # a feature silent for this many tokens counts as dead (display only)
    checkpoint_every: int = 200  # steps
    num_threads: int | None = None  # torch CPU threads (None: leave torch's default)
    input_site: str = "mlp_in"
    output_site: str = "mlp_resid"
    corpus_split: str = "train"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with the set

    def __post_init__(self) -> None:
        self.precision = check_precision(self.precision)
        if self.kind not in ("plt", "clt"):
            raise ValueError(f"kind must be 'plt' or 'clt', not {self.kind!r}.")
        if self.activation not in ("jumprelu", "topk", "batchtopk", "relu"):
            raise ValueError(f"activation must be jumprelu, topk, batchtopk or relu, not {self.activation!r}.")
        if self.activation in ("topk", "batchtopk") and not 0 < self.k <= self.d_features:
            raise ValueError(f"k={self.k} must be in 1..d_features={self.d_features}. Fix: pass --k within that.")
        if self.l0 is not None and self.activation != "jumprelu":
            raise ValueError("a target --l0 steers a JumpReLU's sparsity penalty; TopK sets L0 with --k. "
                             "Fix: pass --activation jumprelu with --l0, or use --k.")
        if self.skip_init not in ("zero", "lstsq"):
            raise ValueError(f"skip_init must be 'zero' or 'lstsq', not {self.skip_init!r}.")
        if self.skip_init == "lstsq" and not self.skip:
            raise ValueError("skip_init='lstsq' fits a skip connection, but skip is off. Fix: pass skip=True "
                             "(--skip), or skip_init='zero'.")
        if self.sparsity not in ("tanh", "l0"):
            raise ValueError(f"sparsity must be 'tanh' or 'l0', not {self.sparsity!r}.")
        if self.init_from is not None and self.kind != "clt":
            raise ValueError("init_from starts a CLT from a PLT's features, but kind is "
                             f"{self.kind!r}. Fix: pass kind='clt' (--kind clt), or leave init_from out.")
        if self.freeze_encoder and self.init_from is None:
            raise ValueError("freeze_encoder keeps the encoders as they start, which without init_from is at "
                             "random. Fix: pass init_from (--init-from SET), or leave freeze_encoder off.")
        if not self.decoder_lr_scale > 0:
            raise ValueError(f"decoder_lr_scale must be positive, not {self.decoder_lr_scale!r}. Fix: pass a "
                             "factor such as 0.25 (--decoder-lr-scale), or 1 for the same rate as the rest.")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-4 * math.sqrt(2**14 / self.d_features)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Fields that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = ("checkpoint_every", "num_threads")
# Fields added after runs existed, with the value that reproduces the behaviour from before them: at
# that value they are left out of run names and checkpoints, so earlier runs keep their folders and resume.
ADDED_FIELDS = {"skip_init": "zero", "decoder_lr_scale": 1.0, "init_from": None, "freeze_encoder": False}


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as runs record and compare it (``ADDED_FIELDS`` at their old behaviour left out)."""
    return {k: v for k, v in cfg.to_dict().items() if not (k in ADDED_FIELDS and ADDED_FIELDS[k] == v)}


class StepStats(NamedTuple):
    loss: Tensor
    """Total loss (scalar)."""
    fvu: Tensor
    """Fraction of variance unexplained per layer ``[n_layers]``."""
    l0: Tensor
    """Mean active features per token per layer ``[n_layers]``."""
    fired: Tensor
    """Whether each feature fired in this batch ``[n_layers, d_features]``."""


class Objective(nn.Module):
    """The training loss as a module, so DDP sees every parameter use inside ``forward``."""

    def __init__(self, tc: Transcoder, cfg: TrainConfig) -> None:
        super().__init__()
        self.tc, self.cfg = tc, cfg

    def forward(self, x: Tensor, y: Tensor, coeff: Tensor) -> StepStats:
        """``x, y``: ``[batch, n_layers, d_model]`` model units; ``coeff``: the sparsity weight."""
        tc, cfg = self.tc, self.cfg
        if can_encode_active(tc):
            # TopK: the [N, L, F] activations are never built, forward or backward, and the loss is
            # taken layer-major in normalised units, the layout the sparse kernels and the skip's
            # batched product use (transcoders.sparse). The same loss and gradients as below.
            recon, target, entries = reconstruct_active(tc, x, y)  # [L, N, D]
            return _loss(recon, target, 1, entries.l0(x.shape[0]).to(x.device), entries.fired(tc.d_features))
        pre, acts = tc.encode(x)
        # JumpReLU's threshold learns from inactive features near it, whose gradient only a dense decode gives.
        decoded = tc.decode(acts) if cfg.activation == "jumprelu" else sparse_decode(tc, acts)
        out = TranscoderOutput(acts, pre, decoded + tc.skip(x))
        active = out.acts != 0
        penalty = None
        if cfg.activation == "jumprelu":
            if cfg.sparsity == "l0":
                penalty = step_l0(out.pre_acts.float(), tc.threshold, tc.cfg.jumprelu_bandwidth).sum(-1).mean()
            else:
                norms = decoder_norms(tc)  # [L, F]
                penalty = torch.tanh(cfg.tanh_scale * out.acts.float() * norms).sum(-1).mean()
        with torch.no_grad():
            l0, fired = active.sum(-1).float().mean(0), active.any(0)
        # Errors in normalised units: every layer counts alike whatever its scale.
        s_out = tc.output_scale[:, None]
        stats = _loss(out.recon * s_out, y * s_out, 0, l0, fired)
        return stats if penalty is None else stats._replace(loss=stats.loss + coeff * penalty)


def _loss(recon: Tensor, target: Tensor, token_dim: int, l0: Tensor, fired: Tensor) -> StepStats:
    """The reconstruction loss of ``recon`` against ``target`` (normalised units, ``[N, L, D]`` with
    ``token_dim`` 0 or ``[L, N, D]`` with 1), with the batch's ``l0 [L]`` and ``fired [L, F]``."""
    # At least float32: a bf16 error's square would round away the small errors late training sees.
    dtype = torch.promote_types(recon.dtype, torch.float32)
    target = target.to(dtype)
    # d * d, not d.square(): square() ran 6x slower on a CPU (torch 2.13; 10.6 against 1.7 ms for [30, 256, 576]).
    diff = recon.to(dtype) - target
    sq = (diff * diff).sum(-1)  # [N, L] or [L, N]
    loss = sq.mean() / recon.shape[-1]  # ≈ FVU: targets have unit mean square per component
    with torch.no_grad():
        centred = target - target.mean(token_dim, keepdim=True)
        var = (centred * centred).sum(-1)
        fvu = sq.sum(token_dim) / var.sum(token_dim).clamp_min(1e-12)
    return StepStats(loss, fvu, l0, fired)


def decoder_norms(tc: Transcoder) -> Tensor:
    """Norm of each feature's whole decoder (over every layer it writes to), ``[n_layers, d_features]``."""
    if tc.cfg.kind == "plt":
        return tc.W_dec.norm(dim=-1)
    return torch.stack([w.flatten(1).norm(dim=-1) for w in tc.W_dec])


def adam(params: Iterable[nn.Parameter] | list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where torch has one for the device: on a CPU it updates a CLT's
    300M parameters 7× faster than the per-tensor loop (benchmarks/transcoders.py), which made the
    optimiser step a sixth of a CLT's training step. Its state dict is the same either way.
    ``params``: parameters, or groups of them as ``param_groups`` gives."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.Adam(params, lr=lr)


def param_groups(tc: Transcoder, cfg: TrainConfig) -> list[nn.Parameter] | list[dict[str, Any]]:
    """What Adam updates: every trainable parameter at ``cfg.learning_rate``, the decoders at
    ``cfg.decoder_lr_scale`` times it.

    Why a CLT's decoders want a smaller rate: layer t's output sums the decoders of t + 1 source layers,
    and one Adam step moves each weight by about the rate whatever its gradient's size, so a step moves
    that output about sqrt(t + 1) times as far as a PLT's (if the sources' updates are independent):
    3.7x on average over SmolLM2's 30 layers. At a quarter of the rate the no-skip CLT's graphs scored
    higher at the same tokens (replacement 0.522 against 0.498) and its held-out KL worse (2.46 against
    2.24; BENCHMARKS.md). At 1 (the default) this is the plain parameter list, so runs and checkpoints
    from before it are unchanged.
    """
    params = [p for p in tc.parameters() if p.requires_grad]
    if cfg.decoder_lr_scale == 1.0:
        return params
    decoders = list(tc.W_dec) if isinstance(tc.W_dec, nn.ParameterList) else [tc.W_dec]
    ids = {id(p) for p in decoders}
    return [{"params": [p for p in params if id(p) not in ids]},
            {"params": decoders, "lr": cfg.learning_rate * cfg.decoder_lr_scale}]


def freeze(tc: Transcoder, cfg: TrainConfig) -> None:
    """Stop the encoders learning when ``cfg.freeze_encoder`` says so (a CLT started from a PLT's
    features): Adam then skips them, and the decode skips the values' gradient (transcoders.sparse)."""
    if cfg.freeze_encoder:
        for p in tc.encoder_parameters():
            p.requires_grad_(False)


def _clock(began: float, cpu_began: float, prefix: str = "") -> dict[str, float]:
    """Training time so far: wall seconds, and CPU seconds of this process (steadier on a shared machine)."""
    return {f"{prefix}seconds": time.perf_counter() - began, f"{prefix}cpu_seconds": time.process_time() - cpu_began}


def _snapshot(tc: Transcoder, where: Path, metadata: dict[str, Any]) -> None:
    """Save a folded copy of ``tc`` (training goes on with the original) unless one is there."""
    if (where / "config.yaml").is_file():
        return
    from transcoders.io import save_transcoders

    copy = copy_module(tc).eval()
    copy.fold_normalisation()
    save_transcoders(copy, where, metadata=metadata)


def run_name(model_name: str, cfg: TrainConfig, text: str | None = None, init: str | None = None) -> str:
    """A readable run-directory name with a hash of everything that changes the result.

    ``text``: the corpus's ``identity()``; None (the packaged default) leaves it out of the hash.
    ``init``: the starting set's ``weights_digest`` (``cfg.init_from`` only names it).
    """
    keyed = {k: v for k, v in config_record(cfg).items() if k not in RESUMABLE_CHANGES}
    if text is not None:
        keyed["text"] = text
    if init is not None:
        keyed["init"] = init
    digest = hashlib.sha256(json.dumps([model_name, keyed], sort_keys=True, default=str).encode()).hexdigest()[:10]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_name.split("/")[-1].lower())
    return f"{slug}-{cfg.kind}-{cfg.activation}-w{cfg.d_features}-{digest}"


def lr_schedule(total: int, warmup_steps: int, decay_fraction: float) -> Callable[[int], float]:
    """The learning rate's factor at each of ``total`` steps (for ``LambdaLR``): a linear warm-up over
    ``warmup_steps``, flat, then a linear decay to zero over the last ``decay_fraction`` of the steps."""
    decay_start = int(total * (1 - decay_fraction))

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, warmup_steps))
        decay = 1.0 if step < decay_start else max(0.0, (total - step) / max(1, total - decay_start))
        return warm * decay

    return factor


@torch.no_grad()
def _init_normalisation(tc: Transcoder, x: Tensor, y: Tensor) -> None:
    """Per-layer scales to unit RMS, from ``x, y [N, n_layers, d_model]`` (averaged over ranks),
    and the decoder bias at the mean output, where an untrained transcoder should start."""
    ms_x = all_reduce_mean(x.float().square().mean(dim=(0, 2)))
    ms_y = all_reduce_mean(y.float().square().mean(dim=(0, 2)))
    if (ms_x <= 0).any() or (ms_y <= 0).any():
        dead = ((ms_x <= 0) | (ms_y <= 0)).nonzero().flatten().tolist()
        raise ValueError(f"layers {dead} have all-zero MLP inputs or outputs, so they cannot be normalised. "
                         "Fix: check the model (a zeroed MLP?) or the harvest sites.")
    tc.input_scale.copy_(ms_x.rsqrt())
    tc.output_scale.copy_(ms_y.rsqrt())
    tc.b_dec.copy_(all_reduce_mean(y.float().mean(0)) * tc.output_scale[:, None])


@torch.no_grad()
def _fit_skip(tc: Transcoder, x: Tensor, y: Tensor, ridge: float = 1e-3) -> Tensor:
    """Start the skip and the decoder bias at each layer's least-squares affine map from MLP input to
    output (normalised units; the first chunk, ``x, y [N, n_layers, d_model]``), so that the features
    learn only what no linear map can. Returns the variance the fit leaves, per layer ``[n_layers]``.

    ``ridge`` (relative to the mean eigenvalue) keeps the solve stable when a chunk is small."""
    assert tc.W_skip is not None
    fvu = torch.zeros(tc.n_layers)
    for layer in range(tc.n_layers):  # one layer at a time: float64 copies of a whole chunk would be GBs
        xn = x[:, layer].double() * float(tc.input_scale[layer])  # [N, D]
        yn = y[:, layer].double() * float(tc.output_scale[layer])
        mx, my = all_reduce_mean(xn.mean(0)), all_reduce_mean(yn.mean(0))  # [D]
        xc, yc = xn - mx, yn - my
        xtx, xty = all_reduce_mean(xc.T @ xc), all_reduce_mean(xc.T @ yc)  # [D, D]
        xtx += ridge * xtx.diagonal().mean() * torch.eye(xtx.shape[0], dtype=xtx.dtype)
        W = torch.linalg.solve(xtx, xty)
        tc.W_skip[layer].copy_(W)
        tc.b_dec[layer].copy_(my - mx @ W)
        fvu[layer] = float((yc - xc @ W).square().sum() / yc.square().sum().clamp_min(1e-12))
    return fvu


def _token_batches(model: HarvestModel, corpus: Any, cfg: TrainConfig) -> tuple[Callable[[], Iterator[Tensor]],
                                                                               str | None]:
    """The batches factory and the text's identity (``Corpus.identity``: None for the packaged default)."""
    if corpus is None:
        from transcoders.corpus import Corpus

        corpus = Corpus.packaged()
    return (lambda: corpus.batches(model.tokenizer, seq_len=cfg.seq_len, batch_size=cfg.model_batch,
                                   split=cfg.corpus_split, seed=cfg.seed, epochs=None)), corpus.identity()


def train(model: HarvestModel, cfg: TrainConfig, *, corpus: Any = None, run_dir: str | Path | None = None,
          save_dir: str | Path | None = None, token_batches: Callable[[], Iterator[Tensor]] | None = None,
          callback: Callable[[int, StepStats], None] | None = None, progress: bool = True,
          save_at: Sequence[int] = (), init: Transcoder | None = None,
          metadata: dict[str, Any] | None = None) -> Transcoder:
    """Train a transcoder set for ``model``; resume from ``run_dir`` when it holds a checkpoint.

    Args:
        model: a ``circuits`` model (or anything with ``dims``, ``name``, ``tokenizer``, ``device``
            and ``record_batch``).
        corpus: a ``transcoders.Corpus``; default ``Corpus.packaged()``.
        run_dir: where checkpoints go; default ``cache_dir("transcoders", "runs", run_name(...))``.
        save_dir: if given, the finished set is saved there in circuit-tracer's format.
        token_batches: a factory of deterministic LongTensor ``[B, T]`` iterators, instead of a corpus.
        callback: called as ``callback(step, stats)`` after every step (and its checkpoint).
        save_at: token counts at which to also save the set as it stands, to ``run_dir/tokens-N``
            (circuit-tracer's format; its metadata holds ``tokens``, ``steps``, ``train_seconds`` and
            ``train_cpu_seconds``, the time spent training so far, resumed runs included). One run then gives a
            quality-against-budget curve; each snapshot is taken at the learning rate of that moment,
            not after a decay of its own.
        init: the PLT set ``cfg.init_from`` names, loaded (``transcoders.load_transcoders``); a new run
            starts from its features (``transcoders.warm_start``). Its weights are part of the run's name.
        metadata: more to save with the set (``transcoders train`` records the init's training time).

    Returns the trained transcoder in eval mode with its normalisation folded into the weights.
    """
    dctx = context()
    t_start, c_start = time.perf_counter(), time.process_time()
    device = model.device
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    keep_freed_memory()  # every step frees and allocates tens of MB (transcoders.allocator)
    n_layers, d_model = model.dims.n_layers, model.dims.d_model
    per_step = cfg.batch_tokens * dctx.world
    total = cfg.n_tokens // per_step
    if total < 1:
        raise ValueError(f"n_tokens={cfg.n_tokens} is less than one step ({per_step} tokens over {dctx.world} "
                         "rank(s)). Fix: raise n_tokens or lower batch_tokens.")
    past = sorted(int(m) for m in save_at if not 0 < int(m) <= cfg.n_tokens)
    if past:  # before any harvest: a snapshot the run never reaches would be missing without a word
        raise ValueError(f"save_at {past} lies outside this run's 1..{cfg.n_tokens:,} tokens (n_tokens), so no "
                         "snapshot would be saved there. Fix: raise n_tokens to the largest budget, or drop them.")
    if (cfg.init_from is None) != (init is None):
        raise ValueError(f"init_from={cfg.init_from!r} names the set a CLT starts from, and train() needs it loaded as "
                         "init, or neither. Fix: pass init=load_transcoders(model, cfg.init_from), or use "
                         "`transcoders train --init-from SET`.")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    tc_cfg = TranscoderConfig(kind=cfg.kind, n_layers=n_layers, d_model=d_model, d_features=cfg.d_features,
                              activation=cfg.activation, k=cfg.k, skip=cfg.skip, model_name=model.name,
                              input_site=cfg.input_site, output_site=cfg.output_site)
    tc = build_transcoder(tc_cfg).to(device).train()
    if init is not None:
        check_compatible(tc, init)  # before harvesting anything
    freeze(tc, cfg)  # before the optimiser is built: it takes only what learns

    spec = StreamSpec(cfg.chunk_batches, cfg.model_batch * (cfg.seq_len - cfg.skip_first), cfg.batch_tokens,
                      cfg.chunk_epochs)
    # The text is part of a run's identity: the same recipe on other text must not resume this run.
    text: str | None = None
    if token_batches is None:
        token_batches, text = _token_batches(model, corpus, cfg)
    stream = PairStream(model, token_batches, spec, seed=cfg.seed,
                        rank=dctx.rank, world=dctx.world, input_site=cfg.input_site, output_site=cfg.output_site,
                        precision=cfg.precision, skip_first=cfg.skip_first)
    run_dir = Path(run_dir) if run_dir is not None else cache_dir("transcoders", "runs", run_name(
        model.name, cfg, text, weights_digest(init) if init is not None else None))
    cfg_dict = {**config_record(cfg), "model_name": model.name, "world": dctx.world, **({"text": text} if text else {})}

    opt = adam(param_groups(tc, cfg), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(total, cfg.warmup_steps, cfg.decay_fraction))
    log_coeff = torch.tensor(math.log(cfg.sparsity_coeff))
    last_fired = torch.zeros(n_layers, cfg.d_features, dtype=torch.long)
    start, tokens, seconds, cpu_seconds = 0, 0, 0.0, 0.0

    state = load_checkpoint(run_dir, cfg_dict, RESUMABLE_CHANGES)
    if state is not None:
        tc.load_state_dict(state["transcoder"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        log_coeff = state["log_coeff"]
        last_fired = state["last_fired"]
        start, tokens = state["step"], state["tokens"]
        seconds, cpu_seconds = float(state.get("seconds", 0.0)), float(state.get("cpu_seconds", 0.0))
        batches = stream.iterate(start)
    else:
        x0, y0 = stream.chunk(0)
        _init_normalisation(tc, x0, y0)
        if init is not None:
            # init stays where the caller keeps it: start_from_plt copies each tensor across devices.
            start_from_plt(tc, init)  # type: ignore[arg-type]  # a CLT: check_compatible said so
        if cfg.skip_init == "lstsq":
            fvu = _fit_skip(tc, x0, y0)
            log.info("least-squares skip: FVU %.3f (mean over layers) before any feature", float(fvu.mean()))
        batches = stream.iterate(0, first=(x0, y0))
        del x0, y0

    objective: nn.Module = Objective(tc, cfg)
    if dctx.active:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    milestones = sorted(int(m) for m in save_at)
    began, cpu_began = t_start - seconds, c_start - cpu_seconds  # harvesting the first chunk counts
    bar = tqdm(total=total, initial=start, desc=f"train {cfg.kind}", unit="step", file=sys.stderr,
               disable=not progress or not dctx.is_main, dynamic_ncols=True)
    for step in range(start, total):
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        with autocast(device, cfg.precision):
            stats: StepStats = objective(x, y, log_coeff.exp().to(device))
        if not torch.isfinite(stats.loss):
            raise NonFiniteError(
                f"the training loss became {float(stats.loss)} at step {step}. Fix: lower the learning rate "
                f"(now {cfg.learning_rate:.2e}), or train in float32 (--precision fp32).")
        opt.zero_grad(set_to_none=True)
        stats.loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(tc.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        tokens += per_step
        l0 = all_reduce_mean(stats.l0.float().cpu())
        fvu = all_reduce_mean(stats.fvu.float().cpu())
        last_fired[stats.fired.cpu()] = tokens
        if cfg.l0 is not None:
            # An integral controller: raise the penalty while L0 is above target, lower it below.
            log_coeff = log_coeff + 0.05 * ((l0.mean() / cfg.l0) - 1).clamp(-1, 1)
        # The last step reaches every budget up to n_tokens: a run of whole batches can end just short
        # of it (150k tokens in batches of 512 stop at 149,504), and its snapshot must not be lost.
        reach = max(tokens, cfg.n_tokens) if step + 1 == total else tokens
        crossed = [m for m in milestones if tokens - per_step < m <= reach]
        # A snapshot's step is checkpointed first (which also makes the run folder the engine's).
        if crossed or (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            if dctx.is_main:
                save_checkpoint(run_dir, {
                    "step": step + 1, "tokens": tokens, **_clock(began, cpu_began),
                    "transcoder": tc.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "log_coeff": log_coeff,
                    "last_fired": last_fired, "train_config": cfg_dict, "transcoder_config": tc_cfg.to_dict(),
                })
            barrier()
        if dctx.is_main:
            for m in crossed:
                _snapshot(tc, run_dir / f"tokens-{m}", {"train_config": cfg_dict, "steps": step + 1, "tokens": tokens,
                                                        **_clock(began, cpu_began, prefix="train_"), **(metadata or {})})
        # Dead: silent for the last dead_window tokens (early on: never fired yet).
        dead = (last_fired <= tokens - min(cfg.dead_window, tokens)).float().mean()
        bar.set_postfix(fvu=f"{fvu.mean():.3f}", l0=f"{l0.mean():.1f}", dead=f"{dead:.3f}", refresh=False)
        bar.update(1)
        if callback is not None:
            callback(step + 1, stats._replace(fvu=fvu, l0=l0))
    bar.close()

    tc.eval()
    tc.fold_normalisation()
    tc.cfg.model_name = model.name
    if save_dir is not None and dctx.is_main:
        from transcoders.io import save_transcoders

        # "auto" depends on the machine, so the set records what its training actually ran in.
        ran_in = "bf16" if use_bf16(device, cfg.precision) else "fp32"
        save_transcoders(tc, save_dir, metadata={"train_config": cfg_dict, "steps": total, "tokens": tokens,
                                                 "trained_in": ran_in, **_clock(began, cpu_began, prefix="train_"),
                                                 **(metadata or {})})
    barrier()
    return tc
