"""EleutherAI sparsify's transcoders: one folder per hookpoint holding ``cfg.json`` and ``sae.safetensors``.

Per-layer sets follow ``EleutherAI/sparsify`` (main at 9d3b136; the files of eai-sparsify 1.3.3 on
PyPI are the same):

- ``sparsify/sparse_coder.py``, ``SparseCoder.save_to_disk`` / ``load_from_disk``: ``{hookpoint}/cfg.json``
  is ``SparseCoderConfig.to_dict()`` plus ``d_in`` (``activation`` "topk" or "groupmax", ``k``,
  ``num_latents`` or else ``d_in * expansion_factor``, ``skip_connection``, ``transcode``, ...);
  ``{hookpoint}/sae.safetensors`` is the module's state dict: ``encoder.weight [num_latents, d_in]``,
  ``encoder.bias [num_latents]``, ``W_dec [num_latents, d_in]``, ``b_dec [d_in]`` and, with
  ``skip_connection``, ``W_skip [d_in(out), d_in(in)]``.
- ``SparseCoder.encode`` and ``sparsify/fused_encoder.py``, ``FusedEncoder.forward``: ``relu(F.linear(x,
  encoder.weight, encoder.bias))`` then the top k (a transcoder does not subtract ``b_dec`` first), which
  is our TopK; ``decode``: ``Σ act · W_dec[i] + b_dec``; ``forward`` adds ``x @ W_skip.mT``.
- ``sparsify/trainer.py``, ``Trainer``: hookpoints are module names under ``model.base_model``
  (``layers.3.mlp``; GPT-2 ``h.3.mlp``), read by a forward hook: the module's first input, i.e. the MLP
  input after its norm (our ``mlp_in``), and its output (our ``mlp_out``). The run folder's
  ``config.json`` is the ``TrainConfig`` (with ``model`` when trained from the command line).

Cross-layer sets (CLTs) follow ``EleutherAI/clt-training``, branch ``clt`` at cf9821f: the sparsify
fork that ``EleutherAI/attribute`` installs to run ``nev/SmolLM2-CLT-135M-73k-k32`` (hookpoints
``layers.{i}.mlp``); sparsify's main branch has no cross-layer coders:

- ``sparsify/sparse_coder.py``, ``SparseCoder.__init__`` / ``load_state``: with ``transcode`` and
  ``n_targets > 0`` the state holds per target j (layer ``l + j``) ``W_decs.{j} [num_latents, d_in]``,
  ``b_decs.{j}``, ``W_skips.{j}`` and ``post_encs.{j} [num_latents]`` (plus ``post_enc_scales.{j}`` under
  ``post_encoder_scale``, and ``in_norm``/``out_norm`` under ``normalize_io``); missing ``W_decs``/``b_decs``
  /``W_skips`` are index 0 from ``W_dec``/``b_dec``/``W_skip`` and zeros after.
- ``sparsify/runner.py``, ``CrossLayerRunner.decode`` with ``MidDecoder.__call__``: layer t's output is
  its own write (index 0) plus every live earlier source s's write at index t - s (``(act + post_enc ·
  [act > 0]) · post_enc_scale`` decoded by ``W_decs``, plus ``b_decs`` and ``x_s @ W_skips.mT``), the
  earlier ones divided by ``max(1, n_live - 1)`` under t's ``divide_cross_layer``; then multiplied by t's
  ``out_norm / sqrt(d_in)`` (``denormalize_output``); inputs are multiplied by ``sqrt(d_in) / in_norm``.
- ``sparsify/trainer.py``: ``n_targets = min(cross_layer, n_layers - position)``; ``hookpoints_in`` (in
  the run's ``config.json``) makes layer i read another module's input instead.

All of that folds into our weights exactly, except what our transcoders cannot compute, which is
refused with the reason: nonzero ``post_encs`` (a jump added to active features), skips from one layer
to a later one, activations pooled across layers (``coalesce_topk``, tied decoders) and GroupMax.
``batchtopk`` loads as our BatchTopK: sparsify thresholds it over the batch even at inference, while
this engine (as for its own BatchTopK sets) keeps the top k of each token.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from transcoders.formats.common import LoadedSet, Target, TranscoderLoadError, blocks, check_finite, fill, require
from transcoders.formats.mapped import MappedFile

# Hookpoint folder names, relative to model.base_model as sparsify writes them (a model. / transformer.
# prefix tolerated): Llama, Qwen, Gemma "layers.{i}.mlp"; GPT-2 "h.{i}.mlp".
HOOKPOINT = re.compile(r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.mlp")
# Modules whose input is the residual entering the MLP's norm (our resid_mid), for hookpoints_in.
NORM_INPUT = re.compile(
    r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.(?:post_attention_layernorm|pre_feedforward_layernorm|ln_2)")
ACTIVATIONS = ("topk", "batchtopk")


def is_sparsify_dir(path: Path) -> bool:
    """A folder of hookpoint folders (or one hookpoint folder) as sparsify saves them."""
    return path.is_dir() and ((path / "cfg.json").is_file() or any((d / "cfg.json").is_file() for d in _dirs(path)))


@dataclass
class _Coder:
    """One hookpoint's coder: its layer, folder, cfg.json and mapped sae.safetensors."""

    layer: int
    folder: Path
    cfg: dict[str, Any]
    f: MappedFile

    @property
    def n_targets(self) -> int:
        """Layers written (1: only its own), as ``MidDecoder.will_be_last`` counts them."""
        return max(1, int(self.cfg.get("n_targets", 0) or 0)) if self.multi_target else 1

    @property
    def multi_target(self) -> bool:
        return bool(self.cfg.get("transcode")) and int(self.cfg.get("n_targets", 0) or 0) > 0

    def scalar(self, key: str) -> float:
        """``in_norm`` / ``out_norm``; 1 where absent (``load_state`` is not strict: the buffer keeps its init)."""
        return float(self.f[key].reshape(-1)[0]) if key in self.f else 1.0

    def per_target(self, key: str, j: int) -> Tensor | None:
        """``{key}s.{j}`` of a multi-target coder (or, as ``load_state`` imputes, ``{key}`` at j = 0; None after);
        ``{key}`` of a single-target one."""
        if not self.multi_target:
            return self.f[key] if key in self.f else None  # noqa: SIM401 (a MappedFile has no get)
        if f"{key}s.{j}" in self.f:
            return self.f[f"{key}s.{j}"]
        if not any(k.startswith(f"{key}s.") for k in self.f.keys()) and j == 0 and key in self.f:  # noqa: SIM118
            return self.f[key]
        return None


def read_sparsify(path: Path, target: Target) -> LoadedSet:
    """A sparsify run folder (``{hookpoint}/cfg.json`` + ``sae.safetensors`` per layer) as one set."""
    if (path / "cfg.json").is_file():
        raise TranscoderLoadError(f"{path} is one sparsify hookpoint ({path.name}), not a set. Fix: pass the folder "
                                  "that holds every layer's hookpoint folder (layers.0.mlp, layers.1.mlp, ...).")
    coders = _coders(path)
    run = _run_config(path)
    L = len(coders)
    first = coders[0]
    D, F, activation, k = _shape(first)
    for c in coders[1:]:
        if _shape(c) != (D, F, activation, k):
            raise TranscoderLoadError(
                f"{c.folder / 'cfg.json'} gives (d_in, num_latents, activation, k) = {_shape(c)} but "
                f"{first.folder.name} gives {(D, F, activation, k)}; a set has one of each. "
                "Fix: load hookpoints trained together.")
    kind = "clt" if any(c.n_targets > 1 for c in coders) else "plt"
    # What the runner multiplies layer t's output by, and divides its earlier sources' writes by.
    out_scale = [c.scalar("out_norm") / math.sqrt(D) if c.cfg.get("normalize_io") else 1.0 for c in coders]
    in_scale = [math.sqrt(D) / c.scalar("in_norm") if c.cfg.get("normalize_io") else 1.0 for c in coders]
    live = [sum(1 for s in range(t + 1) if t - s < coders[s].n_targets) for t in range(L)]
    divide = [max(1, live[t] - 1) if coders[t].cfg.get("divide_cross_layer") else 1 for t in range(L)]

    W_enc, b_enc, b_dec = target.empty(L, D, F), target.empty(L, F), target.zeros(L, D)
    skip = any(c.cfg.get("skip_connection") for c in coders)
    W_skip = target.zeros(L, D, D) if skip else None
    W_dec: Tensor | list[Tensor] = target.zeros(L, F, D) if kind == "plt" else [target.zeros(F, L - s, D)
                                                                                 for s in range(L)]
    for s, c in enumerate(coders):
        sae = c.folder / "sae.safetensors"
        require(["encoder.weight", "encoder.bias"], c.f, sae, "download the hookpoint again.")
        fill(W_enc[s], c.f["encoder.weight"], source=c.f, where=sae, key="encoder.weight", transposed=True)
        W_enc[s] *= in_scale[s]
        fill(b_enc[s], c.f["encoder.bias"], source=c.f, where=sae, key="encoder.bias")
        for j in range(min(c.n_targets, L - s)):
            t = s + j
            w = c.per_target("W_dec", j)
            if w is None:  # load_state's imputed zeros: this source writes nothing to t
                continue
            _refuse_post_enc(c, j, sae)
            scale = out_scale[t] / (divide[t] if j else 1)
            dst = W_dec[s] if kind == "plt" else W_dec[s][:, j]
            fill(dst, w, source=c.f, where=sae, key=f"W_decs.{j}" if c.multi_target else "W_dec")
            dst *= scale
            if c.cfg.get("post_encoder_scale"):
                dst *= _post_enc_scale(c, j, sae, target)[:, None]
            bias = c.per_target("b_dec", j)
            if bias is not None:
                tmp = target.empty(D)
                fill(tmp, bias, source=c.f, where=sae, key=f"b_decs.{j}" if c.multi_target else "b_dec")
                b_dec[t] += scale * tmp
            if c.cfg.get("skip_connection"):
                _read_skip(c, j, sae, W_skip[t] if W_skip is not None else None, in_scale[s] * out_scale[t])
    input_site = _input_site(run, coders, path)
    return LoadedSet(kind=kind, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec, W_dec=W_dec, activation=activation, k=k,
                     W_skip=W_skip, input_site=input_site, output_site="mlp_out", model_name=run.get("model"))


def _dirs(path: Path) -> list[Path]:
    return [d for d in path.iterdir() if d.is_dir()] if path.is_dir() else []


def _coders(path: Path) -> list[_Coder]:
    """The hookpoint folders, one per layer 0 … L-1, with their cfg.json checked."""
    by_layer: dict[int, _Coder] = {}
    for d in sorted(_dirs(path)):
        if not (d / "cfg.json").is_file():
            if HOOKPOINT.fullmatch(d.name) and any((s / "cfg.json").is_file() for s in _dirs(d)):
                raise TranscoderLoadError(
                    f"{d} holds one coder per seed ({', '.join(sorted(s.name for s in _dirs(d)))}), not one coder. "
                    "Fix: move the seed you want up into the hookpoint folder, for every layer.")
            continue  # checkpoints' other folders (best/, ...) and files (optimizer_0.pt, ...)
        m = HOOKPOINT.fullmatch(d.name)
        if m is None:
            raise TranscoderLoadError(
                f"{d} is a sparsify coder on hookpoint {d.name!r}, which is not an MLP (layers.{{i}}.mlp, or "
                "h.{i}.mlp for GPT-2): this engine's transcoders replace MLPs. Fix: load a set trained on the "
                "MLP hookpoints (--hookpoints 'layers.*.mlp'), or remove the other folders.")
        layer = int(m.group(1))
        if layer in by_layer:
            raise TranscoderLoadError(f"{path} holds two coders for layer {layer} ({by_layer[layer].folder.name}, "
                                      f"{d.name}). Fix: keep one.")
        cfg = _cfg(d)
        if not (d / "sae.safetensors").is_file():
            raise TranscoderLoadError(f"{d} has cfg.json but no sae.safetensors. Fix: download the hookpoint again.")
        by_layer[layer] = _Coder(layer, d, cfg, MappedFile(d / "sae.safetensors"))
    if not by_layer:
        raise TranscoderLoadError(f"{path} holds no sparsify hookpoint folders (layers.{{i}}.mlp/cfg.json). "
                                  "Fix: pass the folder sparsify saved the run to.")
    missing = sorted(set(range(max(by_layer) + 1)) - set(by_layer))
    if missing:
        name = re.sub(r"\d+", str(missing[0]), by_layer[max(by_layer)].folder.name, count=1)
        raise TranscoderLoadError(f"missing hookpoint folder {path / name}"
                                  f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: a set needs "
                                  "every layer. Fix: download the complete set, or train the missing layers.")
    return [by_layer[i] for i in range(len(by_layer))]


def _cfg(d: Path) -> dict[str, Any]:
    where = d / "cfg.json"
    try:
        cfg = json.loads(where.read_text())
    except ValueError as exc:
        raise TranscoderLoadError(f"{where} is not JSON ({exc}). Fix: download the hookpoint again.") from exc
    if "d_in" not in cfg:
        raise TranscoderLoadError(f"{where} lacks 'd_in' (the coder's input width), which sparsify's save_to_disk "
                                  "always writes. Fix: add \"d_in\": <d_model>, or download the hookpoint again.")
    if "k" not in cfg:
        raise TranscoderLoadError(f"{where} lacks 'k', the number of features a TopK coder keeps per token "
                                  "(sparsify would silently assume its default, 32). Fix: add \"k\": <value> from "
                                  "the training run (its config.json, or the model card).")
    if not cfg.get("transcode", False):
        raise TranscoderLoadError(f"{where} says transcode: false: this is a sparse autoencoder of {d.name}'s "
                                  "output, not a transcoder of its input to its output. Fix: load a transcoder set "
                                  "(trained with --transcode).")
    activation = cfg.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise TranscoderLoadError(f"{where} has activation {activation!r}; accepted: {list(ACTIVATIONS)}. "
                                  "Fix: none here: this engine has no GroupMax; load a TopK set.")
    pooled = {key: cfg[key] for key in ("coalesce_topk", "per_source_tied", "secondary_target_tied")
              if cfg.get(key) not in (None, False, "none")}
    if pooled:
        raise TranscoderLoadError(f"{where} pools activations or decoders across layers ({pooled}), which this "
                                  "engine's transcoders cannot compute. Fix: load a set trained without them.")
    return cfg


def _shape(c: _Coder) -> tuple[int, int, str, int]:
    """(d_in, num_latents, activation, k), checked against the tensors."""
    cfg = c.cfg
    D = int(cfg["d_in"])
    F = int(cfg.get("num_latents") or 0) or D * int(cfg.get("expansion_factor", 32))
    if "encoder.weight" in c.f and c.f.shape("encoder.weight") != (F, D):
        raise TranscoderLoadError(f"{c.folder / 'sae.safetensors'}: encoder.weight is "
                                  f"{list(c.f.shape('encoder.weight'))} but cfg.json gives [num_latents={F}, "
                                  f"d_in={D}]. Fix: download the hookpoint again.")
    return D, F, cfg.get("activation", "topk"), int(cfg["k"])


def _run_config(path: Path) -> dict[str, Any]:
    """The run's ``config.json`` (TrainConfig), if it was published with the hookpoints."""
    where = path / "config.json"
    try:
        return json.loads(where.read_text()) if where.is_file() else {}
    except ValueError as exc:
        raise TranscoderLoadError(f"{where} is not JSON ({exc}). Fix: download it again or delete it.") from exc


def _input_site(run: dict[str, Any], coders: list[_Coder], path: Path) -> str:
    """``mlp_in`` (the MLP module's input), or ``resid_mid`` when ``hookpoints_in`` reads every layer's MLP
    norm input."""
    ins = list(run.get("hookpoints_in") or [])
    if not ins:
        return "mlp_in"
    layers = [int(m.group(1)) if (m := NORM_INPUT.fullmatch(h)) else None for h in ins]
    if layers != list(range(len(coders))):
        raise TranscoderLoadError(
            f"{path / 'config.json'} has hookpoints_in {ins}: its layers read those modules' inputs, and this "
            "reader knows only the MLP input and the MLP norm's input of every layer. Fix: load a set that reads "
            "the MLP inputs.")
    return "resid_mid"


def _refuse_post_enc(c: _Coder, j: int, sae: Path) -> None:
    key = f"post_encs.{j}" if c.multi_target else "post_enc"
    if key in c.f and _nonzero(c.f[key], sae, key):
        raise TranscoderLoadError(
            f"{sae}: {key} is nonzero: sparsify adds it to every active feature before decoding, a jump our "
            "transcoders (whose features write act · W_dec) cannot make, so attribution would be wrong. Fix: "
            "load a set trained with --train_post_encoder false (or whose post_encs are zero).")


def _post_enc_scale(c: _Coder, j: int, sae: Path, target: Target) -> Tensor:
    key = f"post_enc_scales.{j}" if c.multi_target else "post_enc_scale"
    if key not in c.f:
        raise TranscoderLoadError(f"{sae} lacks {key}, which cfg.json's post_encoder_scale promises. "
                                  "Fix: download the hookpoint again.")
    out = target.empty(*c.f.shape(key))
    fill(out, c.f[key], source=c.f, where=sae, key=key)
    return out


def _read_skip(c: _Coder, j: int, sae: Path, dst: Tensor | None, scale: float) -> None:
    """Layer s's skip to its own layer into ``dst`` (ours is ``[in, out]``: sparsify's ``x @ W_skip.mT``);
    a skip to a later layer must be zero."""
    w = c.per_target("W_skip", j)
    key = f"W_skips.{j}" if c.multi_target else "W_skip"
    if j == 0:
        if w is None:
            raise TranscoderLoadError(f"{sae} lacks {key}, which cfg.json's skip_connection promises. "
                                      "Fix: download the hookpoint again.")
        fill(dst, w, source=c.f, where=sae, key=key, transposed=True)
        dst *= scale
    elif w is not None and _nonzero(w, sae, key):
        raise TranscoderLoadError(f"{sae}: {key} is a nonzero skip from layer {c.layer}'s input to layer "
                                  f"{c.layer + j}'s output; this engine's skips read their own layer only. "
                                  "Fix: load a set whose skips stay within a layer.")


def _nonzero(t: Tensor, where: Path, key: str) -> bool:
    for a, b in blocks(t):
        check_finite(t[a:b], where, key)
        if torch.count_nonzero(t[a:b]):
            return True
    return False
