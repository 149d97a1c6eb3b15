"""Save and load transcoder sets in circuit-tracer's on-disk format.

A set is a directory with a ``config.yaml`` and safetensors files, read exactly as
circuit-tracer's loaders (``circuit_tracer/utils/hf_utils.py``,
``transcoder/single_layer_transcoder.py``, ``transcoder/cross_layer_transcoder.py``) read them:

``model_kind: transcoder_set`` (PLT): ``layer_{i}.safetensors`` per layer, holding
    ``W_enc [d_features, d_model]`` (their encoder is ``F.linear(x, W_enc, b_enc)``),
    ``W_dec [d_features, d_model]``, ``b_enc [d_features]``, ``b_dec [d_model]``,
    ``activation_function.threshold [d_features]`` for JumpReLU (absent: ReLU), and
    ``W_skip [d_model(out), d_model(in)]`` (their skip is ``x @ W_skip.T``). A config may
    instead list files under ``transcoders:`` (local or ``hf://`` paths), which is how the
    GemmaScope sets are published: ``.npz`` files with ``W_enc [d_model, d_features]`` and
    ``threshold``; GemmaScope-2 safetensors use ``w_enc [d_model, d_features]``, ``w_dec``
    and ``affine_skip_connection [d_model(in), d_model(out)]``.
``model_kind: cross_layer_transcoder`` (CLT): ``W_enc_{i}.safetensors`` holding ``W_enc_{i}
    [d_features, d_model]``, ``b_enc_{i}``, ``b_dec_{i}`` and ``threshold_{i}`` (JumpReLU), and
    ``W_dec_{i}.safetensors`` holding ``W_dec_{i} [d_features, n_layers - i, d_model]``.

Hook names are TransformerLens names, as circuit-tracer writes them; ours map to sites:
``mlp.hook_in`` → ``mlp_in``, ``hook_mlp_out`` → ``mlp_resid``, ``mlp.hook_out`` → ``mlp_out``,
``hook_resid_mid`` → ``resid_mid`` (the residual entering the MLP's norm; circuit-tracer's
CLTs read it), and ``ln2.hook_normalized`` (GemmaScope: the normalised residual before the
norm's weight) → ``mlp_in``, with the model's norm weight folded into the encoder at load.

Weights are saved with the normalisation folded in. What circuit-tracer cannot express is
kept under a ``circuit_engine:`` key it ignores: TopK's k (circuit-tracer would read a TopK
set as ReLU), and a CLT's skip (saved as ``W_skip_{i}``, which circuit-tracer does not read).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from transcoders.cache import atomic_path, cache_dir, hub_reachable
from transcoders.harvest import NonFiniteError
from transcoders.model import Transcoder, TranscoderConfig, TranscoderShapeError, build_transcoder

FORMAT_VERSION = 1
INPUT_HOOKS = {"mlp.hook_in": "mlp_in", "hook_resid_mid": "resid_mid", "ln2.hook_normalized": "mlp_in"}
OUTPUT_HOOKS = {"hook_mlp_out": "mlp_resid", "mlp.hook_out": "mlp_out"}
SITE_INPUT_HOOK = {"mlp_in": "mlp.hook_in", "resid_mid": "hook_resid_mid"}
SITE_OUTPUT_HOOK = {"mlp_resid": "hook_mlp_out", "mlp_out": "mlp.hook_out"}


class TranscoderLoadError(ValueError):
    """A transcoder set is missing, incomplete or malformed."""


class TranscoderModelMismatchError(ValueError):
    """A transcoder set was made for another model."""


class HubUnavailableError(ConnectionError):
    """An ``hf://`` set was asked for and the Hugging Face hub cannot be reached."""


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
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        jump = cfg.activation == "jumprelu"
        for i in range(L):
            if cfg.kind == "plt":
                tensors = {"W_enc": t(folded.W_enc[i].T), "W_dec": t(folded.W_dec[i]),
                           "b_enc": t(folded.b_enc[i]), "b_dec": t(folded.b_dec[i])}
                if jump:
                    tensors["activation_function.threshold"] = t(folded.threshold[i])
                if folded.W_skip is not None:
                    tensors["W_skip"] = t(folded.W_skip[i].T)
                save_file(tensors, str(tmp / f"layer_{i}.safetensors"))
            else:
                enc = {f"W_enc_{i}": t(folded.W_enc[i].T), f"b_enc_{i}": t(folded.b_enc[i]),
                       f"b_dec_{i}": t(folded.b_dec[i])}
                if jump:
                    enc[f"threshold_{i}"] = t(folded.threshold[i])
                if folded.W_skip is not None:
                    enc[f"W_skip_{i}"] = t(folded.W_skip[i].T)
                save_file(enc, str(tmp / f"W_enc_{i}.safetensors"))
                save_file({f"W_dec_{i}": t(folded.W_dec[i])}, str(tmp / f"W_dec_{i}.safetensors"))
        config = {
            "model_name": cfg.model_name,
            "model_kind": "transcoder_set" if cfg.kind == "plt" else "cross_layer_transcoder",
            "feature_input_hook": SITE_INPUT_HOOK[cfg.input_site],
            "feature_output_hook": SITE_OUTPUT_HOOK[cfg.output_site],
            "circuit_engine": {"format_version": FORMAT_VERSION, **cfg.to_dict(), **(metadata or {})},
        }
        note = ""
        if cfg.activation in ("topk", "batchtopk"):
            note = (f"# TopK (k={cfg.k}): circuit-tracer reads this set as ReLU; "
                    "load it with transcoders.load_transcoders to keep the top k.\n")
        (tmp / "config.yaml").write_text(note + yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
    return path


# --- loading --------------------------------------------------------------------------------------


def load_transcoder_dir(path: str | Path, model: Any = None, *, check_model: bool = True,
                        dtype: torch.dtype = torch.float32) -> Transcoder:
    """Load a set saved by ``save_transcoders`` or published for circuit-tracer, from a directory.

    ``model`` (optional here) is checked against the config's model name and the tensors'
    shapes, and is needed for sets that read ``ln2.hook_normalized``.
    """
    path = Path(path)
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise TranscoderLoadError(f"{path} has no config.yaml, so it is not a transcoder set. "
                                  "Fix: pass the directory that save_transcoders or `transcoders train` wrote.")
    config = yaml.safe_load(cfg_file.read_text()) or {}
    for key in ("model_kind", "feature_input_hook", "feature_output_hook"):
        if key not in config:
            raise TranscoderLoadError(f"{cfg_file} lacks {key!r}. Fix: add it (see circuit-tracer's config.yaml).")
    if model is not None and check_model:
        check_model_name(config.get("model_name"), model, where=str(cfg_file))
    in_hook, out_hook = _hook_name(config["feature_input_hook"]), _hook_name(config["feature_output_hook"])
    if in_hook not in INPUT_HOOKS or out_hook not in OUTPUT_HOOKS:
        raise TranscoderLoadError(
            f"{cfg_file} reads {config['feature_input_hook']!r} and writes {config['feature_output_hook']!r}; "
            f"supported: inputs {sorted(INPUT_HOOKS)}, outputs {sorted(OUTPUT_HOOKS)}. "
            "Fix: map the hook to a site of circuits/models/arch.py here in transcoders/io.py.")
    ours = config.get("circuit_engine") or {}
    kind = config["model_kind"]
    if kind == "transcoder_set":
        weights = _read_plt(path, config)
    elif kind == "cross_layer_transcoder":
        weights = _read_clt(path)
    else:
        raise TranscoderLoadError(f"{cfg_file} has model_kind {kind!r}; expected 'transcoder_set' (per-layer) "
                                  "or 'cross_layer_transcoder'.")
    weights = {k: [w.to(dtype) for w in v] if isinstance(v, list) else v.to(dtype) for k, v in weights.items()}
    L, D, F = weights["W_enc"].shape
    has_threshold = "threshold" in weights
    activation = ours.get("activation") or ("jumprelu" if has_threshold else "relu")
    if activation == "jumprelu" and not has_threshold:
        raise TranscoderLoadError(f"{path} is marked JumpReLU but holds no thresholds. Fix: re-save it.")
    tc_cfg = TranscoderConfig(
        kind="plt" if kind == "transcoder_set" else "clt", n_layers=L, d_model=D, d_features=F,
        activation=activation, k=int(ours.get("k", 32)), skip="W_skip" in weights,
        jumprelu_bandwidth=float(ours.get("jumprelu_bandwidth", 0.1)), model_name=config.get("model_name"),
        input_site=INPUT_HOOKS[in_hook], output_site=OUTPUT_HOOKS[out_hook])
    with torch.device("meta"):
        tc = build_transcoder(tc_cfg)
    state = {"W_enc": weights["W_enc"], "b_enc": weights["b_enc"], "b_dec": weights["b_dec"],
             "input_scale": torch.ones(L, dtype=dtype), "output_scale": torch.ones(L, dtype=dtype)}
    if has_threshold:
        thr = weights["threshold"]
        if (thr < 0).any():
            raise TranscoderLoadError(f"{path} holds negative JumpReLU thresholds, which this engine does not "
                                      "support (it stores log thresholds). Fix: clamp them at 0 before saving.")
        state["log_threshold"] = thr.log()
    else:
        state["log_threshold"] = torch.full((L, F), math.log(tc_cfg.jumprelu_init_threshold), dtype=dtype)  # unused
    if "W_skip" in weights:
        state["W_skip"] = weights["W_skip"]
    if tc_cfg.kind == "plt":
        state["W_dec"] = weights["W_dec"]
    else:
        state.update({f"W_dec.{i}": w for i, w in enumerate(weights["W_dec"])})
    tc.load_state_dict(state, assign=True)
    tc.log_threshold.requires_grad_(activation == "jumprelu")
    if in_hook == "ln2.hook_normalized":
        if model is None:
            raise TranscoderLoadError(f"{path} reads ln2.hook_normalized (the residual normalised before the norm's "
                                      "weight). Fix: pass the model, whose norm weight is folded into the encoder.")
        fold_input_norm(tc, model)
    if model is not None:
        check_fits(tc, model)
    return tc.eval()


def _read_plt(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Stack the per-layer files into our layout (``W_enc [L, D, F]``, ``W_skip [L, D_in, D_out]``, …)."""
    if "transcoders" in config:
        files = [_resolve(p, path) for p in config["transcoders"]]
    else:
        found = _indexed(path, r"layer_(\d+)\.safetensors")
        files = [path / f"layer_{i}.safetensors" for i in range(_count(found, config, path, "layer_{}.safetensors"))]
    layers = [_read_plt_layer(f) for f in files]
    if not layers:
        raise TranscoderLoadError(f"{path} holds no layer_*.safetensors files. Fix: point at a complete set.")
    out: dict[str, Any] = {}
    for key in layers[0]:
        if any(key not in layer for layer in layers):
            raise TranscoderLoadError(f"some layers of {path} have {key!r} and some do not. Fix: re-save the set.")
        try:
            out[key] = torch.stack([layer[key] for layer in layers])
        except RuntimeError as exc:
            raise TranscoderLoadError(f"the layers of {path} disagree in the shape of {key!r} ({exc}). "
                                      "Fix: every layer must have the same width.") from exc
    return out


def _read_plt_layer(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise TranscoderLoadError(f"missing layer file {file}. Fix: copy or download the complete set.")
    if file.suffix == ".npz":  # GemmaScope: numpy, encoder already [d_model, d_features]
        raw = {k: torch.from_numpy(np.asarray(v)) for k, v in np.load(file).items()}
        _check_finite(raw, file)
        return {"W_enc": raw["W_enc"], "W_dec": raw["W_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"],
                "threshold": raw["threshold"]}
    raw = _read_safetensors(file)
    if "w_enc" in raw:  # GemmaScope-2
        out = {"W_enc": raw["w_enc"], "W_dec": raw["w_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"],
               "threshold": raw["threshold"]}
        if "affine_skip_connection" in raw:
            out["W_skip"] = raw["affine_skip_connection"]
        return out
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec") if k not in raw]
    if missing:
        raise TranscoderLoadError(f"{file} lacks {missing} (it has {sorted(raw)}). Fix: re-save the set.")
    if "log_thresholds" in raw:
        raise TranscoderLoadError(f"{file} stores log_thresholds, which circuit-tracer does not read either. "
                                  "Fix: save exp(log_thresholds) as activation_function.threshold.")
    out = {"W_enc": raw["W_enc"].T, "W_dec": raw["W_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"]}
    thr = raw.get("activation_function.threshold", raw.get("threshold"))
    if thr is not None:
        out["threshold"] = thr.reshape(-1)
    if "W_skip" in raw:
        out["W_skip"] = raw["W_skip"].T
    return out


def _read_clt(path: Path) -> dict[str, Any]:
    found = _indexed(path, r"W_enc_(\d+)\.safetensors")
    L = _count(found, {}, path, "W_enc_{}.safetensors")
    W_enc, b_enc, b_dec, thr, skip, W_dec = [], [], [], [], [], []
    for i in range(L):
        enc_file, dec_file = path / f"W_enc_{i}.safetensors", path / f"W_dec_{i}.safetensors"
        for f in (enc_file, dec_file):
            if not f.is_file():
                raise TranscoderLoadError(f"missing layer file {f}. Fix: copy or download the complete set.")
        enc = _read_safetensors(enc_file)
        for key in (f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"):
            if key not in enc:
                raise TranscoderLoadError(f"{enc_file} lacks {key!r} (it has {sorted(enc)}). Fix: re-save the set.")
        W_enc.append(enc[f"W_enc_{i}"].T)
        b_enc.append(enc[f"b_enc_{i}"])
        b_dec.append(enc[f"b_dec_{i}"])
        if f"threshold_{i}" in enc:
            thr.append(enc[f"threshold_{i}"].reshape(-1))
        if f"W_skip_{i}" in enc:
            skip.append(enc[f"W_skip_{i}"].T)
        dec = _read_safetensors(dec_file)
        w = dec.get(f"W_dec_{i}")
        if w is None or w.ndim != 3 or w.shape[1] != L - i:
            raise TranscoderLoadError(
                f"{dec_file} should hold W_dec_{i} [d_features, {L - i}, d_model], "
                f"got {None if w is None else tuple(w.shape)}. Fix: re-save the set.")
        W_dec.append(w)
    out: dict[str, Any] = {"W_enc": torch.stack(W_enc), "b_enc": torch.stack(b_enc), "b_dec": torch.stack(b_dec),
                           "W_dec": W_dec}
    for name, parts in (("threshold", thr), ("W_skip", skip)):
        if parts and len(parts) != L:
            raise TranscoderLoadError(f"only some layers of {path} hold {name}. Fix: re-save the set.")
        if parts:
            out[name] = torch.stack(parts)
    return out


def _indexed(path: Path, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for f in path.iterdir() if (m := rx.fullmatch(f.name))} if path.is_dir() else set()


def _count(found: set[int], config: dict[str, Any], path: Path, name: str) -> int:
    """The number of layers, from our metadata or from the files; a gap names the missing file."""
    n = int((config.get("circuit_engine") or {}).get("n_layers", 0)) or (max(found) + 1 if found else 0)
    missing = sorted(set(range(n)) - found)
    if missing:
        raise TranscoderLoadError(f"missing layer file {path / name.format(missing[0])}"
                                  f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}. "
                                  "Fix: copy or download the complete set.")
    return n


def _read_safetensors(file: Path) -> dict[str, Tensor]:
    with safe_open(str(file), framework="pt", device="cpu") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    _check_finite(raw, file)
    return raw


def _check_finite(tensors: dict[str, Tensor], file: Path) -> None:
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteError(f"{file} holds NaN or infinity in {key!r} ({int((~torch.isfinite(value)).sum())} "
                                 "values). Fix: the file is damaged or training diverged; download or train it again.")


def _hook_name(hook: str) -> str:
    """``blocks.{layer}.mlp.hook_in`` / ``blocks.3.mlp.hook_in`` → ``mlp.hook_in``."""
    return re.sub(r"^blocks\.(\{layer\}|\d+)\.", "", str(hook))


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
    feeding it ``±e`` (a zero-mean, unit-RMS vector), which works for RMSNorm, Gemma's ``1 + w``
    RMSNorm and LayerNorm alike.
    """
    D = tc.cfg.d_model
    e = torch.ones(D)
    e[1::2] = -1
    for layer in range(tc.cfg.n_layers):
        norm = model.norm("ln_mlp", layer)
        p = next(norm.parameters())
        probe = torch.stack([e, -e]).to(p.device, p.dtype)
        plus, minus = norm(probe).float().cpu()
        g, b = (plus - minus) / (2 * e), (plus + minus) / 2
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


# --- the hub --------------------------------------------------------------------------------------


def parse_hf(uri: str) -> tuple[str, str | None, str | None]:
    """``hf://org/repo[/sub/dir][@rev]`` (or ``?revision=rev``) → ``(repo_id, subfolder, revision)``."""
    parsed = urlparse(uri)
    if parsed.scheme != "hf" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an hf:// address. Fix: write hf://org/repo[/subfolder][@revision].")
    path = parsed.path.lstrip("/")
    revision = parse_qs(parsed.query).get("revision", [None])[0]
    if "@" in path:
        path, revision = path.split("@", 1)
    repo, _, sub = path.partition("/")
    if not repo:
        raise ValueError(f"{uri!r} names no repository. Fix: write hf://org/repo.")
    return f"{parsed.netloc}/{repo}", sub.strip("/") or None, revision


def _hub_call(uri: str, fn: Any, **kwargs: Any) -> str:
    """Run a huggingface_hub download, from the local hub cache first, and say clearly when it cannot."""
    try:
        return fn(**kwargs, local_files_only=True)
    except Exception:  # not cached: go to the network below
        pass
    if not hub_reachable():
        raise HubUnavailableError(
            f"cannot load {uri}: the Hugging Face hub is not reachable from here (offline, or HF_HUB_OFFLINE is set) "
            "and the files are not in the local hub cache. Fix: connect to the internet or set HF_ENDPOINT to a "
            "mirror; or download the repository elsewhere and pass its local directory.")
    try:
        return fn(**kwargs)
    except Exception as exc:
        raise TranscoderLoadError(f"could not fetch {uri} from the hub: {type(exc).__name__}: {exc}. "
                                  "Fix: check the repository name, revision and your access token.") from exc


def fetch_hf(uri: str) -> Path:
    """Download the set at ``hf://org/repo[/sub]`` (its config.yaml and weight files); return its directory."""
    from huggingface_hub import hf_hub_download, snapshot_download

    repo_id, sub, rev = parse_hf(uri)
    cfg_path = Path(_hub_call(uri, hf_hub_download, repo_id=repo_id, filename="config.yaml", subfolder=sub,
                              revision=rev))
    config = yaml.safe_load(cfg_path.read_text()) or {}
    if "transcoders" in config:  # the files are listed, often in other repos: fetched by _resolve
        return cfg_path.parent
    prefix = f"{sub}/" if sub else ""
    patterns = [f"{prefix}config.yaml", f"{prefix}*.safetensors"]
    root = Path(_hub_call(uri, snapshot_download, repo_id=repo_id, revision=rev, allow_patterns=patterns))
    return root / sub if sub else root


def _resolve(p: str, base: Path) -> Path:
    """A path from a config's ``transcoders:`` list: ``hf://`` (downloaded), absolute, or relative to the set."""
    if str(p).startswith("hf://"):
        from huggingface_hub import hf_hub_download

        repo_id, file, rev = parse_hf(p)
        if not file:
            raise TranscoderLoadError(f"{p!r} in {base / 'config.yaml'} names no file. Fix: hf://org/repo/path/file.")
        return Path(_hub_call(p, hf_hub_download, repo_id=repo_id, filename=file, revision=rev))
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def load_transcoders(model: Any, name_or_path: str | Path | None = None, *, check_model: bool = True,
                     dtype: torch.dtype = torch.float32) -> Transcoder:
    """The transcoder set for ``model``, on its device.

    ``name_or_path``: None for the model's default set (trained by a preset into the cache); a
    preset name (``"smollm2-quick"``); a directory; or ``"hf://org/repo[/subfolder][@revision]"``.
    """
    from transcoders.presets import PRESETS, default_preset

    if name_or_path is None:
        preset = default_preset(model.name)
        if preset is None:
            raise TranscoderLoadError(
                f"there is no default transcoder set for {model.name!r} (defaults exist for "
                f"{sorted({p.model for p in PRESETS.values()})}). Fix: train one with "
                f"`transcoders train --model {model.name} --kind plt --k 32`, or pass a path or hf:// address.")
        name_or_path = preset.name
    text = str(name_or_path)
    if text in PRESETS:
        where = preset_dir(text)
        if not (where / "config.yaml").is_file():
            raise TranscoderLoadError(
                f"the transcoder set {text!r} is not in the cache ({where}). Fix: build it once with "
                f"`transcoders train --preset {text}` ({PRESETS[text].cost}).")
    elif text.startswith("hf://"):
        where = fetch_hf(text)
    else:
        where = Path(text).expanduser()
        if not where.exists():
            raise TranscoderLoadError(f"no transcoder set at {where}: not a directory, a preset "
                                      f"({', '.join(sorted(PRESETS))}) or an hf:// address. Fix: check the path.")
    tc = load_transcoder_dir(where, model, check_model=check_model, dtype=dtype)
    return tc.to(model.device)


def preset_dir(name: str) -> Path:
    """Where ``transcoders train --preset NAME`` saves its set."""
    return cache_dir("transcoders") / name
