"""Which transcoder set to load, and where it is: presets, each model's default set, the cache, the hub.

``transcoders.io`` reads and writes a set's files (the formats); this module turns what a user
names into the directory that holds them: nothing (the model's default set), a preset name, a
directory, or ``hf://org/repo[/subfolder][@revision]``.

``transcoders train --preset NAME`` trains a preset and saves it to ``preset_dir(NAME)``
(``cache_dir("transcoders", NAME)``), where ``load_transcoders(model)`` finds the default one.
The figures in each ``cost`` were measured on an idle 2-core AVX2 CPU in float32 (see BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transcoders.cache import cache_dir
from transcoders.formats.common import TranscoderLoadError
from transcoders.formats.sparsify import is_sparsify_dir
from transcoders.hub import HubUnavailableError, hub_call, parse_hf
from transcoders.io import load_transcoder_dir, read_config
from transcoders.model import Transcoder
from transcoders.train import ADDED_FIELDS, RESUMABLE_CHANGES, TrainConfig, config_record, train
from transcoders.warm_start import SHAPE_FIELDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # the model's name as circuits.load_model reports it
    config: TrainConfig
    cost: str  # what building it takes, for error messages and the CLI's help
    default: bool = False  # the set load_transcoders(model) picks

    def train_config(self, **overrides: object) -> TrainConfig:
        return dataclasses.replace(self.config, **overrides)


_SMOLLM2 = "smollm2-135m-instruct"

# The quick recipe: the default set's, and the long preset's on more tokens.
# Batches of 256 pairs (585 steps at 150k tokens) and a decay over the second half: held-out FVU 0.365
# against 0.404 for batches of 1,024 and a decay over the last fifth, at the same tokens
# (benchmarks/recipe.py, BENCHMARKS.md). Width 2,048 or k = 128 gained little there, with the skip.
# No skip: without it the graphs are more features and less error (replacement 0.557 against
# 0.473, completeness 0.884 against 0.849 on the 24 prompts), in about the same time, though the
# replaced model's KL is worse (2.07 against 1.59): the skip's share of an MLP's output is
# attributed upstream, errors included, while a feature's is its own (BENCHMARKS.md).
# k = 128: without a skip the features carry the linear part too and filled 62.6 of k = 64's
# slots; at k = 128 replacement 0.593 against 0.557, completeness 0.895 against 0.884, in the same
# time (527 s against 587 s in the host's fast hour). k = 256 gave 0.599 / 0.895 with twice the
# active features again (graphs 1.7x slower to trace), so 128 (BENCHMARKS.md).
# 200k tokens (781 steps): once freed memory stayed in the process (transcoders.allocator) a step cost
# a sixth less, and 200k tokens trained in 780 s with the host between its fast and slow hours (150k
# had taken 527 s in its fast hour), for replacement 0.606 and completeness 0.899 against 0.593 / 0.895
# (BENCHMARKS.md).
# A checkpoint every 150 steps, not 50: each save of the set and Adam's moments (426 MB) took about 2 s
# (the step times around saves in a 150k-token run, bf16 on 2 AVX-512 cores), a twentieth of the run
# at every 50 steps; a killed run loses at most a minute or two of steps.
_QUICK = TrainConfig(kind="plt", d_features=1024, activation="topk", k=128, skip=False, n_tokens=200_000,
                     seq_len=128, model_batch=8, chunk_batches=16, batch_tokens=256, lr=2e-3,
                     warmup_steps=10, decay_fraction=0.5, checkpoint_every=150, num_threads=2)

# smollm2-clt: the first-use PLT (smollm2-quick, trained first if it is not built) made
# cross-layer: its features, their same-layer decoders, and cross-layer decoders from zero, which 150k more tokens train with
# the encoders frozen (transcoders.warm_start). A CLT trained from scratch lost to the PLT at equal
# time at every recipe tried (0.522 / 0.864 at best, in 786 s in bf16 on AVX-512, against the
# PLT's 0.622 / 0.907 in 769 s): its 465 layer pairs start as noise and its steps are 4-5x a
# PLT's. Started from the PLT, its steps skip the encoder's gradient. This recipe: 0.644 / 0.910,
# held-out KL 1.32, in 1,255 s (the PLT's 529 s included), against the PLT trained to the same
# time (470k tokens, 1,223 s): 0.637 / 0.912, KL 1.45 (bf16 on 2 AVX-512 cores; BENCHMARKS.md).
# Its decoders at a quarter of the rate: at the full rate (2e-3) the batch FVU rose from 0.40 to
# 0.6-0.9 in the first steps; at a tenth, held-out FVU and KL were a little worse (0.372 / 1.47
# against 0.366 / 1.41 on 4k tokens). k = 128: the PLT's features were trained to its top 128.
# Seed 1: its text comes in another order than the PLT's, so its first steps are not on the PLT's
# first chunks. Batches of 512: each step also pays Adam on the 302M decoder weights. A checkpoint
# (3.5 GB) every 150 steps.
_CLT_PHASE = TrainConfig(kind="clt", d_features=1024, activation="topk", k=128, skip=False, n_tokens=150_000,
                         seq_len=128, model_batch=8, chunk_batches=16, batch_tokens=512, lr=2e-3,
                         decoder_lr_scale=0.25, warmup_steps=10, decay_fraction=0.5, checkpoint_every=150,
                         num_threads=2, seed=1, init_from="smollm2-quick", freeze_encoder=True)

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "smollm2-quick", _SMOLLM2,
        _QUICK,
        cost="about 13 min on 2 idle AVX2 CPU cores (781 steps in 780 s measured with the host's GEMMs at 140-155 "
             "GFLOP/s, between its fast and slow hours; harvest included; BENCHMARKS.md)",
        default=True),
    Preset(
        "smollm2-clt", _SMOLLM2,
        _CLT_PHASE,
        cost="smollm2-quick's training, then 12 min more on 2 idle AVX-512 CPU cores in bf16 (725 s measured, "
             "harvest and checkpoints included; 21 min in all with the PLT's 529 s)"),
    Preset(
        "smollm2-long", _SMOLLM2,
        # The quick recipe on about 9x the tokens, sized to the 2.5-hour budget: 1.3M tokens at the
        # 163-189 tokens/s this recipe ran end to end on 2 idle AVX2 cores (without and with the skip,
        # harvest included; BENCHMARKS.md) is 1.9-2.2 hours.
        # A PLT, because at equal training time the CLT lost: 30 min gave the CLT 150k tokens and the
        # PLT 300k, and the PLT's graphs scored higher (benchmarks/quality_budget.py). (The least-squares
        # skip start also lost: fitted on one chunk it extrapolates badly on held-out text.)
        # It checkpoints every 200 steps and resumes where it stopped, so it can be built over several
        # runs; benchmarks/quality_budget.py --kind plt trains exactly this run (the same run folder).
        # Measured at k = 128: 73 min, 0.661 / 0.921, KL 1.26 (at k = 64: 71 min, 0.615 / 0.909, KL 1.45).
        dataclasses.replace(_QUICK, n_tokens=1_300_000, checkpoint_every=200),
        cost="about 1.2-2.2 hours on 2 idle AVX2 CPU cores (4,383 s measured at k = 128, the host leaving its fast "
             "hour; 163-189 tokens/s in its slow one; resumable across runs; minutes on a GPU)"),
    Preset(
        "smollm2-long-clt", _SMOLLM2,
        # The long PLT (smollm2-long, trained first if it is not built) made cross-layer as smollm2-clt makes
        # the quick one, on 900k more tokens: what fits the 2.5-hour budget after the PLT's hour or so.
        # Measured (bf16 on 2 AVX-512 cores; BENCHMARKS.md): 0.705 / 0.932, KL 0.98, in 111 min with the
        # PLT's 52, against the long PLT's 0.662 / 0.922, KL 1.27; a 450k-token phase gave 0.697 / 0.930,
        # KL 1.01, in 82 min.
        dataclasses.replace(_CLT_PHASE, n_tokens=900_000, init_from="smollm2-long"),
        cost="smollm2-long's training, then about 1 hour more on 2 idle AVX-512 CPU cores in bf16 (3,556 s "
             "measured, 253 tokens/s, harvest and checkpoints included; 111 min in all); resumable across runs"),
)}


def default_preset(model_name: str) -> Preset | None:
    """The preset whose set ``load_transcoders(model)`` loads for a model of this name."""
    key = model_name.rstrip("/").split("/")[-1].lower()
    return next((p for p in PRESETS.values() if p.default and p.model == key), None)


def preset_dir(name: str) -> Path:
    """Where ``transcoders train --preset NAME`` saves its set."""
    return cache_dir("transcoders") / name


def stale_fields(name: str) -> list[str]:
    """The recipe fields in which the set built for preset ``name`` differs from the preset now: a set
    trained before its recipe changed. Empty when it is current, or not built.

    A CLT started from a preset's PLT (``init_from``) is also stale when that PLT's recipe has changed
    since: the fields then read ``"smollm2-quick's lr"``."""
    where = preset_dir(name) / "config.yaml"
    if not where.is_file():
        return []
    meta = read_config(where).get("circuit_engine", {})
    config = PRESETS[name].config
    stale = _differs(meta.get("train_config", {}), config)
    # Sets saved before the init's recipe was recorded cannot be checked against it.
    init = config.init_from
    if init in PRESETS and "init_train_config" in meta:
        stale += [f"{init}'s {k}" for k in _differs(meta["init_train_config"], PRESETS[init].config)]
    return stale


def _differs(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """The fields that change the result in which a set's saved ``train_config`` differs from ``config``."""
    want = {k: v for k, v in config_record(config).items() if k not in RESUMABLE_CHANGES}
    # A set saved before a field existed lacks it, and was trained at the field's old behaviour.
    return sorted(k for k, v in want.items()
                  if (k in saved or k in ADDED_FIELDS) and saved.get(k, ADDED_FIELDS.get(k)) != v)


def load_transcoders(model: Any, name_or_path: str | Path | None = None, *, check_model: bool = True,
                     dtype: torch.dtype = torch.float32) -> Transcoder:
    """The transcoder set for ``model``, on its device.

    ``name_or_path``: None for the model's default set (trained by a preset into the cache); a
    preset name (``"smollm2-quick"``); a directory; or ``"hf://org/repo[/subfolder][@revision]"``.
    """
    if name_or_path is None:
        preset = default_preset(model.name)
        if preset is None:
            raise TranscoderLoadError(
                f"there is no default transcoder set for {model.name!r} (defaults exist for "
                f"{sorted({p.model for p in PRESETS.values()})}). Fix: train one with "
                f"`transcoders train --model {model.name} --kind plt --k 32`, or pass a path or hf:// address.")
        name_or_path = preset.name
    where = set_dir(name_or_path)
    # Read straight onto the model's device: the set is never held on the CPU on its way to the GPU.
    tc = load_transcoder_dir(where, model, check_model=check_model, dtype=dtype, device=model.device)
    return tc.to(model.device)


def set_dir(name_or_path: str | Path) -> Path:
    """The directory that holds the set a preset name, a directory or an ``hf://`` address names
    (fetched, for the hub); a clear error if there is none."""
    text = str(name_or_path)
    if text in PRESETS:
        where = preset_dir(text)
        if not (where / "config.yaml").is_file():
            raise TranscoderLoadError(
                f"the transcoder set {text!r} is not in the cache ({where}). Fix: build it once with "
                f"`transcoders train --preset {text}` ({PRESETS[text].cost}).")
        if stale := stale_fields(text):
            log.warning("the cached %r set was trained with an older recipe (%s differ); `transcoders train --preset "
                        "%s` trains the current one (BENCHMARKS.md says what it gains)", text, ", ".join(stale), text)
    elif text.startswith("hf://"):
        where = fetch_hf(text)
    else:
        where = Path(text).expanduser()
        if not where.exists():
            raise TranscoderLoadError(f"no transcoder set at {where}: not a directory, a preset "
                                      f"({', '.join(sorted(PRESETS))}) or an hf:// address. Fix: check the path.")
    return where


def load_init(model: Any, cfg: TrainConfig, *, build: bool = False) -> tuple[Transcoder, dict[str, Any]]:
    """The PLT set ``cfg.init_from`` names, loaded for ``train(init=...)``, and what the CLT started from
    it records: the set's name, and the tokens and training time it took (so that a CLT's cost counts
    its start). ``build``: train a preset that is not built yet first, into its own folder, as
    ``transcoders train --preset`` would, so that one command builds a warm-started CLT preset."""
    name = str(cfg.init_from)
    if build and name in PRESETS and not (preset_dir(name) / "config.yaml").is_file():
        log.warning("the CLT starts from the %s set, which is not built: training it first (%s)",
                    name, PRESETS[name].cost)
        train(model, PRESETS[name].config, save_dir=preset_dir(name))
    where = set_dir(name)
    init = load_transcoders(model, where)
    saved = read_config(where / "config.yaml").get("circuit_engine", {}) if (where / "config.yaml").is_file() else {}
    meta: dict[str, Any] = {"init_set": name}
    for key in ("tokens", "train_seconds", "train_cpu_seconds", "train_config"):  # the recipe: stale_fields
        if key in saved:
            meta[f"init_{key}"] = saved[key]
    return init, meta


def init_shape(name_or_path: str | Path) -> dict[str, Any]:
    """The ``TrainConfig`` fields a CLT started from this PLT set must take from it (its width,
    activation, k, skip and sites), so that ``--init-from SET`` needs no shape flags. A preset's come
    from its recipe (it need not be built yet); a saved set's from its config.yaml. Empty for a set
    that records none (another format): the CLT's own flags then decide, and a mismatch is named."""
    text = str(name_or_path)
    if text in PRESETS:
        return {k: getattr(PRESETS[text].config, k) for k in SHAPE_FIELDS}
    config = set_dir(text) / "config.yaml"
    saved = read_config(config).get("circuit_engine", {}) if config.is_file() else {}
    return {k: saved[k] for k in SHAPE_FIELDS if k in saved}


def fetch_hf(uri: str) -> Path:
    """Download the set at ``hf://org/repo[/sub]`` and return its directory: circuit-tracer's (config.yaml and
    its weight files) or, when the repository has no config.yaml, sparsify's (every hookpoint's cfg.json and
    sae.safetensors, and the run's config.json)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    repo_id, sub, rev = parse_hf(uri)
    prefix = f"{sub}/" if sub else ""
    sparsify = [f"{prefix}config.json", f"{prefix}*/cfg.json", f"{prefix}*/sae.safetensors"]
    try:
        cfg_path = hub_call(uri, hf_hub_download, missing_ok=True, repo_id=repo_id, filename="config.yaml",
                            subfolder=sub, revision=rev)
    except HubUnavailableError:  # offline: a sparsify set may still be whole in the hub cache
        try:
            root = Path(snapshot_download(repo_id=repo_id, revision=rev, allow_patterns=sparsify,
                                          local_files_only=True))
        except Exception:
            root = None
        if root is not None and is_sparsify_dir(root / sub if sub else root):
            return root / sub if sub else root
        raise
    if cfg_path is None:
        patterns = sparsify
    else:
        config = read_config(Path(cfg_path))
        if "transcoders" in config:  # the files are listed, often in other repos: fetched as it loads
            return Path(cfg_path).parent
        patterns = [f"{prefix}config.yaml", f"{prefix}*.safetensors"]
    root = Path(hub_call(uri, snapshot_download, repo_id=repo_id, revision=rev, allow_patterns=patterns))
    return root / sub if sub else root
