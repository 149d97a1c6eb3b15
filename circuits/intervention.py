"""``intervene(prompt, {(layer, position, feature): value})``: clamp or steer features and read the logits.

Runs in the replacement model (``circuits.replacement.forward``) with ``errors="clean"`` and, by
default, ``features="recompute"``: transcoders in the MLP slots, errors held at their clean values,
every other feature recomputed through its encoder and activation function, so the clamp's effect
flows through downstream features too. With ``freeze_attention=True`` (``attention="frozen"``)
attention patterns and norm scales stay at their clean values (the attribution graph's world); by
default they are recomputed, as circuit-tracer intervenes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from circuits.attribution.checks import check_transcoders, default_transcoders
from circuits.models.adapter import Model, PromptError
from circuits.models.loading import load_model
from circuits.replacement import CleanState, EditBuilder, Edits, FeatureMode, forward

Key = tuple[int, int | None, int]
"""``(layer, position, feature)``; position None: every position (generated ones included)."""
Mode = Literal["set", "add", "scale"]


class InterventionError(ValueError):
    """An intervention names a layer, position or feature the model and transcoders do not have."""


class InterventionResult(NamedTuple):
    logits: Tensor
    """``[n_pos, d_vocab]`` with the intervention."""
    clean_logits: Tensor
    """``[n_pos, d_vocab]`` without it, from the same replacement model (equal to the model's own
    logits up to rounding)."""
    generated: Tensor | None
    """``[generate]`` greedily generated token ids with the intervention held; None without ``generate``."""
    text: str | None
    """The generated continuation, decoded; None without ``generate``."""

    def top_tokens(self, tokenizer, k: int = 5, *, clean: bool = False) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens after the prompt, with their probabilities."""
        probs = (self.clean_logits if clean else self.logits)[-1].double().softmax(-1)
        top = probs.topk(k)
        return [(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]


def intervene(prompt: str | Sequence[int] | Tensor, interventions: Mapping[Key, float],
              model: Model | None = None, transcoders: nn.Module | None = None, *,
              mode: Mode = "set", freeze_attention: bool = False, features: FeatureMode = "recompute",
              generate: int = 0) -> InterventionResult:
    """Clamp (``mode="set"``: the value is the new activation), add to (``"add"``) or multiply
    (``"scale"``) feature activations, and return the new and the clean logits.

    Args:
        interventions: ``{(layer, position, feature): value}``; negative positions count from the
            end of the prompt; position None means every position, including generated ones.
        model: default ``circuits.load_model()``; transcoders: default the model's set, as ``trace`` picks.
        freeze_attention: hold attention patterns and norm scales at their clean values.
        features: ``"recompute"`` (default), ``"linear"`` (clean on/off masks) or ``"frozen"``
            (other features held at their clean values); see ``circuits.replacement.forward``.
        generate: greedily generate this many tokens with the intervention held (needs
            ``freeze_attention=False``; without a KV cache each step reruns the whole sequence).
            Generated positions have no clean error: theirs is the true MLP write minus the
            transcoders' unedited write, so a clamp there changes the MLP output by the transcoders'
            change only.
    """
    if mode not in ("set", "add", "scale"):
        raise InterventionError(f"unknown mode {mode!r}: use 'set' (clamp), 'add' or 'scale'")
    if generate < 0:
        raise InterventionError(f"generate must be >= 0 tokens, got {generate}")
    if generate and freeze_attention:
        raise InterventionError("generated positions have no clean attention patterns to freeze. Fix: pass "
                                "freeze_attention=False to generate, or generate=0 to read frozen-attention logits.")
    model = load_model() if model is None else model
    transcoders = default_transcoders(model) if transcoders is None else transcoders
    check_transcoders(model, transcoders)
    if isinstance(prompt, str) and not prompt.strip():
        raise PromptError("the prompt is empty: pass some text, e.g. intervene(\"When Mary and John ...\", {...})")
    clean = CleanState.of(model, transcoders, prompt)
    _check_keys(interventions, clean)

    both = _edits(interventions, clean, clean.n_pos, mode, rows=2)  # row 0 clean, row 1 intervened
    run = forward(model, None, clean=clean, edits=both, attention="frozen" if freeze_attention else "live",
                  features=features, errors="clean")
    generated = text = None
    if generate:
        ids = clean.frozen.tokens
        for _ in range(generate):
            edits = _edits(interventions, clean, len(ids), mode, rows=1)
            step = forward(model, None, clean=clean, edits=edits, ids=ids, attention="live", features="recompute",
                           errors="clean")
            ids = torch.cat([ids, step.logits[0, -1].argmax()[None].to(ids)])
        generated = ids[clean.n_pos:].cpu()
        text = model.tokenizer.decode(generated.tolist())
    return InterventionResult(run.logits[1], run.logits[0], generated, text)


def _check_keys(interventions: Mapping[Key, float], clean: CleanState) -> None:
    L, F, P = clean.n_layers, clean.d_features, clean.n_pos
    for key in interventions:
        if not (isinstance(key, tuple) and len(key) == 3):
            raise InterventionError(f"intervention keys are (layer, position, feature) tuples, got {key!r}")
        layer, pos, feat = key
        if not 0 <= layer < L:
            raise InterventionError(f"layer {layer} does not exist: the transcoders have layers 0..{L - 1}")
        if not 0 <= feat < F:
            raise InterventionError(f"feature {feat} does not exist: layer {layer} has features 0..{F - 1}")
        if pos is not None and not -P <= pos < P:
            raise InterventionError(f"position {pos} is outside the prompt's {P} tokens: use 0..{P - 1}, "
                                    "a negative index from the end, or None for every position")
        if pos is not None and pos % P < clean.feature_start:
            raise InterventionError(f"position {pos % P} has no features: positions before {clean.feature_start} "
                                    "(the first token, an attention sink) keep their true MLP output. Fix: "
                                    f"intervene at positions {clean.feature_start}..{P - 1}.")


def _edits(interventions: Mapping[Key, float], clean: CleanState, T: int, mode: Mode, rows: int) -> Edits:
    """The interventions as edits of the last of ``rows`` batch rows, over ``T`` positions."""
    per_value: dict[tuple[int, int, int], float] = {}
    # Every-position entries first, so an explicit position for the same feature overrides them.
    for (layer, pos, feat), value in sorted(interventions.items(), key=lambda kv: kv[0][1] is not None):
        for p in (range(clean.feature_start, T) if pos is None else [pos % clean.n_pos]):
            per_value[(layer, p, feat)] = float(value)
    scale_add = {"set": lambda v: (0.0, v), "add": lambda v: (1.0, v), "scale": lambda v: (v, 0.0)}[mode]
    b = EditBuilder(rows, clean.model.d_model)
    for (layer, p, feat), value in per_value.items():
        scale, add = scale_add(value)
        b.feature(rows - 1, layer, p, feat, scale=scale, add=add)
    return b.build(clean.model.device, clean.model.dtype)
