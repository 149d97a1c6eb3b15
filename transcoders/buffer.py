"""A shuffle buffer of (MLP input, output) pairs that is deterministic and resumable.

Activations are never dumped to disk. The stream is cut into *chunks*: a chunk is
``chunk_batches`` model batches harvested into one buffer (``[n, n_layers, d_model]``, bf16),
shuffled by a generator seeded with ``(seed, rank, chunk)``, and served as training
batches before the next chunk is harvested. Step ``s`` therefore always sees the same
tokens: resuming at step ``s`` skips the corpus to the start of its chunk, re-harvests
that one chunk and continues from the right offset, bit for bit.

Across ``world`` ranks, corpus batch ``i`` belongs to rank ``i % world``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from transcoders.harvest import HarvestModel, harvest
from transcoders.positions import FEATURE_START
from transcoders.precision import Precision


@dataclass(frozen=True)
class StreamSpec:
    """How pairs are cut into chunks and steps (identical on every rank)."""

    chunk_batches: int  # model batches harvested per chunk, per rank
    tokens_per_batch: int  # pairs one model batch yields (batch_size * (seq_len - skip_first))
    batch_tokens: int  # pairs per training step, per rank
    chunk_epochs: int = 1  # passes over each chunk (reusing activations saves harvest time)

    @property
    def chunk_tokens(self) -> int:
        return self.chunk_batches * self.tokens_per_batch

    @property
    def steps_per_chunk(self) -> int:
        per_pass = self.chunk_tokens // self.batch_tokens
        if per_pass < 1:
            raise ValueError(
                f"a chunk holds {self.chunk_tokens} pairs, fewer than one training batch ({self.batch_tokens}). "
                "Fix: raise chunk_batches or lower batch_tokens.")
        return per_pass * self.chunk_epochs


class PairStream:
    """Training batches ``(x, y)``, each ``[batch_tokens, n_layers, d_model]``, from step ``start``.

    ``token_batches`` must return a fresh, deterministic iterator of LongTensor ``[B, T]``
    (e.g. ``corpus.batches(..., epochs=None)``); it is re-opened on every ``iterate`` call.
    """

    def __init__(self, model: HarvestModel, token_batches: Callable[[], Iterator[Tensor]], spec: StreamSpec, *,
                 seed: int, rank: int = 0, world: int = 1, input_site: str = "mlp_in",
                 output_site: str = "mlp_resid", precision: Precision = "auto", skip_first: int = FEATURE_START,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        self.model, self.token_batches, self.spec = model, token_batches, spec
        self.seed, self.rank, self.world = seed, rank, world
        self.sites = (input_site, output_site)
        self.precision, self.skip_first, self.dtype = precision, skip_first, dtype

    def chunk(self, index: int, rows: Iterator[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Harvest chunk ``index`` of this rank: ``x, y [chunk_tokens, n_layers, d_model]`` (unshuffled)."""
        if rows is None:
            rows = self._rows(index)
        x_chunk = y_chunk = None
        filled = n_batches = 0
        for ids in itertools.islice(rows, self.spec.chunk_batches):
            x, y = harvest(self.model, ids, input_site=self.sites[0], output_site=self.sites[1],
                           precision=self.precision, skip_first=self.skip_first)
            if x_chunk is None:  # written in place, converted on the way: no per-batch copies to concatenate
                x_chunk = x.new_empty((self.spec.chunk_tokens, *x.shape[1:]), dtype=self.dtype)
                y_chunk = y.new_empty((self.spec.chunk_tokens, *y.shape[1:]), dtype=self.dtype)
            if filled + x.shape[0] > self.spec.chunk_tokens:
                raise ValueError(f"a model batch gave {x.shape[0]} pairs, more than the {self.spec.tokens_per_batch} "
                                 "the stream was set up for. Fix: pass rows of seq_len tokens, model_batch at a time.")
            x_chunk[filled:filled + x.shape[0]].copy_(x)
            y_chunk[filled:filled + y.shape[0]].copy_(y)
            filled += x.shape[0]
            n_batches += 1
        if n_batches < self.spec.chunk_batches:
            raise ValueError(f"the token stream ended inside chunk {index}. Fix: pass a stream that never ends "
                             "(corpus.batches(..., epochs=None)).")
        if filled < self.spec.chunk_tokens:
            raise ValueError(f"chunk {index}'s model batches gave {filled} pairs, not {self.spec.chunk_tokens}. Fix: pass "
                             "rows of seq_len tokens, model_batch at a time.")
        return x_chunk, y_chunk

    def _rows(self, chunk: int) -> Iterator[Tensor]:
        """This rank's model batches from the start of ``chunk`` on."""
        start = chunk * self.spec.chunk_batches * self.world
        stream = itertools.islice(self.token_batches(), start, None)
        return (ids for i, ids in enumerate(stream) if i % self.world == self.rank)

    def order(self, chunk: int, epoch: int) -> Tensor:
        """The shuffled order of a chunk's pairs for one pass, ``[chunk_tokens]``."""
        key = 0
        for part in (self.seed, self.rank, chunk, epoch):
            key = (key * 1_000_003 + part) % (1 << 62)
        g = torch.Generator().manual_seed(key)
        return torch.randperm(self.spec.chunk_tokens, generator=g)

    def iterate(self, start: int = 0, first: tuple[Tensor, Tensor] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches for steps ``start, start + 1, …``, forever.

        ``first``: the chunk that ``start`` falls in, if the caller has harvested it already.
        """
        spec = self.spec
        per_pass = spec.steps_per_chunk // spec.chunk_epochs
        chunk, offset = divmod(start, spec.steps_per_chunk)
        rows = self._rows(chunk)
        while True:
            if first is not None:
                x, y = first
                first = None
                rows = itertools.islice(rows, self.spec.chunk_batches, None)  # skip what it was made from
            else:
                x, y = self.chunk(chunk, rows)
            order = None
            for step in range(offset, spec.steps_per_chunk):
                epoch, i = divmod(step, per_pass)
                if order is None or i == 0:
                    order = self.order(chunk, epoch)
                idx = order[i * spec.batch_tokens:(i + 1) * spec.batch_tokens]
                yield x[idx], y[idx]
            chunk, offset = chunk + 1, 0
