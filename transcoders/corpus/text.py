"""Plain-text helpers: normalising whitespace, chunking long texts, and the held-out split.

Everything here is a pure function of its arguments, so the split of a document
never depends on the order sources are read in, the machine, or the run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")

# Long works (a play, an episode, a user's book) are cut into chunks of about this
# many characters: the held-out split then has enough units to draw from, and one
# long work cannot fill a whole stretch of batches.
CHUNK_CHARS = 4000
HELDOUT_FRACTION = 0.03


@dataclass(frozen=True)
class Document:
    """One unit of text. The held-out split is decided per document, by ``key``."""

    source: str
    doc_id: str
    text: str

    @property
    def key(self) -> str:
        return f"{self.source}/{self.doc_id}"


def split_hash(key: str) -> float:
    """A uniform number in [0, 1) fixed by ``key`` alone (the first 8 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_of(key: str, heldout_fraction: float) -> Split:
    return "heldout" if split_hash(key) < heldout_fraction else "train"


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}. Fix: use one of {', '.join(SPLITS)}.")
    return split


def normalize(text: str) -> str:
    """Unix newlines, no BOM, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def chunk(text: str, max_chars: int | None = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars``, at paragraph breaks where possible.

    A paragraph longer than ``max_chars`` is cut at line breaks, a line at spaces,
    and a single overlong word anywhere. No text is lost or repeated: every piece
    is a contiguous span of ``text``, so two chunks never share a passage.
    """
    text = text.strip()
    if not text:
        return []
    if max_chars is None or len(text) <= max_chars:
        return [text]
    return [c for c in _greedy(text, max_chars, ("\n\n", "\n", " ")) if c.strip()]


def _greedy(text: str, max_chars: int, seps: tuple[str, ...]) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    if not seps:  # a single "word" longer than a chunk: cut it blindly
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    sep, rest = seps[0], seps[1:]
    out: list[str] = []
    current = ""
    for part in text.split(sep):
        if len(part) > max_chars:
            # Its pieces were cut at a finer separator; they must not be re-joined with this one.
            out += [current, *_greedy(part, max_chars, rest)]
            current = ""
        elif current and len(current) + len(sep) + len(part) > max_chars:
            out.append(current)
            current = part
        else:
            current = f"{current}{sep}{part}" if current else part
    out.append(current)
    return [c.strip() for c in out if c.strip()]
