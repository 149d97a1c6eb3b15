"""Which rows to compute, in what batches, and how they become one sparse matrix.

A full graph computes a row for every active feature and logit. With ``max_feature_nodes``
the features are chosen as circuit-tracer chooses them: logit rows first, then repeatedly
the not-yet-visited features with the most influence on the logits through the rows found
so far. Rows arrive as sparse chunks on the CPU; ``assemble`` lays them out as one CSR matrix
without ever holding a dense ``n_nodes²`` array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits.attribution.attribute import Attributor, Targets
from graphs.metrics import influence


@dataclass
class RowChunk:
    """Sparse rows for a batch of targets, on the CPU, with columns in source order."""

    rows: np.ndarray
    """``[B]`` the targets' node ids."""
    counts: np.ndarray
    """``[B]`` nonzeros per row."""
    cols: np.ndarray
    """``[nnz]`` int32 source columns, row by row, increasing within a row."""
    vals: np.ndarray
    """``[nnz]`` edge weights."""
    bias: np.ndarray
    """``[B]`` each target's constant term."""
    total: np.ndarray
    """``[B]`` float64 sum of each row (for the identity check)."""
    magnitude: np.ndarray
    """``[B]`` float64 sum of each row's absolute values."""


def to_chunk(rows: np.ndarray, edges: Tensor, bias: Tensor, col_of: Tensor) -> RowChunk:
    """Keep the nonzero entries of ``edges [B, n_slots]``, columns renamed by ``col_of [n_slots]``
    (slots follow node order, so columns stay sorted)."""
    nz = edges.nonzero()
    r, c = nz[:, 0], nz[:, 1]
    vals = edges[r, c]
    B = edges.shape[0]
    counts = torch.bincount(r, minlength=B)
    wide = vals.double()
    total = wide.new_zeros(B).index_add_(0, r, wide)
    magnitude = wide.new_zeros(B).index_add_(0, r, wide.abs())
    cols = col_of[c.cpu()]
    return RowChunk(rows, counts.cpu().numpy(), cols.to(torch.int32).numpy(), vals.cpu().numpy(),
                    bias.cpu().numpy(), total.cpu().numpy(), magnitude.cpu().numpy())


def batches(targets: Targets, batch_size: int) -> list[Tensor]:
    """Index batches over ``targets``, each sorted by layer, highest first (as ``Attributor.rows`` needs).

    Targets are grouped by position first: a batch then walks only the positions up to its
    own, and the layers down from its highest target, with little left idle.
    """
    if len(targets) == 0:
        return []
    n_layers = int(targets.layer.max()) + 1
    order = torch.argsort(targets.pos * n_layers + (n_layers - 1 - targets.layer), stable=True)
    return [idx[torch.argsort(-targets.layer[idx], stable=True)] for idx in order.split(batch_size)]


def compute_rows(attributor: Attributor, targets: Targets, node_ids: np.ndarray, batch_size: int,
                 bar: tqdm | None = None) -> list[RowChunk]:
    """Rows for every target as sparse chunks; ``node_ids [n]`` names each target's row."""
    chunks = []
    for idx in batches(targets, batch_size):
        edges, bias = attributor.rows(targets.take(idx))
        chunks.append(to_chunk(node_ids[idx.cpu().numpy()], edges, bias, attributor.src.col_of))
        if bar is not None:
            bar.update(len(idx))
    return chunks


def compute_selected_rows(attributor: Attributor, features: Targets, logits: Targets, logit_probs: np.ndarray,
                          max_features: int, batch_size: int, n_nodes: int, levels: np.ndarray,
                          update_interval: int = 4, bar: tqdm | None = None) -> tuple[list[RowChunk], np.ndarray]:
    """Logit rows, then rows for the ``max_features`` most influential features, chosen greedily.

    Node ids: features ``0..n_f-1``, logits the last ``len(logits)`` of ``n_nodes``; ``levels [n_nodes]``
    are the nodes' layers (see ``graphs.metrics.influence``).
    Returns the chunks and a ``[n_f]`` bool mask of the features visited.
    """
    n_f, n_l = len(features), len(logits)
    logit_ids = np.arange(n_nodes - n_l, n_nodes)
    chunks = compute_rows(attributor, logits, logit_ids, batch_size, bar)
    weights = np.zeros(n_nodes)
    weights[logit_ids] = logit_probs
    visited = np.zeros(n_f, dtype=bool)
    done = 0
    while done < max_features:
        partial = assemble(chunks, n_nodes, np.arange(n_nodes), np.arange(n_nodes), np.float64).matrix
        score = influence(partial, weights, levels)[:n_f]
        rank = np.argsort(-score, kind="stable")
        pending = rank[~visited[rank]][:min(update_interval * batch_size, max_features - done)]
        chunks += compute_rows(attributor, features.take(torch.as_tensor(pending, device=features.layer.device)),
                               pending, batch_size, bar)
        visited[pending] = True
        done += len(pending)
    return chunks, visited


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


def assemble(chunks: list[RowChunk], n_new: int, row_map: np.ndarray, col_map: np.ndarray,
             dtype: np.dtype) -> Assembled:
    """Lay chunks out as one ``[n_new, n_new]`` CSR matrix.

    ``row_map`` and ``col_map`` send the chunks' row and column ids to new ones (``-1``: dropped).
    Entries in dropped columns are summed per row instead.
    """
    bias, excluded, total, magnitude = (np.full(n_new, np.nan) for _ in range(4))
    drops = bool(np.any(col_map < 0))
    identity = not drops and _is_identity(col_map)
    # First the row lengths, then every chunk copied straight into place: one pass, no stacking.
    counts = np.zeros(n_new, dtype=np.int64)
    kept_counts = []
    for ch in chunks:
        new_rows = row_map[ch.rows]
        bias[new_rows], total[new_rows], magnitude[new_rows] = ch.bias, ch.total, ch.magnitude
        if drops:
            entry_row = np.repeat(np.arange(len(ch.rows)), ch.counts)
            keep = col_map[ch.cols] >= 0
            excluded[new_rows] = np.bincount(entry_row[~keep], weights=ch.vals[~keep], minlength=len(ch.rows))
            kept = np.bincount(entry_row[keep], minlength=len(ch.rows))
        else:
            excluded[new_rows] = 0.0
            kept = ch.counts
        counts[new_rows] = kept
        kept_counts.append(kept)
    nnz = int(counts.sum())
    index_dtype = np.int32 if max(nnz, n_new) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_new + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, dtype=index_dtype)
    data = np.empty(nnz, dtype=dtype)
    starts = indptr.tolist()
    for ch, kept in zip(chunks, kept_counts):
        cols, vals = ch.cols, ch.vals
        if drops:
            keep = col_map[cols] >= 0
            cols, vals = cols[keep], vals[keep]
        if not identity:
            cols = col_map[cols]
        # Each row is a contiguous run in the chunk and in the result: copy run by run.
        ends = np.cumsum(kept)
        for r, end, k in zip(row_map[ch.rows].tolist(), ends.tolist(), kept.tolist()):
            if k:
                at = starts[r]
                indices[at:at + k] = cols[end - k:end]
                data[at:at + k] = vals[end - k:end]
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_new, n_new))
    matrix.has_sorted_indices = True  # columns rise within a row and the maps keep their order
    return Assembled(matrix, bias, excluded, total, magnitude)


def _is_identity(col_map: np.ndarray) -> bool:
    return bool(np.array_equal(col_map, np.arange(len(col_map))))
