"""Edits to the replacement model: node ids, edit sets, and the ablated value of every node.

Nodes are named by the attribution graph's ids: ``F{layer}.{feature}@{pos}``, ``E{layer}@{pos}``,
``T@{pos}``. An edit sets a value to ``scale * value + add``: ablation (``scale = 0``, ``add`` =
the ablated value), clamping (``scale = 0``) and steering (``scale = 1`` or ``add = 0``) are all
that one operation, many edit sets per batched forward pass, one per batch row.

Ablated values follow the one definition of each ablation (``circuits.ablation``): zero; the mean
per position over reference prompts of the clean prompt's length (within template groups when
given); or the paired corrupted prompt's value at the same position (resample).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from circuits.ablation import position_means
from circuits.replacement.state import CleanState

AblationKind = Literal["zero", "mean", "resample"]
_NODE = re.compile(r"^(?:F(\d+)\.(\d+)@(\d+)|E(\d+)@(\d+)|T@(\d+))$")


class PatchError(ValueError):
    """An edit names a node or a mode the replacement model does not have."""


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
                    groups: Tensor | None = None, group: int = 0,
                    corrupted: str | Sequence[int] | Tensor | None = None) -> AblationValues:
    """What every node of ``clean``'s prompt becomes when ablated (``circuits.ablation``).

    - ``"zero"``;
    - ``"mean"``: the per-position mean over the ``reference`` prompts (each as long as the clean
      one); with ``groups`` (``[n_reference]`` template ids), the mean of group ``group`` only;
    - ``"resample"``: ``corrupted``'s own value at the same position (as long as the clean prompt).
    """
    acts, errors, embed = clean.mlps.acts, clean.mlps.errors, clean.frozen.embed.to(clean.mlps.acts)
    if kind == "zero":
        return AblationValues(torch.zeros_like(acts), torch.zeros_like(errors), torch.zeros_like(embed))
    if kind == "resample":
        if corrupted is None:
            raise PatchError("resample ablation needs corrupted=: a prompt of the same length as the clean one")
        other = _same_length(clean, [corrupted], "the corrupted prompt", "e.g. swap names")[0]
        return AblationValues(other.mlps.acts, other.mlps.errors, other.frozen.embed.to(acts))
    if kind == "mean":
        if not reference:
            raise PatchError("mean ablation needs reference=: a list of prompts, each as long as the clean one, "
                             "to average over per position")
        if groups is not None and (groups.shape != (len(reference),) or groups.dtype != torch.long):
            raise PatchError(f"groups must be [n_reference] = [{len(reference)}] int64 template ids, got "
                             f"{tuple(groups.shape)} {groups.dtype}")
        states = _same_length(clean, reference, "a reference prompt", "use prompts of one template")
        if groups is not None and not (groups == group).any():
            raise PatchError(f"no reference prompt is in group {group}. Fix: pass the clean prompt's template id as "
                             "group=, or leave groups=None for one mean over every reference prompt.")

        def mean(x: Tensor) -> Tensor:          # [n, ...] -> [...]: this group's per-position mean
            return position_means(x, groups)[group if groups is not None else 0]

        return AblationValues(mean(torch.stack([s.mlps.acts for s in states])),
                              mean(torch.stack([s.mlps.errors for s in states])),
                              mean(torch.stack([s.frozen.embed.to(acts) for s in states])))
    raise PatchError(f"unknown ablation {kind!r}: use 'zero', 'mean' or 'resample'")


def _same_length(clean: CleanState, prompts: Sequence[str | Sequence[int] | Tensor], what: str,
                 how: str) -> list[CleanState]:
    """The clean states of ``prompts``, which must each have as many tokens as ``clean``'s: ablated
    values pair positions."""
    out = []
    for p in prompts:
        state = CleanState.of(clean.model, clean.transcoders, p, feature_start=clean.feature_start)
        if state.n_pos != clean.n_pos:
            raise PatchError(f"{what} has {state.n_pos} tokens and the clean one {clean.n_pos}: ablated values pair "
                             f"positions. Fix: pass prompts of equal length ({how}).")
        out.append(state)
    return out


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
