"""What the examples share: the command line, the model and transcoders, and a safe output folder.

Every example runs on the real default model (SmolLM2-135M-Instruct and its default transcoders), or
on ``--model NAME`` / ``--transcoders DIR``. With ``--tiny`` (or ``CIRCUITS_EXAMPLE_TINY=1``) it runs in
seconds on a tiny random model instead, built here in code: a Llama-family model whose word-level
tokenizer knows the IOI prompts' words, and random TopK transcoders. The numbers it prints are then
meaningless, but every step runs exactly as it would on the real model (``tests/test_examples.py``
runs every example that way).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path
from typing import Any

TINY_ENV = "CIRCUITS_EXAMPLE_TINY"
IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def parser(doc: str | None, *, transcoders: bool = True, out: bool = False,
           trace: bool = False) -> argparse.ArgumentParser:
    """The examples' common options; ``doc`` (the script's docstring) is the --help text."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", default=os.environ.get(TINY_ENV, "") not in ("", "0"),
                   help=f"a tiny random model, for a run in seconds (also {TINY_ENV}=1)")
    p.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    if transcoders:
        p.add_argument("--transcoders", default=None,
                       help="transcoder set: a folder, a preset or hf://org/repo (default: the model's set)")
    if trace:
        # All of SmolLM2's ~24,500 active features on the IOI prompt make 135 million edges: minutes more.
        p.add_argument("--max-feature-nodes", type=int, default=4096,
                       help="attribute the most influential N features, as `circuits demo` does (0: all)")
    if out:
        p.add_argument("--out", default=None, help="a new or empty folder for the files (default: a new temp folder)")
    return p


def load(args: argparse.Namespace, *, transcoders: bool = True) -> tuple[Any, Any]:
    """(model, transcoders) as the command line asks: tiny, or loaded (transcoders None when not wanted)."""
    if args.tiny:
        return tiny_setup()
    from circuits import load_model

    model = load_model(args.model)
    if not transcoders:
        return model, None
    from transcoders import load_transcoders

    return model, load_transcoders(model, getattr(args, "transcoders", None))


def output_folder(out: str | None, name: str) -> Path:
    """A folder to write into: ``out`` if it is new or empty (never among a user's files), else a new temp one."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix=f"circuits-example-{name}-"))
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SystemExit(f"--out {path} already exists and is not an empty folder; this example writes only into a "
                         "new or empty one. Fix: pass a new path, or leave --out out for a temp folder.")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- the tiny stand-in ------------------------------------------------------------------------------


def ioi_words() -> list[str]:
    """Every word and punctuation mark of the IOI templates, names, places and objects (and the prompts here)."""
    from circuits.tasks import ioi

    words = set(ioi.NAMES) | set(ioi.PLACES) | set(ioi.OBJECTS)
    for text in (*ioi.BABA_TEMPLATES, IOI_PROMPT, "The capital of France is Paris . Hello"):
        words |= set(re.findall(r"\w+|[^\w\s]", text.replace("[", " ").replace("]", " ")))
    return sorted(words)


def tiny_tokenizer() -> Any:
    """Word-level: each IOI word is one token (so ``circuits.tasks.ioi`` works); unknown words are ``<unk>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1} | {w: i + 2 for i, w in enumerate(ioi_words())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, as a reader expects
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<unk>")


def tiny_setup(*, n_layers: int = 3, d_features: int = 32, k: int = 4, seed: int = 0) -> tuple[Any, Any]:
    """A tiny random Llama-family model with the IOI word tokenizer, and random TopK transcoders for it."""
    import torch

    from circuits.models import Model
    from circuits.models.tiny import tiny_model
    from transcoders import TranscoderConfig, build_transcoder

    tokenizer = tiny_tokenizer()
    base = tiny_model("llama", seed=seed, n_layers=n_layers, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64,
                      d_vocab=len(tokenizer), n_ctx=64)
    model = Model(base.hf, tokenizer, "tiny-llama-ioi")
    cfg = TranscoderConfig(kind="plt", n_layers=n_layers, d_model=32, d_features=d_features, activation="topk",
                           k=k, model_name=model.name)
    torch.manual_seed(seed)
    tc = build_transcoder(cfg).eval()
    with torch.no_grad():
        tc.b_enc.normal_(0, 0.1)  # so features fire on some tokens and not others
    return model, tc
