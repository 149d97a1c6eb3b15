"""Save and load transcoder sets: circuit-tracer's on-disk format, and the published formats we read.

This module is about files only: given a directory, read the set in it; given a set, write one.
Which set to load (presets, each model's default set, the cache, ``hf://`` addresses) is
``transcoders.sets``; downloads from the hub are ``transcoders.hub``.

A saved set is a directory with a ``config.yaml`` and safetensors files in circuit-tracer's
format. Loading reads, each exactly as its publisher writes it (``transcoders/formats/``, one
module per publisher, each naming the source file and function it follows):

- circuit-tracer (``formats/circuit_tracer.py``): ``model_kind: transcoder_set`` (PLT,
  ``layer_{i}.safetensors``, or the files a ``transcoders:`` list names) and
  ``cross_layer_transcoder`` (CLT, ``W_enc_{i}``/``W_dec_{i}.safetensors``), with the activation and
  TopK's k at the top level of config.yaml;
- GemmaScope (``formats/gemma_scope.py``): ``params.npz`` (``W_enc [d_model, d_features]``, ``threshold``)
  and GemmaScope-2 safetensors, listed under ``transcoders:``;
- EleutherAI sparsify (``formats/sparsify.py``): a folder per hookpoint (``layers.{i}.mlp``) with
  ``cfg.json`` and ``sae.safetensors``, per-layer (sparsify) or cross-layer (its CLT fork).

Tensors are read straight into their final place (device, dtype) block by block; CLT decoders
that need no conversion stay memory-mapped, read from disk on first use (``formats/mapped.py``).

Hook names are TransformerLens names, as circuit-tracer writes them; ours map to sites:
``mlp.hook_in`` → ``mlp_in``, ``hook_mlp_out`` → ``mlp_resid``, ``mlp.hook_out`` → ``mlp_out``,
``hook_resid_mid`` → ``resid_mid`` (the residual entering the MLP's norm; circuit-tracer's
CLTs read it), and ``ln2.hook_normalized`` (GemmaScope: the normalised residual before the
norm's weight) → ``mlp_in``, with the model's norm weight folded into the encoder at load.

Weights are saved with the normalisation folded in, the activation and k at config.yaml's top
level where circuit-tracer reads them, and under a ``circuit_engine:`` key it ignores what it
cannot express: BatchTopK (it reads TopK), our training settings, and a CLT's skip (saved as
``W_skip_{i}``, which circuit-tracer does not read).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor

from transcoders.formats.circuit_tracer import read_clt, read_transcoder_set, sites
from transcoders.formats.common import LoadedSet, Target, TranscoderLoadError
from transcoders.formats.sparsify import is_sparsify_dir, read_sparsify
from transcoders.hub import hub_file
from transcoders.model import Transcoder, TranscoderConfig, TranscoderShapeError, build_transcoder
from transcoders.writes import Writer, write_folder

FORMAT_VERSION = 1
# Our sites → circuit-tracer's hooks, for saving (reading maps back: transcoders.formats.circuit_tracer).
SITE_INPUT_HOOK = {"mlp_in": "mlp.hook_in", "resid_mid": "hook_resid_mid"}
SITE_OUTPUT_HOOK = {"mlp_resid": "hook_mlp_out", "mlp_out": "mlp.hook_out"}


class TranscoderModelMismatchError(ValueError):
    """A transcoder set was made for another model."""


# --- saving ---------------------------------------------------------------------------------------


def save_transcoders(tc: Transcoder, path: str | Path, *, dtype: torch.dtype = torch.float32,
                     metadata: dict[str, Any] | None = None) -> Path:
    """Write ``tc`` to the directory ``path`` in circuit-tracer's format (atomically). Returns the path.

    ``tc`` itself is not changed; the saved copy has its normalisation folded in.
    """
    cfg = tc.cfg
    if cfg.input_site not in SITE_INPUT_HOOK or cfg.output_site not in SITE_OUTPUT_HOOK:
        raise ValueError(f"circuit-tracer's format has no hook for sites {cfg.input_site!r} -> {cfg.output_site!r}. "
                         f"Fix: train on input {sorted(SITE_INPUT_HOOK)} and output {sorted(SITE_OUTPUT_HOOK)}.")
    folded = copy.deepcopy(tc).cpu()
    folded.fold_normalisation()
    L = cfg.n_layers

    def t(x: Tensor) -> Tensor:
        return x.detach().to(dtype).contiguous()

    path = Path(path)
    files: dict[str, Writer] = {}
    jump = cfg.activation == "jumprelu"
    topk = cfg.activation in ("topk", "batchtopk")
    for i in range(L):
        if cfg.kind == "plt":
            tensors = {"W_enc": t(folded.W_enc[i].T), "W_dec": t(folded.W_dec[i]),
                       "b_enc": t(folded.b_enc[i]), "b_dec": t(folded.b_dec[i])}
            if jump:
                tensors["activation_function.threshold"] = t(folded.threshold[i])
            if folded.W_skip is not None:
                tensors["W_skip"] = t(folded.W_skip[i].T)
            files[f"layer_{i}.safetensors"] = _safetensors(tensors)
        else:
            enc = {f"W_enc_{i}": t(folded.W_enc[i].T), f"b_enc_{i}": t(folded.b_enc[i]),
                   f"b_dec_{i}": t(folded.b_dec[i])}
            if jump:
                enc[f"threshold_{i}"] = t(folded.threshold[i])
            if folded.W_skip is not None:
                enc[f"W_skip_{i}"] = t(folded.W_skip[i].T)
            files[f"W_enc_{i}.safetensors"] = _safetensors(enc)
            files[f"W_dec_{i}.safetensors"] = _safetensors({f"W_dec_{i}": t(folded.W_dec[i])})
    config = {
        "model_name": cfg.model_name,
        "model_kind": "transcoder_set" if cfg.kind == "plt" else "cross_layer_transcoder",
        "feature_input_hook": SITE_INPUT_HOOK[cfg.input_site],
        "feature_output_hook": SITE_OUTPUT_HOOK[cfg.output_site],
        # Where circuit-tracer's load_transcoders reads them (hf_utils.py: config.get("activation"),
        # config.get("k")). It has no BatchTopK, whose inference is the top k per token: "topk".
        "activation": "topk" if topk else cfg.activation,
        **({"k": cfg.k} if topk else {}),
        "circuit_engine": {"format_version": FORMAT_VERSION, **cfg.to_dict(), **(metadata or {})},
    }
    note = ""
    if topk and cfg.kind == "clt":
        note = (f"# TopK (k={cfg.k}): circuit-tracer's load_clt takes a CLT's activation from its files only "
                "(thresholds: JumpReLU, else ReLU), so it reads this set as ReLU; transcoders.load_transcoders "
                "keeps the top k.\n")
    text = note + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    files["config.yaml"] = lambda p: p.write_text(text)
    # A folder of the engine's own (or a new one): a user's files in it are never replaced.
    write_folder(path, files)
    return path


def read_config(cfg_file: Path) -> dict[str, Any]:
    """A set's config.yaml as a dict, or a clear error for a file that is not one."""
    try:
        config = yaml.safe_load(cfg_file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TranscoderLoadError(f"{cfg_file} is not valid YAML ({str(exc).splitlines()[0]}). Fix: restore the "
                                  "file from where the set came from, or save the set again.") from exc
    if not isinstance(config, dict):
        raise TranscoderLoadError(f"{cfg_file} holds a {type(config).__name__}, not a mapping of settings. Fix: "
                                  "restore the file from where the set came from, or save the set again.")
    return config


def _safetensors(tensors: dict[str, Tensor]) -> Writer:
    return lambda p: save_file(tensors, str(p))


# --- loading --------------------------------------------------------------------------------------


def load_transcoder_dir(path: str | Path, model: Any = None, *, check_model: bool = True,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Transcoder:
    """Load a set from a directory: circuit-tracer's (a ``config.yaml``: what ``save_transcoders`` writes,
    circuit-tracer's published sets, GemmaScope's through a ``transcoders:`` list) or sparsify's
    (hookpoint folders holding ``cfg.json`` and ``sae.safetensors``).

    Every tensor is read straight into its final place on ``device`` in ``dtype``; CLT decoders that
    need no conversion (on the CPU, stored in ``dtype``) stay memory-mapped and are read from disk on
    first use. ``model`` (optional here) is checked against the set's model name and shapes, and is
    needed for sets that read ``ln2.hook_normalized``.
    """
    path = Path(path)
    target = Target(torch.device(device), dtype)
    cfg_file = path / "config.yaml"
    if cfg_file.is_file():
        config = read_config(cfg_file)
        in_hook = sites(config, cfg_file)[2]
        kind = config["model_kind"]
        if kind not in ("transcoder_set", "cross_layer_transcoder"):
            raise TranscoderLoadError(f"{cfg_file} has model_kind {kind!r}; expected 'transcoder_set' (per-layer) "
                                      "or 'cross_layer_transcoder'.")
        if model is not None and check_model:  # before reading gigabytes of weights
            check_model_name(config.get("model_name"), model, where=str(cfg_file))
        loaded = (read_transcoder_set(path, config, cfg_file, target, _resolve) if kind == "transcoder_set"
                  else read_clt(path, config, cfg_file, target))
    elif is_sparsify_dir(path):
        in_hook, loaded = None, read_sparsify(path, target)
        if model is not None and check_model:
            check_model_name(loaded.model_name, model, where=str(path / "config.json"))
    else:
        raise TranscoderLoadError(f"{path} has no config.yaml (circuit-tracer's format) and no hookpoint folders "
                                  "with cfg.json (sparsify's), so it is not a transcoder set. Fix: pass the "
                                  "directory that save_transcoders, `transcoders train` or sparsify wrote.")
    tc = _build(loaded, target, path)
    if in_hook == "ln2.hook_normalized":
        if model is None:
            raise TranscoderLoadError(f"{path} reads ln2.hook_normalized (the residual normalised before the norm's "
                                      "weight). Fix: pass the model, whose norm weight is folded into the encoder.")
        fold_input_norm(tc, model)
    if model is not None:
        check_fits(tc, model)
    return tc.eval()


def _build(s: LoadedSet, target: Target, path: Path) -> Transcoder:
    """A ``Transcoder`` around the loaded tensors (assigned, not copied)."""
    L, D, F = s.W_enc.shape
    cfg = TranscoderConfig(
        kind=s.kind, n_layers=L, d_model=D, d_features=F, activation=s.activation, k=int(s.k or 32),
        skip=s.W_skip is not None, jumprelu_bandwidth=float(s.extra.get("jumprelu_bandwidth", 0.1)),
        model_name=s.model_name, input_site=s.input_site, output_site=s.output_site)
    with torch.device("meta"):
        tc = build_transcoder(cfg)
    ones = torch.ones(L, device=target.device, dtype=target.dtype)
    state = {"W_enc": s.W_enc, "b_enc": s.b_enc, "b_dec": s.b_dec, "input_scale": ones, "output_scale": ones.clone()}
    if s.threshold is not None:
        if (s.threshold < 0).any():
            raise TranscoderLoadError(f"{path} holds negative JumpReLU thresholds, which this engine does not "
                                      "support (it stores log thresholds). Fix: clamp them at 0 before saving.")
        state["log_threshold"] = s.threshold.log_()  # the loader's own tensor: no copy
    else:  # unused by TopK and ReLU
        state["log_threshold"] = torch.full((L, F), math.log(cfg.jumprelu_init_threshold), device=target.device,
                                            dtype=target.dtype)
    if s.W_skip is not None:
        state["W_skip"] = s.W_skip
    if cfg.kind == "plt":
        state["W_dec"] = s.W_dec
    else:
        state.update({f"W_dec.{i}": w for i, w in enumerate(s.W_dec)})
    tc.load_state_dict(state, assign=True)
    tc.log_threshold.requires_grad_(s.activation == "jumprelu")
    return tc


# --- checks against a model -----------------------------------------------------------------------


def _canonical(name: str | None) -> str:
    return (name or "").rstrip("/").split("/")[-1].lower().removesuffix(".gguf")


def check_model_name(saved: str | None, model: Any, where: str) -> None:
    """Refuse a set whose config names another model (compared by the name after the last ``/``)."""
    if saved and _canonical(saved) != _canonical(model.name):
        raise TranscoderModelMismatchError(
            f"{where} was made for model {saved!r}, but the model is {model.name!r}. Fix: load the model it was "
            f"made for (load_model({saved!r})), or pass check_model=False if you know the two are the same.")


def check_fits(tc: Transcoder, model: Any) -> None:
    """Refuse a set whose layer count or width does not fit ``model``."""
    dims = model.dims
    if (tc.cfg.n_layers, tc.cfg.d_model) != (dims.n_layers, dims.d_model):
        raise TranscoderShapeError(
            f"the transcoders have {tc.cfg.n_layers} layers of d_model={tc.cfg.d_model}, but {model.name} has "
            f"{dims.n_layers} layers of d_model={dims.d_model}. Fix: load a set trained on this model, "
            "or train one: `transcoders train --model ...`.")


@torch.no_grad()
def fold_input_norm(tc: Transcoder, model: Any) -> None:
    """Make a set that reads the normalised residual *before* the norm's affine map read ``mlp_in``.

    ``mlp_in = n * g + b`` for the normalised residual ``n``; so ``n = (mlp_in - b) / g`` and the
    encoder (and skip) absorb ``1/g`` and the shift. ``g``, ``b`` are read off the norm module by
    feeding it ``±c·e`` (``e`` a zero-mean, unit-RMS vector), which works for RMSNorm, Gemma's ``1 + w``
    RMSNorm and LayerNorm alike. ``c = 1024``: the norm's ``eps`` is then ``eps / c²`` of the variance
    (lost entirely in float32), and a power of two scales without rounding, so ``g`` is the gain the
    norm applies in the forward pass, not ``g / sqrt(1 + eps)``.
    """
    D = tc.cfg.d_model
    e = torch.ones(D)
    e[1::2] = -1
    c = 1024.0
    for layer in range(tc.cfg.n_layers):
        norm = model.norm("ln_mlp", layer)
        p = next(norm.parameters())
        probe = torch.stack([c * e, -c * e]).to(p.device, p.dtype)
        # g and b where the encoder is (the set may already be on the GPU), in its dtype.
        plus, minus = norm(probe).to(tc.W_enc.device, tc.W_enc.dtype)
        e_here = e.to(plus.device, plus.dtype)
        g, b = (plus - minus) / (2 * e_here), (plus + minus) / 2
        if (g.abs() < 1e-8).any():
            raise TranscoderLoadError(f"the model's ln_mlp norm at layer {layer} has zero weights, so a set reading "
                                      "ln2.hook_normalized cannot be moved onto mlp_in.")
        W = tc.W_enc[layer] / g[:, None]  # [D, F]
        tc.b_enc[layer] -= b @ W
        tc.W_enc[layer] = W
        if tc.W_skip is not None:
            Ws = tc.W_skip[layer] / g[:, None]
            tc.b_dec[layer] -= b @ Ws
            tc.W_skip[layer] = Ws
    tc.cfg.input_site = "mlp_in"


# --- paths in a config ----------------------------------------------------------------------------


def _resolve(p: str, base: Path) -> Path:
    """A path from a config's ``transcoders:`` list: ``hf://`` (downloaded), absolute, or relative to the set."""
    if str(p).startswith("hf://"):
        return hub_file(p, base / "config.yaml")
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q
