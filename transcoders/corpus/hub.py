"""Streaming a Hugging Face hub dataset (online only; needs ``circuit-engine[hub]``).

Nothing is downloaded up front and nothing is cached: documents are read,
split and tokenized as they stream. A document's id is its ``id_field`` or,
by default, a hash of its text, so its split does not depend on stream order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from transcoders.corpus.sources import chunked
from transcoders.corpus.text import CHUNK_CHARS, Document, normalize

INSTALL_HINT = "pip install 'circuit-engine[hub]'"


def import_datasets() -> Any:
    """The ``datasets`` module, imported only when a hub corpus is used."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"streaming a hub dataset needs the `datasets` package. Fix: {INSTALL_HINT}, "
            "or use Corpus.packaged() / Corpus.from_files() offline."
        ) from e
    return datasets


class HubSource:
    """One split of a hub dataset, streamed with ``datasets.load_dataset(..., streaming=True)``."""

    def __init__(
        self,
        path: str,
        *,
        text_field: str = "text",
        split: str = "train",
        config: str | None = None,
        id_field: str | None = None,
        chunk_chars: int | None = CHUNK_CHARS,
        shuffle_buffer: int = 10_000,
        **load_kwargs: Any,
    ) -> None:
        self._datasets = import_datasets()  # fail at construction, not at the first batch
        self.path, self.config, self.split = path, config, split
        self.name = f"hub:{path}" + (f":{config}" if config else "") + f":{split}"
        self.text_field, self.id_field = text_field, id_field
        self.chunk_chars, self.shuffle_buffer = chunk_chars, shuffle_buffer
        self.load_kwargs = load_kwargs

    def _load(self) -> Any:
        try:
            return self._datasets.load_dataset(
                self.path, self.config, split=self.split, streaming=True, **self.load_kwargs
            )
        except Exception as e:  # datasets raises many kinds (ConnectionError, HfHubHTTPError, ...)
            raise ConnectionError(
                f"could not stream hub dataset {self.path!r} (split {self.split!r}): {type(e).__name__}: {e}. "
                "Fix: check the name and your network (HF_TOKEN for gated data), "
                "or use Corpus.packaged() / Corpus.from_files() offline."
            ) from e

    def documents(self, seed: int | None = None, epoch: int = 0) -> Iterator[Document]:
        """The stream in dataset order, or shuffled by ``datasets`` (shards and a buffer) when seeded."""
        ds = self._load()
        if seed is not None:
            ds = ds.shuffle(seed=seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(epoch)
        for row in ds:
            text = row.get(self.text_field)
            if not isinstance(text, str):
                raise ValueError(
                    f"hub dataset {self.path!r} rows have no string field {self.text_field!r} "
                    f"(they have {sorted(row)}). Fix: pass text_field= naming the text column."
                )
            text = normalize(text)
            if self.id_field is not None:
                work_id = str(row[self.id_field])
            else:
                work_id = hashlib.sha256(text.encode()).hexdigest()[:20]
            yield from chunked(self.name, work_id, text, self.chunk_chars)

    def fingerprint(self) -> None:
        return None  # a stream: never tokenized ahead, never cached

    def size_hint(self) -> None:
        return None
