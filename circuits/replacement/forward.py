"""The one forward pass of the replacement model, with named switches.

The pass is the real model with hooks (``circuits.hooks``): each MLP slot writes its transcoders'
output (decoder, ``b_dec``, skip) plus an error term, in place of the MLP's write. Three switches
say which replacement model runs; every caller names all three:

``attention``
    ``"frozen"``: every norm scale and attention pattern holds its clean value (``freeze``), so the
    model is linear outside the MLP slots: the world of the attribution graph. ``"live"``: they
    are recomputed from this pass's residual stream (the real model's nonlinear attention).
``features``
    ``"recompute"``: every feature runs its encoder and activation function on this pass's input,
    so features downstream of an edit respond, nonlinearity included. ``"linear"``: pre-activation
    times the clean on/off mask; with frozen attention this is exactly the graph's linear model.
    ``"frozen"``: every activation holds its clean value (or the ``acts=`` given), so an edit
    reaches others only directly (residual, attention, norms, the transcoder skip).
``errors``
    ``"clean"``: each slot's error holds its clean value (true MLP write minus the transcoders' on
    the clean prompt), so with nothing edited the pass reproduces the model exactly. ``"live"``:
    the error is recomputed from this pass's MLP input, ``MLP(x) - transcoders(x)``, so a kept
    error responds to its inputs and an ablated upstream node cannot leak its clean value through
    it; with nothing edited the pass is again exactly the model, on any prompt. ``"none"``: no
    error: the pure replacement model (how good the transcoders are on their own).

Positions before ``feature_start`` (the first token, ``circuits.replacement.slots``) have no
features in every mode; their slot writes the true MLP output (its clean error under ``"clean"``,
the live one otherwise, ``"none"`` included).

What each caller runs, and what its "effect" means:

- ``trace`` builds the graph of ``attention="frozen", features="linear", errors="clean"``; an edge
  weight is the direct effect of its source on its target there (``run_replacement`` checks it).
- ``verify`` ablates each kept source with ``attention="live", features="frozen", errors="clean"``:
  the measured effect of an edge is its source's direct effect through the real attention and
  norms (equal to the weight with ``attention="frozen"``).
- ``intervene`` edits features with ``features="recompute", errors="clean"`` (attention as asked):
  the effect is the total effect on the outputs, circuit-tracer's intervention semantics.
- feature discovery (``circuits.discovery.features.patcher``) patches prompt pairs with
  ``attention="live", features="recompute", errors="live"``: ablating every node gives exactly
  the corrupted run, keeping every node the clean one.
- transcoder evaluation runs ``attention="live", features="recompute", errors="none"`` on text: the
  cross-entropy and KL of the replacement model itself; per layer, ``errors="live"`` with the error
  dropped at chosen layers (``circuits.replacement.evaluate.ReplaceLayers``): each layer replaced alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from circuits.hooks import detached, first_input, hooked, on_output, read_hook, repeat_output, replace_forward, write_hook
from circuits.models.adapter import Model
from circuits.models.arch import Location
from circuits.replacement.edits import (
    AblationValues,
    EditBuilder,
    Edits,
    PatchError,
    ablation_edits,
    ablation_values,
)
from circuits.replacement.freeze import FrozenForward, FrozenNorm
from circuits.replacement.slots import (
    MlpReplacement,
    as_compute,
    check_feature_start,
    eval_mode,
    without_early_features,
)
from circuits.replacement.state import CleanState
from transcoders.positions import FEATURE_START

Attention = Literal["frozen", "live"]
FeatureMode = Literal["recompute", "linear", "frozen"]
ErrorMode = Literal["clean", "live", "none"]
_OUT = Location("", "output", None)


class ReplacementRun(NamedTuple):
    """What one replacement forward pass saw, for a batch of B rows of T positions."""

    logits: Tensor
    """``[B, T, d_vocab]``."""
    final: Tensor
    """``[B, T, d_model]`` the final norm's output (what logit nodes read)."""
    mlp_in: Tensor
    """``[B, n_layers, T, d_model]`` each transcoder's input (what feature nodes read)."""
    acts: Tensor | None
    """``[B, T, n_layers, d_features]`` the activations the MLP slots wrote with (``keep_acts``)."""
    pre_acts: Tensor | None
    """``[B, T, n_layers, d_features]`` every feature's encoder pre-activation on its input (``keep_pre_acts``)."""
    layers: list | None = None
    """Each decoder layer's output (``keep_layers``): what a later pass resumes from (``Resume``)."""


class Resume(NamedTuple):
    """Where a pass starts: layers below ``layer`` replay ``base``, a recorded unedited run of the same
    prompt (``forward(..., keep_layers=True)``), instead of being computed. Exact when no edit reaches
    below ``layer``, which ``forward`` checks; verification resumes each batch of sources at the
    lowest source's layer, so a late source costs only the layers above it."""

    layer: int
    base: ReplacementRun


def forward(model: Model, transcoders: nn.Module | None, *, attention: Attention, features: FeatureMode,
            errors: ErrorMode, clean: CleanState | None = None, ids: Tensor | None = None, edits: Edits | None = None,
            editor: SlotEditor | None = None, acts: Tensor | None = None, error_values: Tensor | None = None,
            embed: Tensor | None = None, feature_start: int | None = None, keep_acts: bool = False,
            keep_pre_acts: bool = False, keep_inputs: bool = True, grad: bool | None = False,
            logits_to_keep: int = 0, keep_layers: bool = False, resume: Resume | None = None) -> ReplacementRun:
    """The replacement model of ``model`` with ``transcoders`` in its MLP slots (module docstring).

    Args:
        attention, features, errors: which replacement model (module docstring); no defaults.
        clean: the clean prompt's state: needed by ``attention="frozen"``, ``features="linear"`` or
            ``"frozen"`` and ``errors="clean"``. Its transcoders are used (``transcoders`` may be None).
        ids: ``[T]`` tokens (with ``clean``: starting with its prompt, ``T >= n_pos``, for generation;
            positions past the prompt have no clean values, so their errors are live and they need
            live attention and recomputed features), or ``[B, T]`` rows of text (without ``clean``).
            Default: the clean prompt.
        edits: ``scale * value + add`` edits, one edit set per batch row (``circuits.replacement.edits``).
        editor: a ``SlotEditor`` instead of ``edits``: dense edits at every slot (feature discovery's
            circuits, batched over prompts and circuits), with its own ``n_rows``.
        acts: ``[B, P, L, F]`` activations to hold fixed instead of the clean ones (``features="frozen"``).
        error_values: ``[B, L, P, D]`` error vectors instead of the clean ones (``errors="clean"``).
        embed: ``[B, P, D]`` residual stream entering layer 0 instead of the real one.
        feature_start: positions before it have no features; default ``clean``'s, else ``FEATURE_START``.
        keep_acts, keep_pre_acts: also return every activation / pre-activation (``B*T*L*F`` numbers each).
        keep_inputs: return ``mlp_in`` (else an empty tensor; ``B*L*T*D`` numbers).
        grad: run with autograd on (gradients of a metric with respect to what an editor adds), off
            (the default), or None: as the caller has it.
        logits_to_keep: only the last n positions' logits (``[B, n, d_vocab]``); 0 keeps all.
        keep_layers: also return each decoder layer's output (``ReplacementRun.layers``).
        resume: start at ``resume.layer`` from a recorded run (``Resume``); needs ``features="frozen"``
            and every edit at that layer or above.
    All run in the model's dtype, on its device. Where nothing reads the true MLP output (clean errors
    over the prompt, an editor that ignores it) the MLPs are not run: their write is replaced anyway.
    """
    mode = contextlib.nullcontext() if grad is None else torch.enable_grad() if grad else torch.no_grad()
    with mode:
        return _forward(model, transcoders, attention, features, errors, clean, ids, edits, editor, acts,
                        error_values, embed, feature_start, keep_acts, keep_pre_acts, keep_inputs, logits_to_keep,
                        keep_layers, resume)


def _forward(model: Model, transcoders: nn.Module | None, attention: Attention, features: FeatureMode,
             errors: ErrorMode, clean: CleanState | None, ids: Tensor | None, edits: Edits | None,
             editor: SlotEditor | None, acts: Tensor | None, error_values: Tensor | None, embed: Tensor | None,
             feature_start: int | None, keep_acts: bool, keep_pre_acts: bool, keep_inputs: bool,
             logits_to_keep: int = 0, keep_layers: bool = False, resume: Resume | None = None) -> ReplacementRun:
    _check_modes(attention, features, errors, clean, acts, error_values)
    tc = clean.transcoders if clean is not None else transcoders
    start = check_feature_start(clean.feature_start if feature_start is None and clean is not None
                                else FEATURE_START if feature_start is None else feature_start)
    spec, L = model.spec, model.n_layers
    dev, dt = model.device, model.dtype
    rows = _token_rows(clean, ids, dev)
    T, P = rows.shape[1], (clean.n_pos if clean is not None else rows.shape[1])
    if T > P and (attention == "frozen" or features != "recompute"):
        raise PatchError("positions past the prompt have no frozen attention or clean activations: run longer "
                         "sequences with attention='live' and features='recompute'")
    if editor is not None and edits is not None:
        raise PatchError("pass edits= or editor=, not both")
    B = _batch(rows, edits if editor is None else editor, acts, error_values, embed)
    if rows.shape[0] not in (1, B):
        raise PatchError(f"{rows.shape[0]} token rows but {B} edit rows: pass one prompt, or one edit set per row")
    if editor is None:
        edits = edits if edits is not None else EditBuilder(B, model.d_model).build(dev, dt)
        _check_edits(edits, L, T, int(tc.cfg.d_features), start)
        editor = SparseEditor(edits, L, None if embed is None else embed.to(dev, dt))
    mlps: MlpReplacement | None = clean.mlps if clean is not None else None
    base_err = None
    if errors == "clean":
        base_err = (mlps.errors[None] if error_values is None else error_values).to(dev, dt)  # type: ignore[union-attr]
    fixed = None if acts is None else acts.to(dev, dt)
    first = 0 if resume is None else _check_resume(resume, editor, features, keep_acts, keep_pre_acts, L)
    # The true MLP output is read only to form live errors (or past the prompt, or by an editor that asks
    # for it); otherwise the slot's write replaces it unread, so the MLP (most of a layer's work) is skipped.
    skip_mlp = errors == "clean" and T == P and type(editor).real is SlotEditor.real
    # Clean activations with a few sparse edits (verification: one feature per row): decode the clean
    # activations once per layer and add each edit's change, instead of a dense [B, T, F] @ [F, D] per row.
    sparse_decode = features == "frozen" and fixed is None and type(editor) is SparseEditor
    clean_decoded: dict[int, Tensor] = {}

    seen_in: dict[int, Tensor] = {}
    used: dict[int, Tensor] = {}
    natural: dict[int, Tensor] = {}
    final: list[Tensor] = []
    handles = []
    if attention == "frozen":
        handles += frozen_attention_hooks(model, clean.frozen, dev, dt)  # type: ignore[union-attr]
    handles.append(read_hook(model.norm("ln_final"), _OUT, final.append))  # after the final norm's freeze
    if editor.edits_embed:
        handles.append(write_hook(model.module("resid_pre", 0), spec.location("resid_pre", 0),
                                  lambda x: editor.embed(x.expand(B, -1, -1))))

    for layer in range(L):
        def keep_in(x: Tensor, layer: int = layer) -> None:
            seen_in[layer] = x

        def mlp_write(real: Tensor, layer: int = layer) -> Tensor:
            x = seen_in[layer].expand(B, -1, -1)
            real = editor.real(layer, real.expand(B, -1, -1), x)
            if features == "frozen":
                a = fixed[:, :, layer] if fixed is not None else mlps.acts[None, :, layer].expand(B, -1, -1)  # type: ignore[union-attr]
            else:
                pre = tc.pre_acts(x, layer)
                if features == "linear":
                    a = pre * mlps.mask[None, :, layer]  # type: ignore[union-attr]
                else:
                    a = without_early_features(tc.activate(pre, layer), start, pos_dim=1)
            natural[layer] = a
            used[layer] = editor.features(layer, a)
            if errors == "live" and T == P:
                # The true write plus what the edits change: exactly the model when nothing is edited.
                out = real + _decoded_change(tc, used, natural, layer)
                if editor.edits_errors(layer):
                    live = real - tc.output_at(x, natural, layer)
                    out = out + (editor.error(layer, live) - live)
            else:
                err = _error(errors, base_err, layer, real, x, tc, natural, P, T, start)
                if editor.edits_errors(layer):
                    err = editor.error(layer, err)
                if sparse_decode:
                    out = _frozen_output(tc, x, used, natural, clean_decoded, editor, layer) + err  # type: ignore[arg-type]
                else:
                    out = tc.output_at(x, used, layer) + err
            return editor.write(layer, out, x, used[layer])

        in_loc = spec.location(tc.cfg.input_site, layer)
        out_loc = spec.location(tc.cfg.output_site, layer)
        handles.append(read_hook(model.module(tc.cfg.input_site, layer), in_loc, keep_in))
        handles.append(write_hook(model.module(tc.cfg.output_site, layer), out_loc, mlp_write))

    replaced = []
    layer_outputs: list = []
    for layer in range(L):
        if layer < first:  # replay the recorded run: these layers see no edit
            base_out = resume.base.layers[layer]  # type: ignore[union-attr, index]
            replaced.append(replace_forward(model.module("resid_pre", layer),
                                            lambda *a, _o=repeat_output(base_out, B), **kw: _o))
            seen_in[layer] = resume.base.mlp_in[:, layer]  # type: ignore[union-attr]
            natural[layer] = used[layer] = (fixed[:, :, layer] if fixed is not None
                                            else mlps.acts[None, :, layer].expand(B, -1, -1))  # type: ignore[union-attr]
            continue
        if skip_mlp:
            replaced.append(replace_forward(model.module("mlp_out", layer),
                                            lambda x, *a, **kw: torch.zeros_like(x)))
        if keep_layers:
            handles.append(on_output(model.module("resid_pre", layer),
                                     lambda m, a, out: layer_outputs.append(detached(out))))
    with eval_mode(tc), tc.decoding(), hooked(handles, replaced):
        kw = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        logits = model.hf(rows.to(dev).expand(B, -1), **kw).logits
    mlp_in = (torch.stack([seen_in[l].expand(B, -1, -1) for l in range(L)], dim=1) if keep_inputs or keep_pre_acts
              else logits.new_empty(0))
    kept = torch.stack([used[l] for l in range(L)], dim=2) if keep_acts else None
    pre_acts = torch.stack([tc.pre_acts(mlp_in[:, l], l) for l in range(L)], dim=2) if keep_pre_acts else None
    return ReplacementRun(logits, final[-1], mlp_in, kept, pre_acts, layer_outputs if keep_layers else None)


def _check_resume(resume: Resume, editor: SlotEditor, features: str, keep_acts: bool, keep_pre_acts: bool,
                  L: int) -> int:
    """The first layer a resumed pass computes; raises where replaying the layers below would be wrong."""
    first = resume.layer
    if not 0 <= first < L:
        raise PatchError(f"resume.layer must be in 0..{L - 1}, got {first}")
    if resume.base.layers is None or resume.base.mlp_in.numel() == 0:
        raise PatchError("resume needs a run recorded with keep_layers=True and keep_inputs=True")
    if features != "frozen" or keep_acts or keep_pre_acts:
        raise PatchError("resume replays layers whose features are the clean ones: use features='frozen', "
                         "without keep_acts/keep_pre_acts")
    if not isinstance(editor, SparseEditor) or editor.edits_embed and first > 0:
        raise PatchError("resume works with sparse edits (edits=) at its layer or above; edit the embeddings "
                         "only with resume.layer = 0")
    e = editor.edits
    low = [int(t[:, 1].min()) for t in (e.features, e.errors) if len(t)]
    if low and min(low) < first:
        raise PatchError(f"an edit at layer {min(low)} is below resume.layer {first}: resume at the lowest "
                         "edited layer")
    return first


def _frozen_output(tc: nn.Module, x: Tensor, used: dict[int, Tensor], natural: dict[int, Tensor],
                   clean_decoded: dict[int, Tensor], editor: SparseEditor, layer: int) -> Tensor:
    """``tc.output_at(x, used, layer)`` ``[B, T, D]`` where ``used`` differs from the clean activations
    ``natural`` (each ``[1 or B, T, F]``, one row shared) only at ``editor``'s feature edits: the clean
    write decoded once (cached per layer), plus each edited entry's change times its decoder row."""
    if layer not in clean_decoded:
        clean_decoded[layer] = tc.add_decoded(tc.b_dec[layer] / tc.output_scale[layer],
                                              {s: natural[s][:1] for s in tc.sources(layer)}, layer)
    out = tc.skip_layer(x, layer) + clean_decoded[layer]
    for s in tc.sources(layer):
        r, p, f = editor._by_layer["features"][s][:3]
        if not len(r):
            continue
        r, p, f = torch.unique(torch.stack([r, p, f]), dim=1)  # each edited entry once
        change = used[s][r, p, f] - natural[s][0, p, f]
        out = out.index_put((r, p), change[:, None] * tc.decoder_at(s, layer)[f], accumulate=True)
    return out


def _decoded_change(tc: nn.Module, used: dict[int, Tensor], natural: dict[int, Tensor], layer: int) -> Tensor | float:
    """What the edited activations of the layers writing to ``layer`` change in its write: their
    difference from the natural ones through the decoders (0 when none was edited)."""
    change: Tensor | float = 0.0
    for s in tc.sources(layer):
        if used[s] is not natural[s]:
            change = change + (used[s] - natural[s]) @ tc.decoder_at(s, layer)
    return change


def _error(mode: ErrorMode, base: Tensor | None, layer: int, real: Tensor, x: Tensor, tc: nn.Module,
           natural: dict[int, Tensor], P: int, T: int, start: int) -> Tensor:
    """The error term one slot adds, ``[B, T, D]``: clean values over the prompt (live past it), live,
    or none (except before ``start``, where the slot writes the true MLP output)."""
    if mode == "clean" and T == P:
        return base[:, layer].expand(real.shape[0], -1, -1)  # type: ignore[index]
    if mode == "none":
        # Only the positions before ``start`` keep an error, so only they are decoded: the whole decode
        # (a CLT's layer sums every layer below it) would double the cost of evaluate and fine-tuning.
        none = torch.zeros_like(real)
        if start:
            early = {s: natural[s][:, :start] for s in tc.sources(layer)}
            none[:, :start] = real[:, :start] - tc.output_at(x[:, :start], early, layer)
        return none
    live = real - tc.output_at(x, natural, layer)
    if mode == "live":
        return live
    # "clean" past the prompt: what the real MLP wrote beyond the unedited transcoders
    return torch.cat([base[:, layer].expand(real.shape[0], -1, -1), live[:, P:]], dim=1)  # type: ignore[index]


class SlotEditor:
    """Where edits reach into the forward pass; this base edits nothing. Every method gets and returns
    batch-major tensors of the pass's ``n_rows`` rows: ``embed`` the residual entering layer 0
    ``[B, T, D]``; per MLP slot, ``real`` the true MLP write (errors are formed from it), ``features``
    the natural activations ``[B, T, F]`` (return the ones to write with), ``error`` the error term
    ``[B, T, D]`` (asked only where ``edits_errors``), and ``write`` what the slot writes, last."""

    n_rows: int = 1
    edits_embed: bool = False

    def embed(self, x: Tensor) -> Tensor:
        return x

    def real(self, layer: int, real: Tensor, x: Tensor) -> Tensor:
        return real

    def features(self, layer: int, acts: Tensor) -> Tensor:
        return acts

    def edits_errors(self, layer: int) -> bool:
        return False

    def error(self, layer: int, err: Tensor) -> Tensor:
        return err

    def write(self, layer: int, write: Tensor, x: Tensor, acts: Tensor) -> Tensor:
        return write


class SparseEditor(SlotEditor):
    """``Edits`` (``scale * value + add`` per edited value and row) as a ``SlotEditor``; ``embed``
    ``[B, P, D]`` replaces the residual entering layer 0 before the token edits."""

    def __init__(self, edits: Edits, n_layers: int, embed: Tensor | None = None) -> None:
        self.edits, self.n_rows, self._embed = edits, edits.n_rows, embed
        self.edits_embed = embed is not None or len(edits.tokens) > 0
        self._by_layer = _split_by_layer(edits, n_layers)

    def embed(self, x: Tensor) -> Tensor:
        x = (x if self._embed is None else self._embed).expand(self.n_rows, -1, -1).clone()
        r, p = self.edits.tokens.T
        x[r, p] = self.edits.token_scale[:, None] * x[r, p] + self.edits.token_add
        return x

    def features(self, layer: int, acts: Tensor) -> Tensor:
        r, p, f, scale, add = self._by_layer["features"][layer]
        if not len(r):
            return acts
        acts = acts.clone()
        acts[r, p, f] = scale * acts[r, p, f] + add
        return acts

    def edits_errors(self, layer: int) -> bool:
        return len(self._by_layer["errors"][layer][0]) > 0

    def error(self, layer: int, err: Tensor) -> Tensor:
        r, p, scale, add = self._by_layer["errors"][layer]
        err = err.clone()
        err[r, p] = scale[:, None] * err[r, p] + add
        return err


def _check_modes(attention: str, features: str, errors: str, clean: CleanState | None, acts: Tensor | None,
                 error_values: Tensor | None) -> None:
    for name, value, allowed in (("attention", attention, ("frozen", "live")),
                                 ("features", features, ("recompute", "linear", "frozen")),
                                 ("errors", errors, ("clean", "live", "none"))):
        if value not in allowed:
            raise PatchError(f"unknown {name}={value!r}: use one of {', '.join(map(repr, allowed))}")
    if clean is None:
        needs = [w for w, on in (("attention='frozen'", attention == "frozen"),
                                 ("features='linear'", features == "linear"),
                                 ("features='frozen'", features == "frozen" and acts is None),
                                 ("errors='clean'", errors == "clean" and error_values is None)) if on]
        if needs:
            raise PatchError(f"{' and '.join(needs)} hold(s) a clean prompt's values: pass clean=CleanState.of(model, "
                             "transcoders, prompt), or use attention='live', features='recompute', errors='live'/'none'")
    if acts is not None and features != "frozen":
        raise PatchError("acts= holds activations fixed: pass features='frozen' with it")
    if error_values is not None and errors != "clean":
        raise PatchError("error_values= replaces the clean errors: pass errors='clean' with it")


def _token_rows(clean: CleanState | None, ids: Tensor | Sequence[int] | None, device: torch.device) -> Tensor:
    """``[1 or B, T]`` token ids to run."""
    if ids is None:
        if clean is None:
            raise PatchError("nothing to run: pass clean= (its prompt) or ids= (token rows [B, T])")
        return clean.frozen.tokens[None]
    rows = torch.as_tensor(ids, dtype=torch.long)
    rows = rows[None] if rows.ndim == 1 else rows
    if clean is not None:
        P = clean.n_pos
        if rows.shape[0] != 1 or rows.shape[1] < P or not torch.equal(rows[0, :P].cpu(), clean.frozen.tokens.cpu()):
            raise PatchError("ids= must start with the clean prompt's tokens (it extends the prompt, for generation)")
    return rows


def _batch(rows: Tensor, edits: Edits | SlotEditor | None, *tensors: Tensor | None) -> int:
    sizes = {t.shape[0] for t in tensors if t is not None} | ({edits.n_rows} if edits is not None else set())
    if rows.shape[0] > 1:
        sizes.add(rows.shape[0])
    if len(sizes) > 1:
        raise PatchError(f"the batch rows disagree: {sorted(sizes)}. Fix: give edits, acts, error_values, embed and "
                         "ids one row each per forward pass row")
    return sizes.pop() if sizes else 1


def _check_edits(edits: Edits, L: int, T: int, F: int, start: int) -> None:
    bounds = [("row", edits.features[:, 0], edits.n_rows), ("layer", edits.features[:, 1], L),
              ("position", edits.features[:, 2], T), ("feature", edits.features[:, 3], F),
              ("row", edits.errors[:, 0], edits.n_rows), ("layer", edits.errors[:, 1], L),
              ("position", edits.errors[:, 2], T), ("row", edits.tokens[:, 0], edits.n_rows),
              ("position", edits.tokens[:, 1], T)]
    for name, values, n in bounds:
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= n):
            raise PatchError(f"an edit's {name} is out of range: {name}s run 0..{n - 1}, got "
                             f"{int(values.min())}..{int(values.max())}. Fix: check the node ids.")
    if len(edits.features) and int(edits.features[:, 2].min()) < start:
        raise PatchError(f"an edit names a feature at position {int(edits.features[:, 2].min())}, but positions before "
                         f"{start} have no features (the first token's MLP output is kept exactly, as its error "
                         "node). Fix: edit the error node E{layer}@{pos} there instead.")


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


def frozen_attention_hooks(model: Model, frozen: FrozenForward, device: torch.device, dtype: torch.dtype) -> list:
    """Hooks that hold every norm's scale and every head's pattern at the clean prompt's values, so
    a pass is linear outside the MLP slots: each norm returns its frozen map of its input, and each
    head's output is the frozen pattern applied to this pass's V."""
    spec, d = model.spec, model.dims
    H, Hkv, dh = d.n_heads, d.n_kv_heads, d.d_head
    patterns = frozen.patterns.to(device, dtype)  # [L, H, P, P]
    handles = []

    def freeze_norm(module: nn.Module, norm: FrozenNorm) -> None:
        handles.append(on_output(module,
            lambda m, a, kw, out: norm(first_input(a, kw)), with_kwargs=True))

    for role, per_layer in frozen.norms.items():
        for layer, norm in enumerate(per_layer):
            freeze_norm(model.norm(role, layer), norm)
    freeze_norm(model.norm("ln_final"), frozen.ln_final)

    seen_v: dict[int, Tensor] = {}
    for layer in range(d.n_layers):
        def keep_v(v: Tensor, layer: int = layer) -> None:
            if spec.v_chunk is not None:
                i, n = spec.v_chunk
                v = v.chunk(n, dim=-1)[i]
            seen_v[layer] = v

        def frozen_z(z: Tensor, layer: int = layer) -> Tensor:
            # z[b, q, h] = sum_k P[h, q, k] V[b, k, kv(h)]: the frozen pattern applied to this pass's V.
            v = seen_v[layer]
            v = v.reshape(*v.shape[:2], Hkv, 1, dh).expand(-1, -1, -1, H // Hkv, -1).reshape(*v.shape[:2], H, dh)
            mixed = torch.einsum("hqk,bkhe->bqhe", patterns[layer], v)
            return mixed.reshape(z.shape).contiguous()  # GPT-2's Conv1D views its input

        handles.append(read_hook(model.module(spec.v_proj, layer), _OUT, keep_v))
        handles.append(write_hook(model.module("attn_z", layer), spec.location("attn_z", layer), frozen_z))
    return handles


# --- callers that name their switches once -------------------------------------------------


def run_replacement(model: Model, frozen: FrozenForward, transcoder: nn.Module, mlps: MlpReplacement, *,
                    acts: Tensor | None = None, errors: Tensor | None = None,
                    embed: Tensor | None = None) -> ReplacementRun:
    """The frozen linear replacement model that ``trace`` attributes (``attention="frozen"``, errors
    clean unless ``errors`` ``[B, L, P, D]`` is given, features ``"linear"``, or held at ``acts``
    ``[B, P, L, F]`` when given); ``embed`` ``[B, P, D]`` replaces the residual entering layer 0.
    The reference every attribution edge is checked against (direct intervention)."""
    clean = CleanState(model, as_compute(transcoder, model.device, model.dtype), frozen, mlps)
    return forward(model, None, clean=clean, attention="frozen", features="linear" if acts is None else "frozen",
                   errors="clean", acts=acts, error_values=errors, embed=embed, keep_acts=True, keep_pre_acts=True)


def ablate(clean: CleanState, node_sets: Sequence[Iterable[str]], values: AblationValues | None = None, *,
           batch_size: int = 32, attention: Attention = "live", features: FeatureMode = "recompute") -> Tensor:
    """Last-position logits ``[len(node_sets), d_vocab]``, each with one node set ablated (default: to zero),
    ``batch_size`` sets per forward pass, clean errors."""
    values = ablation_values(clean) if values is None else values
    out = []
    for start in range(0, len(node_sets), batch_size):
        edits = ablation_edits(values, node_sets[start:start + batch_size])
        run = forward(clean.model, None, clean=clean, edits=edits, attention=attention, features=features,
                      errors="clean")
        out.append(run.logits[:, -1])
    return torch.cat(out) if out else clean.mlps.acts.new_zeros(0, clean.model.W_U.shape[0])
