"""Tokenizing sources, caching the token arrays, and how documents are framed with special tokens.

Token arrays hold each document's own tokens, with no special tokens: the
separator and BOS are added while packing, so one cache serves every framing.
They live in ``cache_dir("corpus", "tokens", <tokenizer fingerprint>, <source>-<source fingerprint>)``
and are memory-mapped, so a corpus of any size costs little RAM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from transcoders.cache import atomic_path, cache_dir
from transcoders.corpus.sources import Source
from transcoders.corpus.text import Document, split_hash

log = logging.getLogger(__name__)

# A tokenizer call gets about this many characters: large enough for the Rust
# tokenizer to spread a batch over threads, small enough for a smooth progress bar.
ENCODE_CHARS = 1_000_000


@dataclass(frozen=True)
class Framing:
    """How documents are joined into one stream and cut into rows."""

    sep_id: int  # written between documents
    sep_before: bool  # True: before each document (a BOS); False: after it (an EOS)
    bos_id: int | None  # when set, every row starts with this token


def framing(tokenizer: Any, prepend_bos: bool | None = None, sep_token_id: int | None = None) -> Framing:
    """Read the framing off the tokenizer: does it add a BOS, and which token ends a document.

    A tokenizer that adds BOS itself (Gemma) gets a BOS before every document and
    at the start of every row, since such models misbehave without it at position 0.
    Otherwise (GPT-2, SmolLM2) documents end with EOS and rows start wherever they fall.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    if prepend_bos is None:
        prepend_bos = adds_bos
    if prepend_bos and bos is None:
        raise ValueError("prepend_bos=True, but the tokenizer has no bos_token. Fix: set tokenizer.bos_token.")
    if sep_token_id is not None:
        return Framing(sep_token_id, adds_bos, bos if prepend_bos else None)
    if adds_bos:
        return Framing(bos, True, bos if prepend_bos else None)
    if eos is None:
        raise ValueError(
            "the tokenizer has no eos_token to separate documents. "
            "Fix: set tokenizer.eos_token, or pass sep_token_id=."
        )
    return Framing(eos, False, bos if prepend_bos else None)


def frame(doc: np.ndarray, f: Framing) -> np.ndarray:
    """``doc: [n]`` -> ``[n + 1]`` with the separator on its side."""
    sep = np.array([f.sep_id], dtype=np.int32)
    return np.concatenate([sep, doc] if f.sep_before else [doc, sep])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how text becomes ids (vocab, merges, normaliser, ...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:  # a slow (Python) tokenizer: its vocabulary and class stand in for the rest
        payload = type(tokenizer).__name__ + json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens; one batched call to the (fast) tokenizer."""
    if not texts:
        return []
    # verbose=False: documents may be longer than the model's context, which is fine here.
    out = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return list(out["input_ids"])


def encode_stream(
    tokenizer: Any, docs: Iterable[Document], chars: int = ENCODE_CHARS
) -> Iterator[tuple[Document, list[int]]]:
    """``(document, ids)`` pairs, tokenizing ``chars`` characters per call."""
    batch: list[Document] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= chars:
            yield from zip(batch, encode(tokenizer, [d.text for d in batch]), strict=True)
            batch, size = [], 0
    yield from zip(batch, encode(tokenizer, [d.text for d in batch]), strict=True)


@dataclass(frozen=True)
class TokenArrays:
    """One source's documents as tokens, back to back."""

    tokens: np.ndarray  # [n_tokens] int32, memory-mapped
    offsets: np.ndarray  # [n_docs + 1] int64: document i is tokens[offsets[i] : offsets[i + 1]]
    u: np.ndarray  # [n_docs] float64: split_hash of each document's key; held out when < fraction

    def doc(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def token_arrays(source: Source, tokenizer: Any) -> TokenArrays:
    """The source's cached token arrays for this tokenizer, tokenizing it on first use."""
    fp = source.fingerprint()
    if fp is None:
        raise ValueError(f"source {source.name!r} is a stream; it is tokenized as it is read, never cached.")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name)
    path = cache_dir("corpus", "tokens", tokenizer_fingerprint(tokenizer)) / f"{safe}-{fp[:16]}"
    if not path.is_dir():  # atomic_path makes a complete entry appear at once
        _tokenize_to(path, source, tokenizer)
    offsets = np.load(path / "offsets.npy")
    n = int(offsets[-1])
    tokens = np.memmap(path / "tokens.bin", dtype=np.int32, mode="r") if n else np.zeros(0, np.int32)
    return TokenArrays(tokens, offsets, np.load(path / "u.npy"))


def _tokenize_to(path: Path, source: Source, tokenizer: Any) -> None:
    start = time.perf_counter()
    offsets, u = [0], []
    bar = tqdm(total=source.size_hint(), unit="char", unit_scale=True, desc=f"tokenizing {source.name}",
               file=sys.stderr, dynamic_ncols=True)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        # Written as it goes, so a large local corpus never sits in memory as tokens.
        with (tmp / "tokens.bin").open("wb") as f:
            for doc, ids in encode_stream(tokenizer, source.documents()):
                f.write(np.asarray(ids, dtype=np.int32).tobytes())
                offsets.append(offsets[-1] + len(ids))
                u.append(split_hash(doc.key))
                bar.update(len(doc.text))
                bar.set_postfix(tokens=f"{offsets[-1] / 1e6:.2f}M", refresh=False)
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        np.save(tmp / "u.npy", np.asarray(u, dtype=np.float64))
    bar.close()
    log.info("tokenized %s: %d documents, %d tokens in %.1fs",
             source.name, len(u), offsets[-1], time.perf_counter() - start)
