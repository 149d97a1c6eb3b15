"""What a graph explains: its targets, read at the last position after the last layer.

``trace(prompt, targets=...)`` takes any of these, alone or in a list:

- a token, as a string (``" Mary"``, exactly one token) or an id: its logit minus the mean logit;
- a logit difference: a tuple ``(" Mary", " John")`` or ``LogitDiff(" Mary", " John")`` ("why Mary
  rather than John"); the mean logit cancels;
- a named residual direction, ``Direction("probe", vec)``: ``vec [d_model] · r`` where ``r`` is the
  residual stream leaving the last layer (before the final norm), at the last position.

A tuple is always one logit difference; several targets come as a list. Without ``targets`` the
graph explains the salient logits (``salient_logits``). Every target is a ``logit`` node of the graph:
token targets carry their vocabulary id, the others the ids ``-2, -3, …`` (no vocabulary id is
negative, and ``-1`` means "none" in the node table), so node ids stay unique.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from circuits.attribution.attribute import Targets, logit_targets
from circuits.attribution.residual_map import ResidualMap
from circuits.models.adapter import Model
from circuits.replacement import demeaned_unembedding, salient_logits


@dataclass(frozen=True)
class LogitDiff:
    """The logit of ``plus`` minus the logit of ``minus`` (token strings or ids)."""

    plus: str | int
    minus: str | int


@dataclass(frozen=True, eq=False)
class Direction:
    """A named direction ``vec [d_model]`` (a probe's weight) read from the residual stream leaving the
    last layer, before the final norm, at the last position."""

    name: str
    vec: Any
    """``[d_model]`` numpy array, tensor or sequence of floats."""


TargetSpec = Union[str, int, tuple, LogitDiff, Direction]


@dataclass
class ChosenTargets:
    """The targets of one trace, in node order."""

    token_ids: Tensor
    """``[n]`` long on the CPU: a token target's vocabulary id; ``-2 - i`` for the i-th target when it is a
    difference or a direction (so every logit node id, ``L{token_id}``, stays unique)."""
    texts: list[str]
    """``[n]`` what each logit node shows: the token, ``" Mary" − " John"``, or the direction's name."""
    probs: Tensor
    """``[n]`` float64: the weight influence is measured against: the probability of a token, of a
    difference's ``plus`` token; 1 for a direction."""
    kinds: list[str]
    """``[n]`` ``"token"``, ``"logit_diff"`` or ``"direction"``."""
    u: Tensor
    """``[n, D]`` read-out rows: de-meaned unembedding (or a difference of two) for logit targets, the
    direction itself for directions."""
    u_bias: Tensor | None
    """``[n]`` the unembedding bias read the same way (zero for directions); None without one."""
    through_norm: Tensor
    """``[n]`` bool: read through the frozen final norm (logit targets) or not (directions)."""
    chosen: bool
    """Whether the user chose them (else they are the salient logits)."""

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self) -> list[dict[str, Any]]:
        """JSON-able facts for the graph's metadata."""
        return [{"kind": k, "text": t, "token_id": int(i)} for k, t, i in zip(self.kinds, self.texts, self.token_ids)]

    def targets(self, rmap: ResidualMap, n_pos: int) -> Targets:
        """Attribution targets: logit rows folded through the frozen final norm, directions read raw."""
        through = self.through_norm.to(self.u.device)
        folded = logit_targets(rmap, self.u, self.u_bias, n_pos)
        vec = torch.where(through[:, None], folded.vec, self.u)
        const = torch.where(through, folded.const, torch.zeros_like(folded.const))
        return Targets(folded.layer, folded.pos, vec, const)

    def values(self, final: Tensor, resid: Tensor | None) -> Tensor:
        """``[n]`` each target's value, from the final norm's output ``final [D]`` and the residual stream
        leaving the last layer ``resid [D]`` (needed only for directions) at the last position."""
        out = self.u @ final.to(self.u) + (0.0 if self.u_bias is None else self.u_bias)
        if bool((~self.through_norm).any()):
            if resid is None:
                raise ValueError("direction targets need the residual stream leaving the last layer")
            out = torch.where(self.through_norm.to(out.device), out, self.u @ resid.to(self.u))
        return out


def choose_targets(model: Model, targets: TargetSpec | Sequence[TargetSpec] | None, logits: Tensor, *,
                   max_logits: int, logit_prob: float, device: torch.device, dtype: torch.dtype) -> ChosenTargets:
    """Resolve ``targets`` (module docstring) against ``model``; ``logits [d_vocab]`` at the last position."""
    if targets is None:
        ids, probs = salient_logits(logits, max_logits, logit_prob)
        u, u_bias = demeaned_unembedding(model, ids, device, dtype)
        texts = [model.tokenizer.decode([int(i)]) for i in ids]
        return ChosenTargets(ids, texts, probs, ["token"] * len(ids), u, u_bias,
                             torch.ones(len(ids), dtype=torch.bool), chosen=False)
    specs = [targets] if isinstance(targets, (str, int, tuple, LogitDiff, Direction)) else list(targets)
    if not specs:
        raise ValueError("targets is empty. Fix: pass at least one target, or targets=None for the salient logits")
    probs_all = logits.double().softmax(-1).cpu()
    D = model.d_model
    ids, texts, probs, kinds, rows, biases, through = [], [], [], [], [], [], []
    names: set[str] = set()
    for spec in specs:
        if isinstance(spec, tuple):
            if len(spec) != 2:
                raise ValueError(f"a tuple target is a logit difference (plus, minus), got {spec!r}. Fix: pass "
                                 "(\" Mary\", \" John\"), or a list for several targets")
            spec = LogitDiff(*spec)
        if isinstance(spec, (str, int)) and not isinstance(spec, bool):
            tok = _token(model, spec)
            u, b = demeaned_unembedding(model, torch.tensor([tok]), device, dtype)
            ids.append(tok), texts.append(model.tokenizer.decode([tok])), probs.append(float(probs_all[tok]))
            kinds.append("token"), rows.append(u[0]), biases.append(None if b is None else b[0]), through.append(True)
        elif isinstance(spec, LogitDiff):
            plus, minus = _token(model, spec.plus), _token(model, spec.minus)
            if plus == minus:
                raise ValueError(f"the logit difference {spec} compares a token with itself. Fix: pick two tokens")
            u, b = demeaned_unembedding(model, torch.tensor([plus, minus]), device, dtype)
            dec = model.tokenizer.decode
            ids.append(-2 - len(ids)), texts.append(f"{dec([plus])!r} − {dec([minus])!r}")
            probs.append(float(probs_all[plus])), kinds.append("logit_diff"), rows.append(u[0] - u[1])
            biases.append(None if b is None else b[0] - b[1]), through.append(True)
        elif isinstance(spec, Direction):
            vec = torch.as_tensor(np.asarray(spec.vec, dtype=np.float64)).reshape(-1)
            if vec.shape[0] != D:
                raise ValueError(f"direction {spec.name!r} has {vec.shape[0]} entries but the model's residual "
                                 f"stream has {D}. Fix: pass a [d_model] = [{D}] vector")
            if not torch.isfinite(vec).all():
                raise ValueError(f"direction {spec.name!r} has NaN or infinite entries. Fix: pass a finite vector")
            ids.append(-2 - len(ids)), texts.append(str(spec.name)), probs.append(1.0), kinds.append("direction")
            rows.append(vec.to(device, dtype)), biases.append(None), through.append(False)
        else:
            raise TypeError(f"cannot use {spec!r} as a target. Fix: pass a token string or id, a (plus, minus) "
                            "tuple or LogitDiff, or Direction(name, vec)")
        if texts[-1] in names:
            raise ValueError(f"target {texts[-1]!r} is given twice. Fix: name each target once")
        names.add(texts[-1])
    has_bias = any(b is not None for b in biases)
    u_bias = torch.stack([b if b is not None else torch.zeros((), device=device, dtype=dtype) for b in biases]) \
        if has_bias else None
    return ChosenTargets(torch.tensor(ids, dtype=torch.long), texts, torch.tensor(probs, dtype=torch.float64), kinds,
                         torch.stack(rows), u_bias, torch.tensor(through), chosen=True)


def _token(model: Model, spec: str | int) -> int:
    """A token id from a single-token string or an id in the vocabulary."""
    if isinstance(spec, str):
        try:
            return int(model.token_id(spec))
        except ValueError as exc:
            raise ValueError(f"target {spec!r}: {exc}. Fix: pass a string that is one token (mind the leading "
                             "space), or a token id") from exc
    n_vocab = int(model.W_U.shape[0])
    if not 0 <= int(spec) < n_vocab:
        raise ValueError(f"target token id {spec} is outside the vocabulary [0, {n_vocab}). Fix: pass a valid id")
    return int(spec)
