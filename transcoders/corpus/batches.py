"""From a stream of framed documents to shuffled ``[batch_size, seq_len]`` token batches.

Three small stages, each a generator so memory stays at one shuffle buffer:
``pack`` cuts the concatenated stream into rows, ``shuffle`` mixes rows within a
buffer (rows of one long document would otherwise sit side by side), and
``batch`` stacks rows. All randomness comes from the ``Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch


def pack(docs: Iterable[np.ndarray], seq_len: int, bos_id: int | None = None) -> Iterator[np.ndarray]:
    """Rows ``[seq_len]`` of the concatenated documents; the last partial row is dropped.

    With ``bos_id``, every row starts with it: a row whose stream position
    already holds a BOS takes ``seq_len`` stream tokens, any other takes
    ``seq_len - 1`` after an added BOS, so no row holds two BOS in a row.
    """
    carry = np.zeros(0, dtype=np.int32)
    for doc in docs:
        buf = np.concatenate([carry, doc]) if len(carry) else doc
        pos = 0
        while len(buf) - pos >= seq_len:
            if bos_id is None or buf[pos] == bos_id:
                row = buf[pos : pos + seq_len]
                pos += seq_len
            else:
                row = np.concatenate([np.array([bos_id], dtype=buf.dtype), buf[pos : pos + seq_len - 1]])
                pos += seq_len - 1
            yield row
        carry = buf[pos:]


def shuffle(rows: Iterable[np.ndarray], buffer_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Rows in a random order: each comes out at a random time within a window of ``buffer_size``.

    ``buffer_size=0`` passes rows through in stream order.
    """
    if buffer_size <= 0:
        yield from rows
        return
    buf: list[np.ndarray] = []
    for row in rows:
        if len(buf) < buffer_size:
            buf.append(row)
            continue
        i = int(rng.integers(buffer_size))
        yield buf[i]
        buf[i] = row
    for i in rng.permutation(len(buf)):
        yield buf[i]


def batch(rows: Iterable[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """``LongTensor [batch_size, seq_len]`` per ``batch_size`` rows; a last partial batch is dropped."""
    group: list[np.ndarray] = []
    for row in rows:
        group.append(row)
        if len(group) == batch_size:
            yield torch.from_numpy(np.stack(group).astype(np.int64))
            group = []
