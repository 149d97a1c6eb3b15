"""Where documents come from: the ``Source`` protocol, and local text files.

A source yields every document it holds (both splits) in a fixed order. A
finite source has a ``fingerprint`` that changes whenever its text may have
changed, so its token arrays can be cached; a stream (a hub dataset) has none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Protocol

from transcoders.corpus.text import CHUNK_CHARS, Document, chunk, normalize

TEXT_SUFFIXES = (".txt", ".md", ".jsonl")


class Source(Protocol):
    name: str

    def documents(self) -> Iterator[Document]:
        """Every document, both splits, always in the same order."""
        ...

    def fingerprint(self) -> str | None:
        """Changes whenever the text may have; ``None`` for a stream, which is never cached."""
        ...

    def size_hint(self) -> int | None:
        """About how many characters ``documents`` yields, for progress bars."""
        ...


def chunked(source: str, doc_id: str, text: str, max_chars: int | None) -> Iterator[Document]:
    """The chunks of one work as documents: ``doc_id`` alone, or ``doc_id#k`` when cut."""
    pieces = chunk(text, max_chars)
    for k, piece in enumerate(pieces):
        yield Document(source, doc_id if len(pieces) == 1 else f"{doc_id}#{k}", piece)


class FileSource:
    """Local ``.txt``/``.md`` files (one work each) and ``.jsonl`` files (one work per line).

    Directories are searched recursively, skipping hidden entries. A work's id
    is its path as given (``dir/sub/file.txt``; ``file.jsonl:LINE`` for a JSONL
    line), so its split stays put as long as the same paths are passed.
    """

    def __init__(
        self,
        paths: Sequence[str | PathLike[str]],
        *,
        name: str = "files",
        text_field: str = "text",
        chunk_chars: int | None = CHUNK_CHARS,
    ) -> None:
        if isinstance(paths, (str, PathLike)):
            paths = [paths]
        if not paths:
            raise ValueError("Corpus.from_files got no paths. Fix: pass a list of text files or directories.")
        self.name = name
        self.text_field = text_field
        self.chunk_chars = chunk_chars
        self.files: list[tuple[Path, str]] = []  # (path, work id)
        for arg in paths:
            self.files += _resolve(Path(arg))

    def documents(self) -> Iterator[Document]:
        for path, work_id in self.files:
            if path.suffix == ".jsonl":
                for line_no, text in _jsonl_texts(path, self.text_field):
                    yield from chunked(self.name, f"{work_id}:{line_no}", normalize(text), self.chunk_chars)
            else:
                text = normalize(path.read_bytes().decode("utf-8", errors="replace"))
                yield from chunked(self.name, work_id, text, self.chunk_chars)

    def fingerprint(self) -> str:
        # Size and mtime stand in for the content: reading every file just to
        # learn that the cached tokens are still good would cost half a tokenization.
        stats = [(work_id, p.stat().st_size, p.stat().st_mtime_ns) for p, work_id in self.files]
        blob = json.dumps([stats, self.text_field, self.chunk_chars])
        return hashlib.sha256(blob.encode()).hexdigest()

    def size_hint(self) -> int:
        return sum(p.stat().st_size for p, _ in self.files)


def _resolve(arg: Path) -> list[tuple[Path, str]]:
    if not arg.exists():
        raise FileNotFoundError(f"corpus path {str(arg)!r} does not exist. Fix: check the path, or remove it.")
    if arg.is_file():
        if arg.suffix not in TEXT_SUFFIXES:
            raise ValueError(
                f"corpus file {str(arg)!r} is not a text file this reader knows. "
                f"Fix: pass files ending in {', '.join(TEXT_SUFFIXES)}."
            )
        return [(arg, arg.as_posix())]
    found = sorted(
        p
        for p in arg.rglob("*")
        if p.is_file() and p.suffix in TEXT_SUFFIXES and not any(s.startswith(".") for s in p.relative_to(arg).parts)
    )
    if not found:
        raise ValueError(
            f"corpus directory {str(arg)!r} holds no {'/'.join(TEXT_SUFFIXES)} files. "
            "Fix: point at a directory of text files, or convert them to one of these formats."
        )
    return [(p, (arg / p.relative_to(arg)).as_posix()) for p in found]


def _jsonl_texts(path: Path, field: str) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no} is not valid JSON ({e}). Fix: one JSON object per line.") from e
            text = row.get(field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"{path}:{line_no} has no string field {field!r} (it has {keys}). "
                    f"Fix: pass text_field= naming the field that holds the text."
                )
            yield line_no, text
