"""Feature-level patching: edit features, errors and token embeddings in the replacement model.

The forward pass is the real model with hooks, as in ``circuits.attribution.replacement``: each
MLP slot writes its transcoder's output plus the error measured on the clean prompt. What this
module adds is *edits*, many sets per batched forward, one set per batch row: every edited value
becomes ``scale * value + add``. Ablation (``scale = 0``, ``add`` = zero, the mean over a
reference set, or the paired corrupted prompt's value), clamping (``scale = 0``) and steering
(``scale = 1`` or ``add = 0``) are all that one operation.

Two switches say which world the edits propagate through:

- ``freeze_attention``: True holds the clean prompt's attention patterns and norm scales (the
  linear world of the attribution graph); False recomputes them (circuit-tracer's intervention
  semantics). Errors are held at their clean values either way.
- ``features``: ``"recompute"`` runs every feature through its encoder and activation function
  on this pass's input, so features downstream of an edit respond, nonlinearity included;
  ``"linear"`` keeps the clean on/off mask (pre-activation times mask: with frozen attention this
  is exactly the graph's linear model); ``"frozen"`` holds every activation at its clean value,
  so an edit reaches others only directly (residual, attention, norms, the transcoder skip).

Nodes are named by the attribution graph's ids: ``F{layer}.{feature}@{pos}``, ``E{layer}@{pos}``,
``T@{pos}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from circuits.attribution.freeze import FrozenForward, freeze
from circuits.attribution.hooks import hooked, read_hook, write_hook
from circuits.attribution.replacement import MlpReplacement, as_compute, eval_mode, frozen_attention_hooks, replace_mlps
from circuits.models.adapter import Model
from circuits.models.arch import Location

FeatureMode = Literal["recompute", "linear", "frozen"]
AblationKind = Literal["zero", "mean", "resample"]
_OUT = Location("", "output", None)
_NODE = re.compile(r"^(?:F(\d+)\.(\d+)@(\d+)|E(\d+)@(\d+)|T@(\d+))$")


class PatchError(ValueError):
    """An edit names a node or a mode the replacement model does not have."""


@dataclass
class CleanState:
    """A prompt's clean replacement model, in the model's dtype and on its device: what edits start from."""

    model: Model
    transcoders: nn.Module
    """A compute copy of the transcoders (the caller's own module when dtype and device already match)."""
    frozen: FrozenForward
    mlps: MlpReplacement

    @classmethod
    @torch.no_grad()
    def of(cls, model: Model, transcoders: nn.Module, prompt: str | Sequence[int] | Tensor) -> CleanState:
        ids = model.tokenize(prompt)
        cfg = transcoders.cfg
        frozen = freeze(model, ids, input_site=cfg.input_site, output_site=cfg.output_site)
        tc = as_compute(transcoders, model.device, model.dtype)
        mlps = replace_mlps(tc, frozen, device=model.device, dtype=model.dtype)
        return cls(model, tc, frozen, mlps)

    @property
    def n_pos(self) -> int:
        return self.frozen.n_pos

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    @property
    def d_features(self) -> int:
        return int(self.transcoders.cfg.d_features)


# --- edits ---------------------------------------------------------------------------------


@dataclass
class Edits:
    """Edits to ``n_rows`` forward passes, flat: one entry per edited value, ``row`` says which pass.
    An edited value becomes ``scale * value + add``; edit each value at most once per row."""

    n_rows: int
    features: Tensor
    """``[n, 4]`` long: (row, layer, position, feature)."""
    feature_scale: Tensor
    """``[n]``."""
    feature_add: Tensor
    """``[n]``."""
    errors: Tensor
    """``[m, 3]`` long: (row, layer, position)."""
    error_scale: Tensor
    """``[m]``."""
    error_add: Tensor
    """``[m, d_model]``."""
    tokens: Tensor
    """``[k, 2]`` long: (row, position) of the residual stream entering layer 0."""
    token_scale: Tensor
    """``[k]``."""
    token_add: Tensor
    """``[k, d_model]``."""


class EditBuilder:
    """Collect edits row by row, then ``build()`` them into tensors."""

    def __init__(self, n_rows: int, d_model: int) -> None:
        self.n_rows, self.d_model = n_rows, d_model
        self._f: list[tuple[int, int, int, int, float, float]] = []
        self._e: list[tuple[int, int, int, float, Tensor | None]] = []
        self._t: list[tuple[int, int, float, Tensor | None]] = []

    def feature(self, row: int, layer: int, pos: int, feature: int, *, scale: float = 0.0, add: float = 0.0) -> None:
        self._f.append((row, layer, pos, feature, float(scale), float(add)))

    def error(self, row: int, layer: int, pos: int, *, scale: float = 0.0, add: Tensor | None = None) -> None:
        """``add``: ``[d_model]`` or None for zero."""
        self._e.append((row, layer, pos, float(scale), add))

    def token(self, row: int, pos: int, *, scale: float = 0.0, add: Tensor | None = None) -> None:
        """``add``: ``[d_model]`` or None for zero."""
        self._t.append((row, pos, float(scale), add))

    def build(self, device: torch.device, dtype: torch.dtype) -> Edits:
        def index(rows: list[tuple], width: int) -> Tensor:
            return torch.tensor([r[:width] for r in rows], dtype=torch.long, device=device).reshape(-1, width)

        def vectors(adds: list[Tensor | None]) -> Tensor:
            out = torch.zeros(len(adds), self.d_model, device=device, dtype=dtype)
            for i, a in enumerate(adds):
                if a is not None:
                    out[i] = a.to(device, dtype)
            return out

        def scalars(values: list[float]) -> Tensor:
            return torch.tensor(values, device=device, dtype=dtype)

        f, e, t = self._f, self._e, self._t
        return Edits(self.n_rows, index(f, 4), scalars([x[4] for x in f]), scalars([x[5] for x in f]),
                     index(e, 3), scalars([x[3] for x in e]), vectors([x[4] for x in e]),
                     index(t, 2), scalars([x[2] for x in t]), vectors([x[3] for x in t]))


def parse_node(node_id: str) -> tuple[str, int, int, int]:
    """A graph node id -> ``(kind, layer, position, feature)`` (-1 where the kind has none)."""
    m = _NODE.match(node_id)
    if m is None:
        raise PatchError(f"cannot patch node {node_id!r}: use a feature, error or token id of the attribution "
                         "graph, F{layer}.{feature}@{pos}, E{layer}@{pos} or T@{pos} (logits are not sources).")
    g = m.groups()
    if g[0] is not None:
        return "feature", int(g[0]), int(g[2]), int(g[1])
    if g[3] is not None:
        return "error", int(g[3]), int(g[4]), -1
    return "token", -1, int(g[5]), -1


# --- ablation values -----------------------------------------------------------------------


@dataclass
class AblationValues:
    """What each node of one prompt becomes when ablated."""

    acts: Tensor
    """``[n_pos, n_layers, d_features]``."""
    errors: Tensor
    """``[n_layers, n_pos, d_model]``."""
    embed: Tensor
    """``[n_pos, d_model]``."""


@torch.no_grad()
def ablation_values(clean: CleanState, kind: AblationKind = "zero", *,
                    reference: Sequence[str | Sequence[int] | Tensor] | None = None,
                    corrupted: str | Sequence[int] | Tensor | None = None) -> AblationValues:
    """Zero; the mean over every token of the ``reference`` prompts (per layer and feature, the same
    at every position, so prompts of any length count); or ``corrupted``'s own value at the same
    position (resample: the corrupted prompt must have as many tokens as the clean one)."""
    P, acts, errors, embed = clean.n_pos, clean.mlps.acts, clean.mlps.errors, clean.frozen.embed.to(clean.mlps.acts)
    if kind == "zero":
        return AblationValues(torch.zeros_like(acts), torch.zeros_like(errors), torch.zeros_like(embed))
    if kind == "resample":
        if corrupted is None:
            raise PatchError("resample ablation needs corrupted=: a prompt of the same length as the clean one")
        other = CleanState.of(clean.model, clean.transcoders, corrupted)
        if other.n_pos != P:
            raise PatchError(f"the corrupted prompt has {other.n_pos} tokens and the clean one {P}: resampling "
                             "pairs positions. Fix: pass a corrupted prompt of equal length (e.g. swap names).")
        return AblationValues(other.mlps.acts, other.mlps.errors, other.frozen.embed.to(acts))
    if kind == "mean":
        if not reference:
            raise PatchError("mean ablation needs reference=: a list of prompts to average over")
        states = [CleanState.of(clean.model, clean.transcoders, r) for r in reference]
        mean_acts = torch.cat([s.mlps.acts for s in states]).mean(0)                       # [L, F]
        mean_err = torch.cat([s.mlps.errors for s in states], dim=1).mean(1)               # [L, D]
        mean_embed = torch.cat([s.frozen.embed.to(acts) for s in states]).mean(0)         # [D]
        return AblationValues(mean_acts[None].expand(P, -1, -1), mean_err[:, None].expand(-1, P, -1),
                              mean_embed[None].expand(P, -1))
    raise PatchError(f"unknown ablation {kind!r}: use 'zero', 'mean' or 'resample'")


def ablation_edits(values: AblationValues, node_sets: Sequence[Iterable[str]]) -> Edits:
    """Row i ablates every node of ``node_sets[i]`` (graph ids) to ``values``."""
    P, L, F = values.acts.shape
    b = EditBuilder(len(node_sets), values.embed.shape[-1])
    for row, nodes in enumerate(node_sets):
        for node in nodes:
            kind, layer, pos, feat = parse_node(node)
            if pos >= P or layer >= L or feat >= F:
                raise PatchError(f"node {node} is out of range for this prompt's replacement model: "
                                 f"layers 0..{L - 1}, positions 0..{P - 1}, features 0..{F - 1}")
            if kind == "feature":
                b.feature(row, layer, pos, feat, add=float(values.acts[pos, layer, feat]))
            elif kind == "error":
                b.error(row, layer, pos, add=values.errors[layer, pos])
            else:
                b.token(row, pos, add=values.embed[pos])
    return b.build(values.embed.device, values.embed.dtype)


# --- the forward pass ------------------------------------------------------------------------


class PatchRun(NamedTuple):
    logits: Tensor
    """``[B, T, d_vocab]``."""
    final: Tensor
    """``[B, T, d_model]`` the final norm's output (what logit nodes read)."""
    mlp_in: Tensor
    """``[B, n_layers, T, d_model]`` each transcoder's input (what feature nodes read)."""
    acts: Tensor | None
    """``[B, T, n_layers, d_features]`` the activations the MLP slots wrote with (``keep_acts``)."""


def _check(clean: CleanState, edits: Edits, T: int) -> None:
    L, F = clean.n_layers, clean.d_features
    bounds = [("row", edits.features[:, 0], edits.n_rows), ("layer", edits.features[:, 1], L),
              ("position", edits.features[:, 2], T), ("feature", edits.features[:, 3], F),
              ("row", edits.errors[:, 0], edits.n_rows), ("layer", edits.errors[:, 1], L),
              ("position", edits.errors[:, 2], T), ("row", edits.tokens[:, 0], edits.n_rows),
              ("position", edits.tokens[:, 1], T)]
    for name, values, n in bounds:
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= n):
            raise PatchError(f"an edit's {name} is out of range: {name}s run 0..{n - 1}, got "
                             f"{int(values.min())}..{int(values.max())}. Fix: check the node ids.")


@torch.no_grad()
def patch_forward(clean: CleanState, edits: Edits | None = None, *, freeze_attention: bool = False,
                  features: FeatureMode = "recompute", ids: Tensor | None = None,
                  keep_acts: bool = False) -> PatchRun:
    """The replacement model of ``clean``'s prompt with ``edits``, one batch row per edit set.

    Args:
        freeze_attention, features: which world edits propagate through (module docstring).
        ids: ``[T]`` tokens to run instead of the prompt, starting with it (``T >= n_pos``; for
            generation). Positions past the prompt have no clean error: theirs is measured live
            (true MLP write minus the transcoders' unedited write), so an edit there adds the
            transcoders' change to the real MLP's output. Needs unfrozen attention and recompute.
        keep_acts: also return every activation (``B * T * n_layers * d_features`` numbers).
    """
    model, tc, frozen, mlps = clean.model, clean.transcoders, clean.frozen, clean.mlps
    spec, L, P = model.spec, clean.n_layers, clean.n_pos
    dev, dt = model.device, model.dtype
    ids = frozen.tokens if ids is None else torch.as_tensor(ids).reshape(-1)
    T = int(ids.shape[0])
    if T < P or not torch.equal(ids[:P].cpu(), frozen.tokens.cpu()):
        raise PatchError("ids= must start with the clean prompt's tokens (it extends the prompt, for generation)")
    if T > P and (freeze_attention or features != "recompute"):
        raise PatchError("positions past the prompt have no frozen attention or clean activations: run longer "
                         "sequences with freeze_attention=False and features='recompute'")
    if features not in ("recompute", "linear", "frozen"):
        raise PatchError(f"unknown features mode {features!r}: use 'recompute', 'linear' or 'frozen'")
    edits = edits if edits is not None else EditBuilder(1, model.d_model).build(dev, dt)
    _check(clean, edits, T)
    B = edits.n_rows
    by_layer = _split_by_layer(edits, L)

    seen_in: dict[int, Tensor] = {}
    used: dict[int, Tensor] = {}
    natural: dict[int, Tensor] = {}
    final: list[Tensor] = []
    handles = []
    if freeze_attention:
        handles += frozen_attention_hooks(model, frozen, model.device, model.dtype)
    handles.append(read_hook(model.norm("ln_final"), _OUT, final.append))
    if len(edits.tokens):
        def edit_embed(x: Tensor) -> Tensor:
            x = x.expand(B, -1, -1).clone()
            r, p = edits.tokens.T
            x[r, p] = edits.token_scale[:, None] * x[r, p] + edits.token_add
            return x
        handles.append(write_hook(model.module("resid_pre", 0), spec.location("resid_pre", 0), edit_embed))

    for layer in range(L):
        def keep_in(x: Tensor, layer: int = layer) -> None:
            seen_in[layer] = x

        def mlp_write(real: Tensor, layer: int = layer) -> Tensor:
            x = seen_in[layer].expand(B, -1, -1)
            if features == "frozen":
                acts = mlps.acts[None, :, layer].expand(B, -1, -1)
            else:
                pre = tc.pre_acts(x, layer)
                acts = pre * mlps.mask[None, :, layer] if features == "linear" else tc.activate(pre, layer)
            natural[layer] = acts
            r, p, f, scale, add = by_layer["features"][layer]
            if len(r):
                acts = acts.clone()
                acts[r, p, f] = scale * acts[r, p, f] + add
            used[layer] = acts
            err = mlps.errors[layer][None].expand(B, -1, -1)
            if T > P:  # live errors past the prompt: what the real MLP wrote beyond the unedited transcoders
                live = real.expand(B, -1, -1)[:, P:] - tc.output_at(x, natural, layer)[:, P:]
                err = torch.cat([err, live], dim=1)
            r, p, scale, add = by_layer["errors"][layer]
            if len(r):
                err = err.clone()
                err[r, p] = scale[:, None] * err[r, p] + add
            return tc.output_at(x, used, layer) + err

        in_loc, out_loc = spec.location(frozen.input_site, layer), spec.location(frozen.output_site, layer)
        handles.append(read_hook(model.module(frozen.input_site, layer), in_loc, keep_in))
        handles.append(write_hook(model.module(frozen.output_site, layer), out_loc, mlp_write))

    with eval_mode(tc), hooked(handles):
        logits = model.hf(ids[None].to(dev).expand(B, -1)).logits
    mlp_in = torch.stack([seen_in[l].expand(B, -1, -1) for l in range(L)], dim=1)
    acts = torch.stack([used[l] for l in range(L)], dim=2) if keep_acts else None
    return PatchRun(logits, final[-1], mlp_in, acts)


def _split_by_layer(edits: Edits, L: int) -> dict[str, list[tuple[Tensor, ...]]]:
    """Per layer, the feature edits ``(row, pos, feature, scale, add)`` and error edits ``(row, pos, scale, add)``."""
    out: dict[str, list[tuple[Tensor, ...]]] = {"features": [], "errors": []}
    for layer in range(L):
        f = edits.features[:, 1] == layer
        out["features"].append((edits.features[f, 0], edits.features[f, 2], edits.features[f, 3],
                                edits.feature_scale[f], edits.feature_add[f]))
        e = edits.errors[:, 1] == layer
        out["errors"].append((edits.errors[e, 0], edits.errors[e, 2], edits.error_scale[e], edits.error_add[e]))
    return out


# --- reading nodes ---------------------------------------------------------------------------


@torch.no_grad()
def feature_pre_acts(clean: CleanState, run: PatchRun, layer: Tensor, pos: Tensor, feature: Tensor) -> Tensor:
    """``[B, n]`` the encoder pre-activations of features ``(layer, pos, feature)`` (each ``[n]``) in ``run``."""
    tc = clean.transcoders
    x = run.mlp_in[:, layer, pos] * tc.input_scale[layer][None, :, None]     # [B, n, D]
    w = tc.W_enc[layer, :, feature]                                           # [n, D]
    return (x * w).sum(-1) + tc.b_enc[layer, feature]


def ablate(clean: CleanState, node_sets: Sequence[Iterable[str]], values: AblationValues | None = None, *,
           batch_size: int = 32, freeze_attention: bool = False, features: FeatureMode = "recompute") -> Tensor:
    """Last-position logits ``[len(node_sets), d_vocab]``, each with one node set ablated (default: to zero),
    ``batch_size`` sets per forward pass."""
    values = ablation_values(clean) if values is None else values
    out = []
    for start in range(0, len(node_sets), batch_size):
        edits = ablation_edits(values, node_sets[start:start + batch_size])
        run = patch_forward(clean, edits, freeze_attention=freeze_attention, features=features)
        out.append(run.logits[:, -1])
    return torch.cat(out) if out else clean.mlps.acts.new_zeros(0, clean.model.W_U.shape[0])
