"""Which rows to compute, in what batches, where they wait, and how they become one sparse matrix.

A full graph computes a row for every active feature and logit. With ``max_feature_nodes``
the features are chosen as circuit-tracer chooses them: logit rows first, then repeatedly
the not-yet-visited features with the most influence on the logits through the rows found
so far. Rows arrive as sparse chunks on the CPU and wait in a ``RowStore`` (in memory up to
the plan's allowance, then in a temporary file); ``assemble`` lays them out as one CSR matrix
without ever holding a dense ``n_nodes²`` array. Everything that reads stored rows does so in
blocks of about ``BLOCK_ENTRIES`` edges, so its transients stay small whatever a chunk's size.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits.attribution.attribute import Attributor, FeatureTargets, Targets
from circuits.attribution.memory import BLOCK_ENTRIES

SELECTION_ROUND = 1024
"""Features chosen per round of ``max_feature_nodes`` selection: fixed (it was 4 batches), so that
the graph does not depend on the batch size the memory budget picks."""


@dataclass
class RowChunk:
    """Sparse rows for a batch of targets, on the CPU, with columns in source order.

    A row's nonzero columns come in a few runs of consecutive ids (the features of each lower
    layer up to its position, then errors, then tokens), so they are kept as runs: a value is
    all an edge costs.
    """

    rows: np.ndarray
    """``[B]`` the targets' node ids."""
    counts: np.ndarray
    """``[B]`` nonzeros per row."""
    runs: np.ndarray
    """``[B]`` runs of consecutive columns per row."""
    run_start: np.ndarray
    """``[n_runs]`` int32 first column of each run, row by row, increasing within a row."""
    run_length: np.ndarray
    """``[n_runs]`` int32."""
    vals: np.ndarray
    """``[nnz]`` edge weights, row by row."""
    bias: np.ndarray
    """``[B]`` each target's constant term."""
    total: np.ndarray
    """``[B]`` float64 sum of each row (for the identity check)."""
    magnitude: np.ndarray
    """``[B]`` float64 sum of each row's absolute values."""

    @property
    def nbytes(self) -> int:
        return self.run_start.nbytes + self.run_length.nbytes + self.vals.nbytes

    def columns(self, rows: slice, out: np.ndarray | None = None) -> np.ndarray:
        """``[entries]`` the columns of ``rows``' edges, row by row: int64, or written into ``out``
        (an integer array of that length; the graph's CSR indices, without an int64 copy first)."""
        ends = np.cumsum(self.runs)
        r0, r1 = int(ends[rows.start - 1]) if rows.start else 0, int(ends[rows.stop - 1])
        start, length = self.run_start[r0:r1].astype(np.int64), self.run_length[r0:r1]
        shift = start - (np.cumsum(length) - length)          # column minus entry index, per run
        n = int(length.sum())
        if out is None:
            return np.repeat(shift, length) + np.arange(n)
        np.add(np.repeat(shift.astype(out.dtype), length), np.arange(n, dtype=out.dtype), out=out)
        return out

    def blocks(self, entries: int = BLOCK_ENTRIES) -> Iterator[tuple[slice, slice]]:
        """``(rows, entries)`` slices over runs of whole rows holding about ``entries`` edges each."""
        ends = np.cumsum(self.counts)
        r0, e0 = 0, 0
        while r0 < len(self.rows):
            r1 = max(r0 + 1, int(np.searchsorted(ends, e0 + entries, side="right")))
            e1 = int(ends[r1 - 1])
            yield slice(r0, r1), slice(e0, e1)
            r0, e0 = r1, e1


def to_chunk(rows: np.ndarray, edges: Tensor, bias: Tensor, col_of: np.ndarray) -> RowChunk:
    """Keep the nonzero entries of ``edges [B, n_slots]``, columns renamed by ``col_of [n_slots]`` (int32;
    slots follow node order, so columns stay sorted). Row by row: the transients are one row's,
    where ``edges.nonzero()`` would take 16 bytes per edge of the whole batch."""
    dense = edges.cpu().numpy()                                             # a view on the CPU
    counts = np.count_nonzero(dense, axis=1)
    vals = np.empty(int(counts.sum()), dtype=dense.dtype)
    total, magnitude = np.empty(len(rows)), np.empty(len(rows))
    starts, lengths, runs = [], [], np.zeros(len(rows), dtype=np.int64)
    at = 0
    for i, k in enumerate(counts.tolist()):
        nz = np.flatnonzero(dense[i])
        v = dense[i, nz]
        vals[at:at + k] = v
        total[i], magnitude[i] = v.sum(dtype=np.float64), np.abs(v).sum(dtype=np.float64)
        if k:
            cols = col_of[nz]
            cut = np.flatnonzero(np.diff(cols) != 1) + 1
            starts.append(cols[np.concatenate([[0], cut])])
            lengths.append(np.diff(np.concatenate([[0], cut, [k]])).astype(np.int32))
            runs[i] = len(cut) + 1
        at += k
    empty = np.zeros(0, dtype=np.int32)
    return RowChunk(rows, counts, runs, np.concatenate(starts) if starts else empty,
                    np.concatenate(lengths) if lengths else empty, vals, bias.cpu().numpy(), total, magnitude)


@dataclass
class _Spilled:
    """A chunk whose columns and values wait in the store's file at ``offset``."""

    chunk: RowChunk
    """The chunk with empty runs and values."""
    offset: int
    n_runs: int
    nnz: int


class RowStore:
    """Row chunks in arrival order: in memory up to ``limit`` bytes of columns and values, the
    rest in an unnamed temporary file (gone when the store is closed or collected)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.bytes_in_memory = 0
        self.bytes_on_disk = 0
        self.nnz = 0
        self._items: list[RowChunk | _Spilled] = []
        self._file = None

    def __len__(self) -> int:
        return len(self._items)

    def append(self, chunk: RowChunk) -> None:
        self.nnz += len(chunk.vals)
        if self.limit is None or self.bytes_in_memory + chunk.nbytes <= self.limit:
            self._items.append(chunk)
            self.bytes_in_memory += chunk.nbytes
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="circuits-rows-")
        f = self._file
        f.seek(0, 2)
        offset = f.tell()
        for a in (chunk.run_start, chunk.run_length, chunk.vals):
            a.tofile(f)
        self.bytes_on_disk += chunk.nbytes
        empty = dataclasses.replace(chunk, run_start=chunk.run_start[:0].copy(), run_length=chunk.run_length[:0].copy(),
                                    vals=chunk.vals[:0].copy())
        self._items.append(_Spilled(empty, offset, len(chunk.run_start), len(chunk.vals)))

    def metadata(self) -> Iterator[RowChunk]:
        """The chunks without reading spilled runs and values back (rows, counts, bias, sums)."""
        for item in self._items:
            yield item.chunk if isinstance(item, _Spilled) else item

    def __iter__(self) -> Iterator[RowChunk]:
        for item in self._items:
            yield self._load(item)

    def drain(self) -> Iterator[RowChunk]:
        """Every chunk once, each let go of as the next is read: memory falls as a reader builds its output."""
        while self._items:
            item = self._items.pop(0)
            if not isinstance(item, _Spilled):
                self.bytes_in_memory -= item.nbytes
            yield self._load(item)
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        self.close()

    def _load(self, item: RowChunk | _Spilled) -> RowChunk:
        if not isinstance(item, _Spilled):
            return item
        c = item.chunk
        self._file.seek(item.offset)
        start = np.fromfile(self._file, dtype=np.int32, count=item.n_runs)
        length = np.fromfile(self._file, dtype=np.int32, count=item.n_runs)
        vals = np.fromfile(self._file, dtype=c.vals.dtype, count=item.nnz)
        return dataclasses.replace(c, run_start=start, run_length=length, vals=vals)


def batches(targets: Targets | FeatureTargets, batch_size: int) -> list[Tensor]:
    """Index batches over ``targets``, each sorted by layer, highest first (as ``Attributor.rows`` needs).

    Targets are grouped by position first: a batch then walks only the positions up to its
    own, and the layers down from its highest target, with little left idle.
    """
    if len(targets) == 0:
        return []
    n_layers = int(targets.layer.max()) + 1
    order = torch.argsort(targets.pos * n_layers + (n_layers - 1 - targets.layer), stable=True)
    return [idx[torch.argsort(-targets.layer[idx], stable=True)] for idx in order.split(batch_size)]


def compute_rows(attributor: Attributor, targets: Targets | FeatureTargets, node_ids: np.ndarray, batch_size: int,
                 store: RowStore, bar: tqdm | None = None) -> None:
    """Rows for every target, added to ``store`` as sparse chunks; ``node_ids [n]`` names each target's row."""
    col_of = attributor.src.col_of.numpy().astype(np.int32)
    buffer: Tensor | None = None  # one edge buffer for every batch; to_chunk copies what it keeps
    for idx in batches(targets, batch_size):
        batch = targets.take(idx).resolve()
        if buffer is None or buffer.shape[0] < len(idx):
            buffer = None
            buffer = batch.vec.new_empty(len(idx), attributor.src.n_slots)
        edges, bias = attributor.rows(batch, out=buffer)
        store.append(to_chunk(node_ids[idx.cpu().numpy()], edges, bias, col_of))
        del edges
        if bar is not None:
            bar.update(len(idx))


def compute_selected_rows(attributor: Attributor, features: FeatureTargets, logits: Targets,
                          logit_probs: np.ndarray, max_features: int, batch_size: int, n_nodes: int,
                          levels: np.ndarray, store: RowStore, round_size: int = SELECTION_ROUND,
                          bar: tqdm | None = None) -> np.ndarray:
    """Logit rows, then rows for the ``max_features`` most influential features, chosen greedily
    ``round_size`` at a time (not tied to ``batch_size``, so the graph does not depend on it).

    Node ids: features ``0..n_f-1``, logits the last ``len(logits)`` of ``n_nodes``; ``levels [n_nodes]``
    are the nodes' layers (see ``graphs.metrics.influence``). Rows go to ``store``.
    Returns a ``[n_f]`` bool mask of the features visited.
    """
    n_f, n_l = len(features), len(logits)
    logit_ids = np.arange(n_nodes - n_l, n_nodes)
    compute_rows(attributor, logits, logit_ids, batch_size, store, bar)
    weights = np.zeros(n_nodes)
    weights[logit_ids] = logit_probs
    visited = np.zeros(n_f, dtype=bool)
    done = 0
    while done < max_features:
        score = feature_influence(store, weights, levels, visited)
        rank = np.argsort(-score, kind="stable")
        pending = rank[~visited[rank]][:min(round_size, max_features - done)]
        compute_rows(attributor, features.take(torch.as_tensor(pending, device=features.layer.device)), pending,
                     batch_size, store, bar)
        visited[pending] = True
        done += len(pending)
    return visited


def feature_influence(store: RowStore, weights: np.ndarray, levels: np.ndarray, visited: np.ndarray) -> np.ndarray:
    """``graphs.metrics.influence`` of the stored rows on the nodes weighted by ``weights [n_nodes]``, for
    the features ``[n_f]``, without assembling the rows into one matrix.

    Influence flows down from a target t to a source s as ``x[s] += (w[t] + x[t]) |A[t, s]| / Σ_s |A[t, s]|``.
    Only visited nodes have rows, so the x of every row comes from the edges among visited nodes
    (a small matrix, swept top level down); then one pass over all stored edges spreads it to
    every feature.
    """
    n_nodes, n_f = len(weights), len(visited)
    chunks = list(store.metadata())
    row_ids = np.concatenate([c.rows for c in chunks]) if chunks else np.zeros(0, dtype=np.int64)
    norm = np.maximum(np.concatenate([c.magnitude for c in chunks]) if chunks else np.zeros(0), 1e-10)
    where = np.full(n_nodes, -1)
    where[row_ids] = np.arange(len(row_ids))
    keep = np.zeros(n_nodes, dtype=bool)
    keep[:n_f] = visited
    # Edges among visited nodes, as (row index, source node, |weight|).
    t_list, s_list, a_list = [], [], []
    first = 0
    for chunk in store:
        for rows, entries in chunk.blocks():
            cols = chunk.columns(rows)
            hit = keep[cols]
            if hit.any():
                local = np.repeat(np.arange(rows.start, rows.stop), chunk.counts[rows])
                t_list.append(first + local[hit])
                s_list.append(cols[hit])
                a_list.append(np.abs(chunk.vals[entries][hit]).astype(np.float64))
        first += len(chunk.rows)
    x = np.zeros(n_nodes)
    if t_list:
        t, s, a = np.concatenate(t_list), np.concatenate(s_list), np.concatenate(a_list)
        row_level = levels[row_ids]
        for level in np.unique(row_level)[::-1]:               # a row's x is complete once the levels above are done
            sel = row_level[t] == level
            coef = (weights[row_ids] + x[row_ids]) / norm
            x += np.bincount(s[sel], weights=a[sel] * coef[t[sel]], minlength=n_nodes)
    coef = (weights[row_ids] + x[row_ids]) / norm                            # [n_rows] final
    score = np.zeros(n_nodes)
    first = 0
    for chunk in store:
        for rows, entries in chunk.blocks():
            c = np.repeat(coef[first + rows.start:first + rows.stop], chunk.counts[rows])
            score += np.bincount(chunk.columns(rows), weights=np.abs(chunk.vals[entries]) * c, minlength=n_nodes)
        first += len(chunk.rows)
    return score[:n_f]


@dataclass
class Assembled:
    """The adjacency and per-row facts, in node order (NaN for rows without a chunk)."""

    matrix: sp.csr_matrix
    bias: np.ndarray
    excluded: np.ndarray
    """Sum of the entries in dropped columns (features left out of the graph)."""
    total: np.ndarray
    """Sum of all entries, dropped columns included."""
    magnitude: np.ndarray
    """Sum of all absolute values, dropped columns included."""


def assemble(store: RowStore, n_new: int, row_map: np.ndarray, col_map: np.ndarray, dtype: np.dtype) -> Assembled:
    """Lay the stored chunks out as one ``[n_new, n_new]`` CSR matrix, emptying ``store`` as it goes.

    ``row_map`` and ``col_map`` send the chunks' row and column ids to new ones (``-1``: dropped).
    Entries in dropped columns are summed per row instead.
    """
    bias, excluded, total, magnitude = (np.full(n_new, np.nan) for _ in range(4))
    drops = bool(np.any(col_map < 0))
    # First the row lengths (reading only columns), then every block copied straight into place.
    counts = np.zeros(n_new, dtype=np.int64)
    for ch in (store if drops else store.metadata()):
        new_rows = row_map[ch.rows]
        bias[new_rows], total[new_rows], magnitude[new_rows] = ch.bias, ch.total, ch.magnitude
        if not drops:
            counts[new_rows], excluded[new_rows] = ch.counts, 0.0
            continue
        for rows, entries in ch.blocks():
            local = np.repeat(np.arange(rows.stop - rows.start), ch.counts[rows])
            keep = col_map[ch.columns(rows)] >= 0
            n = rows.stop - rows.start
            excluded[new_rows[rows]] = np.bincount(local[~keep], weights=ch.vals[entries][~keep], minlength=n)
            counts[new_rows[rows]] = np.bincount(local[keep], minlength=n)
    nnz = int(counts.sum())
    index_dtype = np.int32 if max(nnz, n_new) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_new + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, dtype=index_dtype)
    data = np.empty(nnz, dtype=dtype)

    identity = len(col_map) == n_new and bool(np.array_equal(col_map, np.arange(n_new)))

    def place(ch: RowChunk) -> None:
        new_rows = row_map[ch.rows]
        if not drops:
            # Rows that follow each other in the chunk and in node order (a batch's features of one
            # layer and position) are one run in both: copied as slices, not scattered.
            ends = np.cumsum(ch.counts)
            for rows, _ in ch.blocks():
                r = np.arange(rows.start, rows.stop)
                cuts = np.flatnonzero(np.diff(new_rows[r]) != 1) + 1
                for r0, r1 in zip(np.concatenate([[rows.start], r[cuts]]).tolist(),
                                  np.concatenate([r[cuts], [rows.stop]]).tolist()):
                    e0, e1 = (int(ends[r0 - 1]) if r0 else 0), int(ends[r1 - 1])
                    d0 = int(indptr[new_rows[r0]])
                    if identity:
                        ch.columns(slice(r0, r1), out=indices[d0:d0 + e1 - e0])
                    else:
                        indices[d0:d0 + e1 - e0] = col_map[ch.columns(slice(r0, r1))]
                    data[d0:d0 + e1 - e0] = ch.vals[e0:e1]
            return
        for rows, entries in ch.blocks():
            cols, vals = ch.columns(rows), ch.vals[entries]
            if drops:
                keep = col_map[cols] >= 0
                cols, vals = cols[keep], vals[keep]
            kept = counts[new_rows[rows]]
            # Row r's run starts at indptr[r]; entries of a block follow row by row.
            dest = np.repeat(indptr[new_rows[rows]] - (np.cumsum(kept) - kept), kept) + np.arange(len(cols))
            indices[dest] = col_map[cols]
            data[dest] = vals

    # Chunks hold distinct rows, so they fill disjoint parts of the arrays: as many at once as torch
    # has threads (numpy lets go of the GIL in these loops), at most that many read back and waiting.
    n = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(max_workers=n) as pool:
        pending: deque[Future] = deque()
        for ch in store.drain():
            pending.append(pool.submit(place, ch))
            if len(pending) >= n:
                pending.popleft().result()
        for done in pending:
            done.result()
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_new, n_new))
    matrix.has_sorted_indices = True  # columns rise within a row and the maps keep their order
    return Assembled(matrix, bias, excluded, total, magnitude)
