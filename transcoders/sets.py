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
from transcoders.train import ADDED_FIELDS, RESUMABLE_CHANGES, TrainConfig, config_record

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

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "smollm2-quick", _SMOLLM2,
        _QUICK,
        cost="about 13 min on 2 idle AVX2 CPU cores (781 steps in 780 s measured with the host's GEMMs at 140-155 "
             "GFLOP/s, between its fast and slow hours; harvest included; BENCHMARKS.md)",
        default=True),
    Preset(
        "smollm2-clt", _SMOLLM2,
        # The quick preset's recipe and budget (150k tokens) with cross-layer decoders, at k = 64: the
        # best CLT measured, and still behind the PLT at equal time (BENCHMARKS.md).
        # No skip: without it the CLT's graphs scored 0.499 / 0.856 against 0.424 / 0.813 with one, in
        # less time (1,116 s against 1,726 s on 2 AVX2 cores), as the PLT's did.
        # Decoders at a quarter of the rate (param_groups says why): graphs 0.522 / 0.864 against 0.498 /
        # 0.856 at the same 150k tokens (bf16, 2 AVX-512 cores; higher on 22 of the 24 prompts), though
        # held-out FVU 0.408 against 0.389 and KL 2.46 against 2.24; more of each token's top 64 stay
        # positive (L0 63.9 against 58.7). At x 0.5: 0.511 / 0.860, KL 2.28. Graph quality first, as the
        # PLT presets chose (no skip).
        # Batches of 512, not 256: each step also pays a fused Adam update of the CLT's 302M parameters
        # (0.43 s on 2 AVX2 cores, BENCHMARKS.md), which smaller batches multiply.
        # A checkpoint every 100 steps, not 20: one is 3.5 GB (the decoders and their Adam moments). The
        # same 150k-token run took 1,062 s saving every 20 steps and 786 s every 100 (bf16, 2 AVX-512
        # cores; BENCHMARKS.md): 23 s a save, which every 20 steps was a third of the run.
        TrainConfig(kind="clt", d_features=1024, activation="topk", k=64, skip=False, n_tokens=150_000,
                    seq_len=128, model_batch=8, chunk_batches=16, batch_tokens=512, lr=2e-3,
                    decoder_lr_scale=0.25, warmup_steps=10, decay_fraction=0.5, checkpoint_every=100, num_threads=2),
        cost="about 13 min on 2 idle AVX-512 CPU cores in bf16 (786 s measured, harvest included); at most 19 "
             "on 2 AVX2 cores in fp32 (1,116 s measured when it saved a checkpoint every 20 steps)"),
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
    trained before its recipe changed. Empty when it is current, or not built."""
    where = preset_dir(name) / "config.yaml"
    if not where.is_file():
        return []
    saved = read_config(where).get("circuit_engine", {}).get("train_config", {})
    want = {k: v for k, v in config_record(PRESETS[name].config).items() if k not in RESUMABLE_CHANGES}
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
    # Read straight onto the model's device: the set is never held on the CPU on its way to the GPU.
    tc = load_transcoder_dir(where, model, check_model=check_model, dtype=dtype, device=model.device)
    return tc.to(model.device)


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
