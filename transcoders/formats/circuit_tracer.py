"""circuit-tracer's sets: a folder with ``config.yaml`` and safetensors files.

Follows ``decoderesearch/circuit-tracer`` (safety-research/circuit-tracer's current home) at
4bb8c0e (2026-04-18), which reads TopK sets (#94, after the PyPI release 0.5.0, which read them
as ReLU):

- ``circuit_tracer/utils/hf_utils.py``, ``load_transcoders``: ``model_kind: transcoder_set`` goes to
  ``load_transcoder_set(..., activation=config.get("activation"), k=config.get("k"))``: both at the
  *top level* of config.yaml. ``cross_layer_transcoder`` goes to ``load_clt``, which takes no
  activation. ``resolve_transcoder_paths``: the config's ``transcoders:`` list (``hf://`` or local
  paths, list index = layer), else ``layer_{i}.safetensors`` for i below the number of such files.
- ``circuit_tracer/transcoder/single_layer_transcoder.py``, ``load_transcoder_set``: ``"topk"`` →
  ``TopK(k)`` (k required; 128 hard-coded for facebook/crv-8b-instruct-transcoders), ``"relu"`` → ReLU,
  anything else → per file (``load_transcoder``): JumpReLU on ``activation_function.threshold`` when
  the file holds it, else ReLU. ``SingleLayerTranscoder``: ``W_enc [d_features, d_model]`` (applied as
  ``F.linear``), ``W_dec [d_features, d_model]``, ``b_enc``, ``b_dec``, ``W_skip [d_model(out),
  d_model(in)]`` (``input @ W_skip.T``); ``to_safetensors`` writes a 0-d ``k`` beside a TopK's weights.
- ``circuit_tracer/transcoder/cross_layer_transcoder.py``, ``_load_state_dict`` / ``to_safetensors``:
  ``W_enc_{i}.safetensors`` holds ``W_enc_{i} [d_features, d_model]``, ``b_enc_{i}``, ``b_dec_{i}`` and
  ``threshold_{i} [d_features]`` (JumpReLU when ``threshold_0`` exists, else ReLU);
  ``W_dec_{i}.safetensors`` holds ``W_dec_{i} [d_features, n_layers - i, d_model]``; n_layers is the
  number of ``W_enc_*.safetensors`` files. Decoders are lazy there (``lazy_decoder=True``): read from
  the file per use. Here they are memory-mapped (``transcoders.formats.mapped``) when no conversion
  is needed, which pages them in on first use and never holds them twice.
- ``circuit_tracer/transcoder/activation_functions.py``: JumpReLU is ``x * (x > threshold)``; TopK
  keeps the k largest pre-activations with no ReLU (``x * gate``). Ours (``transcoders.activations.topk``)
  also zeroes the negative ones among the k; the two agree whenever k pre-activations are positive.

Where we differ, on purpose: an activation name circuit-tracer would quietly treat as "look at the
files" raises here; k may also come from the ``circuit_engine:`` block (sets we saved before k moved
to the top level) or from a ``k`` tensor in the files; a CLT's ``activation``/``k`` are read (circuit-
tracer reads every CLT without thresholds as ReLU); our CLT skip ``W_skip_{i} [d_model(out),
d_model(in)]``, which circuit-tracer does not read, is read.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transcoders.formats.common import LoadedSet, Target, TranscoderLoadError, fill, keep, require
from transcoders.formats.gemma_scope import gemma_scope_2_layer, is_gemma_scope_2, npz_layer
from transcoders.formats.layers import Layer, Part, stack_layers
from transcoders.formats.mapped import MappedFile

# TransformerLens hook names (as circuit-tracer writes them) → our sites (circuits/models/arch.py).
# hook_resid_mid: the residual entering the MLP's norm (circuit-tracer's published CLTs read it);
# ln2.hook_normalized (GemmaScope): the residual normalised before the norm's weight, moved onto
# mlp_in at load by folding the model's norm weight into the encoder (transcoders.io.fold_input_norm).
INPUT_HOOKS = {"mlp.hook_in": "mlp_in", "hook_resid_mid": "resid_mid", "ln2.hook_normalized": "mlp_in"}
OUTPUT_HOOKS = {"hook_mlp_out": "mlp_resid", "mlp.hook_out": "mlp_out"}
# config.yaml's activation (top level) → ours. circuit-tracer itself tests only "topk" and "relu".
ACTIVATIONS = {"topk": "topk", "relu": "relu", "jumprelu": "jumprelu", "jump_relu": "jumprelu"}
OUR_ACTIVATIONS = ("jumprelu", "topk", "batchtopk", "relu")
# Sets whose config.yaml says topk without k, and the k circuit-tracer's load_transcoder_set uses for them.
KNOWN_K = {"facebook/crv-8b-instruct-transcoders": 128}


def hook_name(hook: str) -> str:
    """``blocks.{layer}.mlp.hook_in`` / ``blocks.3.mlp.hook_in`` → ``mlp.hook_in``."""
    return re.sub(r"^blocks\.(\{layer\}|\d+)\.", "", str(hook))


def sites(config: dict[str, Any], cfg_file: Path) -> tuple[str, str, str]:
    """``(input site, output site, input hook)`` of a config."""
    for key in ("model_kind", "feature_input_hook", "feature_output_hook"):
        if key not in config:
            raise TranscoderLoadError(f"{cfg_file} lacks {key!r}. Fix: add it (see circuit-tracer's config.yaml).")
    in_hook, out_hook = hook_name(config["feature_input_hook"]), hook_name(config["feature_output_hook"])
    if in_hook not in INPUT_HOOKS or out_hook not in OUTPUT_HOOKS:
        raise TranscoderLoadError(
            f"{cfg_file} reads {config['feature_input_hook']!r} and writes {config['feature_output_hook']!r}; "
            f"supported: inputs {sorted(INPUT_HOOKS)}, outputs {sorted(OUTPUT_HOOKS)}. "
            "Fix: map the hook to a site of circuits/models/arch.py in transcoders/formats/circuit_tracer.py.")
    return INPUT_HOOKS[in_hook], OUTPUT_HOOKS[out_hook], in_hook


def activation(config: dict[str, Any], cfg_file: Path, *, has_threshold: bool, file_k: int | None,
               repo_id: str | None) -> tuple[str, int | None]:
    """The set's activation and k: config.yaml's top-level ``activation``/``k`` (circuit-tracer's),
    refined by our ``circuit_engine:`` block (BatchTopK, which circuit-tracer reads as TopK), else
    JumpReLU when the files hold thresholds and ReLU when not, as circuit-tracer infers it."""
    ours = config.get("circuit_engine") or {}
    top, mine = config.get("activation"), ours.get("activation")
    accepted = ("'topk' (with a top-level k), 'relu', 'jumprelu' (or 'jump_relu'), or no activation key "
                "(JumpReLU when the files hold thresholds, else ReLU)")
    if top is not None and top not in ACTIVATIONS:
        raise TranscoderLoadError(f"{cfg_file} has activation: {top!r}, which is not an activation circuit-tracer "
                                  f"reads. Accepted: {accepted}. Fix: set activation to one of them.")
    if mine is not None and mine not in OUR_ACTIVATIONS:
        raise TranscoderLoadError(f"{cfg_file} has circuit_engine.activation: {mine!r}; accepted: "
                                  f"{list(OUR_ACTIVATIONS)}. Fix: set it to one of them, or delete it.")
    name = ACTIVATIONS.get(top) if top is not None else None
    if name and mine and not (name == mine or (name == "topk" and mine == "batchtopk")):
        raise TranscoderLoadError(f"{cfg_file} says activation: {top!r} at the top level but {mine!r} under "
                                  "circuit_engine. Fix: make them agree (BatchTopK sets say topk at the top level).")
    name = mine or name or ("jumprelu" if has_threshold else "relu")
    if name not in ("topk", "batchtopk"):
        return name, None
    given = {"config.yaml's k": config.get("k"), "circuit_engine.k": ours.get("k"), "the layer files' k": file_k}
    given = {where: int(k) for where, k in given.items() if k is not None}
    if len(set(given.values())) > 1:
        raise TranscoderLoadError(f"{cfg_file}: the TopK k disagrees: {given}. Fix: keep one value (top-level k).")
    if given:
        return name, next(iter(given.values()))
    if repo_id in KNOWN_K:
        warnings.warn(f"{repo_id} is a TopK set whose config.yaml gives no k; using k={KNOWN_K[repo_id]}, as "
                      "circuit-tracer does for it.", stacklevel=3)
        return name, KNOWN_K[repo_id]
    raise TranscoderLoadError(f"{cfg_file} says activation: topk but gives no k (the number of features kept per "
                              "token). Fix: add a top-level `k: <number>` to config.yaml, where circuit-tracer "
                              "reads it.")


def hub_repo_of(path: Path) -> str | None:
    """``org/name`` of a folder in the Hugging Face hub cache (``…/models--org--name/snapshots/rev/…``)."""
    for part in path.resolve().parts:
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/", 1)
    return None


# --- per-layer sets (PLT) -------------------------------------------------------------------------


def read_transcoder_set(path: Path, config: dict[str, Any], cfg_file: Path, target: Target,
                        resolve: Callable[[str, Path], Path]) -> LoadedSet:
    """``model_kind: transcoder_set``: ``layer_{i}.safetensors``, or the files a ``transcoders:`` list names
    (circuit-tracer's, GemmaScope's ``.npz``, GemmaScope-2's safetensors); ``resolve`` fetches ``hf://`` ones."""
    files = plt_files(path, config, resolve)
    if not files:
        raise TranscoderLoadError(f"{path} holds no layer_*.safetensors files. Fix: point at a complete set.")
    tensors, layers = stack_layers(len(files), lambda i: plt_layer(files[i]), target)
    file_ks = {layer.k for layer in layers}
    if len(file_ks) > 1:
        raise TranscoderLoadError(f"the layer files of {path} hold different TopK k {sorted(map(str, file_ks))}. "
                                  "Fix: re-save the set with one k.")
    return _loaded("plt", tensors, tensors.pop("W_dec"), config, cfg_file, path, file_ks.pop())


def plt_files(path: Path, config: dict[str, Any], resolve: Callable[[str, Path], Path]) -> list[Path]:
    if "transcoders" not in config:
        found = indexed(path, r"layer_(\d+)\.safetensors")
        return [path / f"layer_{i}.safetensors" for i in range(count(found, config, path, "layer_{}.safetensors"))]
    entries = config["transcoders"]
    if not isinstance(entries, list):
        raise TranscoderLoadError(f"{path / 'config.yaml'}: transcoders: should list one file per layer. "
                                  "Fix: write it as a YAML list of paths or hf:// addresses.")
    if entries and all(isinstance(e, dict) for e in entries):
        # circuit-tracer 0.1's configs: [{id, layer, filepath}, ...]
        try:
            entries = [e["filepath"] for e in sorted(entries, key=lambda e: int(e.get("layer", 0)))]
        except KeyError as exc:
            raise TranscoderLoadError(f"{path / 'config.yaml'}: a transcoders: entry lacks 'filepath'. "
                                      "Fix: give every entry a filepath (or list plain paths).") from exc
    return [resolve(str(p), path) for p in entries]


def plt_layer(file: Path) -> Layer:
    if not file.is_file():
        raise TranscoderLoadError(f"missing layer file {file}. Fix: copy or download the complete set.")
    if file.suffix == ".npz":
        return npz_layer(file)
    f = MappedFile(file)
    if is_gemma_scope_2(f):
        return gemma_scope_2_layer(file, f)
    if "log_thresholds" in f:
        raise TranscoderLoadError(f"{file} stores log_thresholds, which circuit-tracer does not read either. "
                                  "Fix: save exp(log_thresholds) as activation_function.threshold.")
    require(["W_enc", "W_dec", "b_enc", "b_dec"], f, file, "re-save the set.")
    parts = {"W_enc": Part(f["W_enc"], True, "W_enc"), "W_dec": Part(f["W_dec"], False, "W_dec"),
             "b_enc": Part(f["b_enc"], False, "b_enc"), "b_dec": Part(f["b_dec"], False, "b_dec")}
    for key in ("activation_function.threshold", "threshold"):
        if key in f:
            parts["threshold"] = Part(f[key].reshape(-1), False, key)
            break
    if "W_skip" in f:
        parts["W_skip"] = Part(f["W_skip"], True, "W_skip")
    return Layer(file, parts, f, k=int(f["k"]) if "k" in f else None)


# --- cross-layer sets (CLT) -----------------------------------------------------------------------


def read_clt(path: Path, config: dict[str, Any], cfg_file: Path, target: Target) -> LoadedSet:
    """``model_kind: cross_layer_transcoder``: ``W_enc_{i}`` / ``W_dec_{i}.safetensors``. Decoders that need
    no conversion stay memory-mapped (read on first use); the others are copied once into their tensor."""
    if "transcoders" in config:
        raise TranscoderLoadError(f"{cfg_file} lists per-layer files for a cross-layer transcoder (GemmaScope-2's "
                                  "CLT format, circuit-tracer's load_gemma_scope_2_clt), which this reader does not "
                                  "support yet. Fix: convert it with circuit-tracer's save_transcoders_to_cache, "
                                  "which writes W_enc_{i}/W_dec_{i}.safetensors.")
    L = count(indexed(path, r"W_enc_(\d+)\.safetensors"), config, path, "W_enc_{}.safetensors")
    for i in range(L):
        for f in (path / f"W_enc_{i}.safetensors", path / f"W_dec_{i}.safetensors"):
            if not f.is_file():
                raise TranscoderLoadError(f"missing layer file {f}. Fix: copy or download the complete set.")
    tensors, _ = stack_layers(L, lambda i: _clt_encoder(path, i), target)
    _, D, F = tensors["W_enc"].shape
    W_dec = []
    for i in range(L):
        file, key = path / f"W_dec_{i}.safetensors", f"W_dec_{i}"
        f = MappedFile(file)
        shape = f.shape(key) if key in f else None
        if shape != (F, L - i, D):
            raise TranscoderLoadError(f"{file} should hold {key} [d_features={F}, {L - i}, d_model={D}], got "
                                      f"{None if shape is None else list(shape)}. Fix: re-save the set.")
        w = f[key]
        if target.device.type == "cpu" and w.dtype == target.dtype:
            W_dec.append(keep(w, source=f, where=file, key=key))
        else:
            W_dec.append(target.empty(*shape))
            fill(W_dec[-1], w, source=f, where=file, key=key)
    return _loaded("clt", tensors, W_dec, config, cfg_file, path, None)


def _clt_encoder(path: Path, i: int) -> Layer:
    file = path / f"W_enc_{i}.safetensors"
    f = MappedFile(file)
    require([f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"], f, file, "re-save the set.")
    parts = {"W_enc": Part(f[f"W_enc_{i}"], True, f"W_enc_{i}"), "b_enc": Part(f[f"b_enc_{i}"], False, f"b_enc_{i}"),
             "b_dec": Part(f[f"b_dec_{i}"], False, f"b_dec_{i}")}
    if f"threshold_{i}" in f:  # [d_features] (circuit-tracer squeezes its [1, d_features] when saving)
        parts["threshold"] = Part(f[f"threshold_{i}"].reshape(-1), False, f"threshold_{i}")
    if f"W_skip_{i}" in f:  # ours; circuit-tracer's CLTs have no skip on disk
        parts["W_skip"] = Part(f[f"W_skip_{i}"], True, f"W_skip_{i}")
    return Layer(file, parts, f)


# --- shared ---------------------------------------------------------------------------------------


def _loaded(kind: str, tensors: dict, W_dec: Any, config: dict[str, Any], cfg_file: Path, path: Path,
            file_k: int | None) -> LoadedSet:
    input_site, output_site, _ = sites(config, cfg_file)
    name, k = activation(config, cfg_file, has_threshold="threshold" in tensors, file_k=file_k,
                         repo_id=hub_repo_of(path))
    if name == "jumprelu" and "threshold" not in tensors:
        raise TranscoderLoadError(f"{path} is marked JumpReLU but holds no thresholds. Fix: re-save it, or set "
                                  "activation: relu in config.yaml if it is a ReLU set.")
    ours = config.get("circuit_engine") or {}
    return LoadedSet(kind=kind, W_enc=tensors["W_enc"], b_enc=tensors["b_enc"], b_dec=tensors["b_dec"], W_dec=W_dec,
                     activation=name, k=k, threshold=tensors.get("threshold") if name == "jumprelu" else None,
                     W_skip=tensors.get("W_skip"), input_site=input_site, output_site=output_site,
                     model_name=config.get("model_name"),
                     extra={k: ours[k] for k in ("jumprelu_bandwidth",) if k in ours})


def indexed(path: Path, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for f in path.iterdir() if (m := rx.fullmatch(f.name))} if path.is_dir() else set()


def count(found: set[int], config: dict[str, Any], path: Path, name: str) -> int:
    """The number of layers, from our metadata or from the files; a gap names the missing file."""
    n = int((config.get("circuit_engine") or {}).get("n_layers", 0)) or (max(found) + 1 if found else 0)
    missing = sorted(set(range(n)) - found)
    if missing:
        raise TranscoderLoadError(f"missing layer file {path / name.format(missing[0])}"
                                  f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}. "
                                  "Fix: copy or download the complete set.")
    return n
