"""``load_model``: one entry point for packaged, local and hub models."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from circuits.models.adapter import Model
from circuits.models.packaged import PACKAGED, find_packaged, float_dir
from transcoders.allocator import keep_freed_memory
from transcoders.cache import hub_reachable


class ModelNotFoundError(ValueError):
    """The name is neither a packaged model, a local model, nor a reachable hub id."""


class ModelLoadError(RuntimeError):
    """The model was found but its files could not be read."""


class DeviceError(ValueError):
    """The requested device is not present on this machine."""


# Eager attention returns the patterns that replacement models freeze and probes read.
_ATTN = "eager"


def load_model(name: str | None = None, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None) -> Model:
    """Load a causal LM and wrap it for circuit work.

    Args:
        name: ``None`` for the offline default (SmolLM2-135M-Instruct); a packaged short name
            (``"smollm2"``, ``"gemma3-270m"``); a local model directory or ``.gguf`` file; or a
            Hugging Face hub id such as ``"gpt2"`` (needs the hub).
        device: ``"cuda"``/``"cpu"``/...; default CUDA when present, else the CPU.
        dtype: default float32.
    """
    # Tracing, training and patching free and allocate tens of MB per step; keeping freed blocks in
    # the heap saved 13% of a trace and a sixth of a training step on a CPU (transcoders.allocator).
    keep_freed_memory()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    packaged = find_packaged(name)
    if packaged is not None:
        path = float_dir(packaged)
        try:
            hf, tok = _from_dir(path, dt)
        except Exception as exc:  # a damaged cache entry: say which directory to delete
            raise ModelLoadError(
                f"the cached float copy of {packaged.key} at {path} could not be read ({exc}). "
                f"Fix: delete {path} and load again to rebuild it."
            ) from exc
        return Model(hf.to(dev), tok, packaged.key)
    assert name is not None
    local = Path(name).expanduser()
    if local.exists():
        hf, tok = _from_local(local, dt)
        return Model(hf.to(dev), tok, str(local))
    if _looks_like_a_path(name):  # a hub id is org/name; this names a file or folder that is not there
        raise ModelNotFoundError(f"no model at {name!r}: the path does not exist. Fix: check the path (a model "
                                 "directory written by save_pretrained, or a .gguf file), or pass a packaged name "
                                 f"({', '.join(pm.aliases[0] for pm in PACKAGED)}) or a hub id such as 'gpt2'.")
    hf, tok = _from_hub(name, dt)
    return Model(hf.to(dev), tok, name)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"{device!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise DeviceError(f"device {str(dev)!r} is not present ({n} CUDA devices visible): use device='cpu'")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' is not available on this machine: use device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    dt = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a float dtype: use 'float32', 'bfloat16' or 'float64'")
    return dt


def _from_dir(path: str | Path, dtype: torch.dtype, **kw: object) -> tuple[PreTrainedModel, object]:
    tok = AutoTokenizer.from_pretrained(path, **kw)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=_ATTN, **kw)
    return hf, tok


def _from_local(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path, dtype)
    if path.is_dir() and (path / "config.json").exists():
        try:
            return _from_dir(path, dtype)
        except (OSError, ValueError) as exc:  # transformers' own errors: a bad config.json, missing weights
            raise ModelLoadError(f"the model directory {str(path)!r} could not be read ({type(exc).__name__}: "
                                 f"{str(exc)[:300]}). Fix: save it again with save_pretrained (model and "
                                 "tokenizer), or point at an intact copy.") from exc
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(ggufs) == 1:
        return _from_gguf(ggufs[0], dtype)
    raise ModelNotFoundError(
        f"{str(path)!r} is not a model: a model directory holds config.json and weights "
        "(as written by save_pretrained), or exactly one .gguf file. "
        "Fix: point at such a directory or .gguf file, or pass a packaged name "
        f"({', '.join(pm.aliases[0] for pm in PACKAGED)}) or a hub id."
    )


def _looks_like_a_path(name: str) -> bool:
    """``/abs``, ``./rel``, ``~/x``, ``a/b/c`` or ``x.gguf``: never a hub id (``org/name``)."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
            or name.lower().endswith(".gguf"))


def _from_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    try:
        return _from_dir(path.parent, dtype, gguf_file=path.name)
    except Exception as exc:
        raise ModelLoadError(
            f"the GGUF file {str(path)!r} does not parse ({type(exc).__name__}: {exc}). "
            "Fix: the file is corrupt, truncated or not GGUF; download it again."
        ) from exc


def _from_hub(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    options = (f"packaged names: {', '.join(a for pm in PACKAGED for a in pm.aliases[:2])}; "
               "a local model directory or .gguf file; or a hub id such as 'gpt2'")
    try:  # a model the user already has in their hub cache loads with no network
        return _from_dir(name, dtype, local_files_only=True)
    except OSError:
        pass
    if not hub_reachable():
        raise ModelNotFoundError(
            f"unknown model {name!r}: it is not packaged, not a local path, not in the hub cache, "
            f"and the hub cannot be reached from here. Valid names: {options}."
        )
    try:
        return _from_dir(name, dtype)
    except OSError as exc:
        raise ModelNotFoundError(f"unknown model {name!r}: the hub has no such model ({exc}). "
                                 f"Valid names: {options}.") from exc
