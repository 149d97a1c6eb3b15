"""Tiny random models of every supported family, built in code with no hub access.

Tests (ours and users') use them to check the architecture map, exactness of
attribution, and planted circuits in milliseconds.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from circuits.models.adapter import Model

TINY_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "qwen2", "qwen3", "gemma2", "gemma3")


def tiny_tokenizer(d_vocab: int) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over the words ``t0 … t{d_vocab-2}`` plus ``<unk>``."""
    vocab = {"<unk>": 0} | {f"t{i}": i + 1 for i in range(d_vocab - 1)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>")


def tiny_config(family: str, *, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, n_kv_heads: int = 2,
                d_mlp: int = 64, d_vocab: int = 64, n_ctx: int = 64) -> PretrainedConfig:
    """A transformers config for a tiny model of ``family`` (one of TINY_FAMILIES)."""
    d_head = d_model // n_heads
    common = dict(vocab_size=d_vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                  num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=n_ctx,
                  head_dim=d_head, tie_word_embeddings=False)
    if family == "gpt2":
        return GPT2Config(vocab_size=d_vocab, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_inner=d_mlp,
                          n_positions=n_ctx, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          bos_token_id=0, eos_token_id=0)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen3":
        return Qwen3Config(**common)
    if family == "gemma2":
        return Gemma2Config(**common, query_pre_attn_scalar=d_head, sliding_window=n_ctx)
    if family == "gemma3":
        return Gemma3TextConfig(**common, query_pre_attn_scalar=d_head, sliding_window=n_ctx)
    raise ValueError(f"unknown tiny family {family!r}; choose from {TINY_FAMILIES}")


def tiny_model(family: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32,
               init_scale: float = 1.0, **dims: int) -> Model:
    """A randomly initialised tiny ``family`` model wrapped as a ``Model``.

    ``init_scale`` multiplies every weight after transformers' init (which is small,
    std 0.02) so activations, norms and attention patterns are far from trivial.
    Norm weights are randomised too, so tests see the norm scales at work.
    """
    cfg = tiny_config(family, **dims)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or ".ln_" in name or name.startswith("transformer.ln_"):
                p.copy_(p + 0.2 * torch.randn_like(p))
            else:
                p.mul_(init_scale)
    return Model(hf.eval(), tiny_tokenizer(cfg.vocab_size), f"tiny-{family}")
