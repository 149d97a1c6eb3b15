"""The shuffle buffer's chunks: the harvested pairs in corpus order, stored in the buffer's dtype."""

from __future__ import annotations

import itertools

import pytest
import torch

from circuits import tiny_model
from transcoders import harvest
from transcoders.buffer import PairStream, StreamSpec


def _rows(n_rows: int, seq_len: int, batch: int):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 60, (batch, seq_len), generator=g) for _ in range(n_rows)]
    return lambda: iter(rows), rows


def test_a_chunk_is_its_batches_harvested_in_order() -> None:
    model = tiny_model("llama", n_layers=2, d_model=16)
    factory, rows = _rows(6, 7, 2)
    spec = StreamSpec(chunk_batches=3, tokens_per_batch=2 * 6, batch_tokens=4)
    stream = PairStream(model, factory, spec, seed=0, precision="fp32")
    for index in (0, 1):
        x, y = stream.chunk(index)
        want = [harvest(model, ids, precision="fp32") for ids in rows[3 * index:3 * index + 3]]
        assert x.dtype == y.dtype == torch.bfloat16 and x.shape == (36, 2, 16)
        torch.testing.assert_close(x, torch.cat([w[0] for w in want]).to(torch.bfloat16))
        torch.testing.assert_close(y, torch.cat([w[1] for w in want]).to(torch.bfloat16))


def test_a_stream_that_ends_or_gives_short_rows_is_named() -> None:
    model = tiny_model("llama", n_layers=2, d_model=16)
    spec = StreamSpec(chunk_batches=3, tokens_per_batch=2 * 6, batch_tokens=4)
    factory, _ = _rows(2, 7, 2)
    with pytest.raises(ValueError, match="ended inside chunk 0.*never ends"):
        PairStream(model, factory, spec, seed=0, precision="fp32").chunk(0)
    short, _ = _rows(3, 5, 2)  # rows of 5 tokens where the spec expects 7
    with pytest.raises(ValueError, match="gave 24 pairs, not 36.*seq_len"):
        PairStream(model, short, spec, seed=0, precision="fp32").chunk(0)
    long_rows = lambda: itertools.repeat(torch.ones(2, 9, dtype=torch.long))  # noqa: E731
    with pytest.raises(ValueError, match="more than the 12"):
        PairStream(model, long_rows, spec, seed=0, precision="fp32").chunk(0)
