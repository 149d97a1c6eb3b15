"""Plan a trace's memory before it starts: what each part takes, the largest batch that fits a
budget, and an error that names the fix when even one row at a time cannot fit.

The plan counts the working memory ``trace`` allocates on top of the model and transcoders
already loaded (those are reported, not charged): every tensor below is named after the code
that allocates it. Sizes that depend on the prompt are exact once the transcoders have
encoded it (``TraceShape.counts``); before that, a TopK set's k per position gives them, and
other activations are taken as none active, so that the first check is a lower bound.

Where it goes (P positions, L layers, D = d_model, H heads, F features per layer, e bytes per
element of the compute dtype, n_a active features, B targets per batch):

- freezing: attention patterns ``[L, H, P, P]`` and every norm's input and output ``[L, P, D]``;
- encoding: pre-activations and activations ``[P, L, F]`` (``replace_mlps``);
- the residual map: the mixing patterns ``[L, H, P, P]`` and the folded weights (``residual_map``);
- sources: decoder vectors times activations, ``[P, D, f + 2]`` per layer for a PLT and
  ``[n_s, L - s, D]`` for a CLT (``attribute.build_sources``);
- a batch of rows: the dense ``[B, n_slots]`` edges, the grads ``[B, P, D]`` and their
  transients, a CLT's ``[B, P, L, D]`` stack, and the sparse chunk the edges become;
- stored rows (a value per edge, columns as runs) until the graph is assembled; beyond the
  budget they wait in a temporary file (``rows.RowStore``);
- the graph: its CSR adjacency and node table.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from circuits.replacement.freeze import post_norm_role
from transcoders.positions import FEATURE_START

ENV_BUDGET = "CIRCUITS_MEMORY_BUDGET"
DEFAULT_FRACTION = 0.8
"""Of the memory available when the trace starts: what the other 20% leaves for everything else."""
BLOCK_ENTRIES = 1 << 22
"""Stored rows are read back (scored, assembled) in blocks of about this many edges."""
MIN_BATCH = 16
"""Below this, batches are kept small only when the budget forces it."""
_NODE_BYTES = 4 * 7 + 4 * 64 + 4 + 4 + 8 * 7
"""One row of the node table (graphs.graph.NODE_COLUMNS: kind U7, token U64, int32s, int64s, float64s)."""


class MemoryBudgetError(MemoryError):
    """A trace would need more memory than its budget allows, even one row at a time."""


def parse_memory(value: int | float | str) -> int:
    """Bytes from ``8_000_000_000``, ``"8GiB"``, ``"8 GB"``, ``"512M"`` or ``"1.5T"``.

    KiB/MiB/GiB/TiB and bare K/M/G/T are powers of 1024 (as ``free -g`` counts); KB/MB/GB/TB
    are powers of 1000.
    """
    if isinstance(value, bool):
        raise TypeError("a memory size must be a number of bytes or a string like '8GiB', not a bool")
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(i?)([bB]?)\s*", value)
        if m is None:
            raise ValueError(f"cannot read {value!r} as a memory size. Fix: pass bytes, or e.g. '8GiB', '512MB', '2G'.")
        digits, prefix, binary, byte = m.groups()
        power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
        decimal = bool(prefix) and not binary and bool(byte)
        n = float(digits) * (1000 if decimal else 1024) ** power
    if not math.isfinite(n) or n <= 0:
        raise ValueError(f"a memory size must be positive, got {value!r}")
    return int(n)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def available_memory(device: torch.device) -> int | None:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` on CUDA; on the CPU, MemAvailable
    from /proc/meminfo (what the kernel can hand out without swapping), else free pages; None if
    unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _topk_counts(n_layers: int, n_pos: int, k: int, feature_start: int) -> np.ndarray:
    """``[L, P]``: k features at each position from ``feature_start`` on (none before: the position policy)."""
    counts = np.full((n_layers, n_pos), k, dtype=np.int64)
    counts[:, :feature_start] = 0
    return counts


@dataclass(frozen=True)
class Budget:
    """What a trace may allocate: on the attribution device, and on the host for stored rows."""

    device: int
    host: int
    source: str
    """Where ``device`` came from, for messages."""


def resolve_budget(memory_budget: int | float | str | None, device: torch.device) -> Budget:
    """``memory_budget`` (bytes, or a string like "8GiB"), else ``$CIRCUITS_MEMORY_BUDGET``, else
    80% of the memory available now. On the CPU one pool serves both; on CUDA the host's is the default."""
    host_free = available_memory(torch.device("cpu"))
    host_default = int(DEFAULT_FRACTION * host_free) if host_free else 1 << 62
    if memory_budget is not None:
        n, source = parse_memory(memory_budget), f"memory_budget={memory_budget!r}"
    elif os.environ.get(ENV_BUDGET, "").strip():
        n, source = parse_memory(os.environ[ENV_BUDGET]), f"{ENV_BUDGET}={os.environ[ENV_BUDGET]}"
    else:
        free = host_free if device.type != "cuda" else available_memory(device)
        if free is None:
            return Budget(1 << 62, host_default, "no limit (free memory unknown)")
        n = int(DEFAULT_FRACTION * free)
        source = f"{DEFAULT_FRACTION:.0%} of the {format_bytes(free)} available on {device.type}"
    return Budget(n, n if device.type != "cuda" else host_default, source)


@dataclass(frozen=True)
class TraceShape:
    """Everything a trace's memory depends on."""

    n_pos: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_vocab: int
    d_mlp: int
    d_features: int
    cross_layer: bool
    skip: bool
    write_norm: bool
    """Gemma with ``output_site="mlp_out"``: a norm between the write site and the residual."""
    n_norm_roles: int
    elem: int
    """Bytes per element in the compute dtype."""
    model_elem: int
    on_cuda: bool
    model_bytes: int
    transcoder_bytes: int
    transcoder_numel: int
    transcoder_copy: bool
    """Whether ``as_compute`` copies the transcoders (another device or dtype)."""
    n_logits: int
    """At most ``max_logits``."""
    cap: int | None
    counts: np.ndarray = field(repr=False)
    """``[L, P]`` active features per (layer, position)."""
    exact: bool
    """``counts`` measured on the prompt rather than estimated before encoding it."""
    held_errors: int = 0
    """Positions whose errors the graph holds as constants (no edges): ``trace``'s ``early_mlp``."""

    @classmethod
    def of(cls, model, transcoders: nn.Module, n_pos: int, *, device: torch.device, dtype: torch.dtype,
           max_logits: int, max_feature_nodes: int | None, feature_start: int = FEATURE_START,
           held_errors: int = FEATURE_START) -> TraceShape:
        """The shape before encoding: TopK sets fire k features per position from ``feature_start`` on;
        others are assumed silent (a lower bound, made exact by ``with_counts``)."""
        d, cfg = model.dims, transcoders.cfg
        p = next(transcoders.parameters())
        act = getattr(cfg, "activation", "")
        k = min(int(getattr(cfg, "k", 0) or 0), cfg.d_features) if act in ("topk", "batchtopk") else 0
        return cls(
            n_pos=n_pos, n_layers=d.n_layers, d_model=d.d_model, n_heads=d.n_heads, n_kv_heads=d.n_kv_heads,
            d_head=d.d_head, d_vocab=d.d_vocab, d_mlp=d.d_mlp, d_features=cfg.d_features,
            cross_layer=bool(transcoders.writes_across_layers), skip=getattr(transcoders, "W_skip", None) is not None,
            write_norm=post_norm_role(model.spec, cfg.output_site) is not None, n_norm_roles=len(model.spec.norms),
            elem=torch.empty(0, dtype=dtype).element_size(), model_elem=model.dtype.itemsize,
            on_cuda=device.type == "cuda",
            model_bytes=sum(t.numel() * t.element_size() for t in model.hf.parameters()),
            transcoder_bytes=sum(t.numel() * t.element_size() for t in transcoders.parameters()),
            transcoder_numel=sum(t.numel() for t in transcoders.parameters()),
            transcoder_copy=not (p.device == device and p.dtype == dtype),
            n_logits=max_logits, cap=max_feature_nodes,
            counts=_topk_counts(d.n_layers, n_pos, k, feature_start), exact=False, held_errors=held_errors,
        )

    def with_counts(self, layer: np.ndarray, pos: np.ndarray) -> TraceShape:
        """The shape with the active features measured: ``layer``, ``pos`` ``[n_active]``."""
        counts = np.zeros((self.n_layers, self.n_pos), dtype=np.int64)
        np.add.at(counts, (np.asarray(layer), np.asarray(pos)), 1)
        return replace(self, counts=counts, exact=True)

    # --- counts -----------------------------------------------------------------------------------

    @property
    def n_active(self) -> int:
        return int(self.counts.sum())

    @property
    def n_feature_rows(self) -> int:
        return self.n_active if self.cap is None else min(self.cap, self.n_active)

    @property
    def n_rows(self) -> int:
        return self.n_feature_rows + self.n_logits

    @property
    def n_slots(self) -> int:
        """Columns of a batch's dense edge matrix (``Sources.n_slots``): padded per-layer feature slots
        (PLT) or one per active feature (CLT), then errors and tokens."""
        L, P = self.n_layers, self.n_pos
        feats = self.n_active if self.cross_layer else P * int(self.counts.max(axis=1).sum())
        return feats + (L + 1) * P

    def _reach(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Nonzeros a row can have: ``(features [L, P], errors and tokens [L, P], logit features,
        logit errors and tokens)`` for targets at each (layer, position). A feature at (l, p) reads
        every source below layer l at positions up to p (attention is causal; layer l's attention
        comes before its MLP). The logits read after the last attention, so the last layer's
        sources reach them from the last position only."""
        L, P = self.n_layers, self.n_pos
        upto = np.cumsum(self.counts, axis=1)                                # [L, P] features at <= p
        below = np.concatenate([np.zeros((1, P), dtype=np.int64), np.cumsum(upto, axis=0)[:-1]])
        layer, pos = np.arange(L)[:, None], np.arange(P)[None, :]
        h = self.held_errors                                                 # errors there are constants
        other = layer * np.maximum(pos + 1 - h, 0) + (pos + 1)              # l errors and a token per position
        logit_features = int(upto[:-1, -1].sum() + self.counts[-1, -1]) if L else 0
        logit_other = max(L - 1, 0) * max(P - h, 0) + int(P > h) + P
        return below, np.broadcast_to(other, (L, P)), logit_features, logit_other

    def row_nnz(self) -> tuple[int, int, int]:
        """Stored edges over all rows ``(expected, upper bound, largest row)``. Without a cap both are the
        exact count of possible nonzeros; with one, the expected count takes the chosen features'
        rows to be as long as the average active feature's (measured within 10-20%, see
        benchmarks/memory.py), and the bound takes the longest."""
        feat, other, logit_f, logit_o = self._reach()
        reach = (feat + other).ravel()
        weights = self.counts.ravel()
        logits = self.n_logits * (logit_f + logit_o)
        longest = max(int(reach.max()) if reach.size else 0, logit_f + logit_o)
        if self.n_active == 0:
            return logits, logits, longest
        total = int((reach * weights).sum())
        if self.cap is None or self.cap >= self.n_active:
            return total + logits, total + logits, longest
        expected = int(total / self.n_active * self.cap)
        order = np.argsort(-reach, kind="stable")
        upper = _top_weighted_sum(reach[order], weights[order], self.cap)
        return expected + logits, upper + logits, longest

    def graph_nnz(self) -> int:
        """Upper bound on the assembled graph's edges: rows keep only the features in the graph."""
        if self.cap is None or self.cap >= self.n_active:
            return self.row_nnz()[1]
        feat, other, logit_f, logit_o = self._reach()
        per_cell = (np.minimum(feat, self.cap) + other).ravel()
        order = np.argsort(-per_cell, kind="stable")
        return (_top_weighted_sum(per_cell[order], self.counts.ravel()[order], self.cap)
                + self.n_logits * (min(logit_f, self.cap) + logit_o))

    @property
    def n_nodes(self) -> int:
        return self.n_feature_rows + (self.n_layers + 1) * self.n_pos + self.n_logits


def _top_weighted_sum(values: np.ndarray, weights: np.ndarray, k: int) -> int:
    """Sum of the first ``k`` items when ``values`` (sorted, descending) are repeated ``weights`` times."""
    taken = np.minimum(weights, np.maximum(k - (np.cumsum(weights) - weights), 0))
    return int((values * taken).sum())


@dataclass
class MemoryPlan:
    """The bytes a trace will use, phase by phase, and the batch size and row storage that fit its budget."""

    shape: TraceShape
    budget: Budget
    batch_size: int
    phases: dict[str, int]
    """Working memory at the peak of each phase (on the CPU, device and host together)."""
    parts: dict[str, int]
    """What the largest parts take (for the table and messages)."""
    per_row: int
    """Bytes of a batch per target row."""
    rows_in_memory: int
    """Bytes of stored rows kept in memory; the rest go to a temporary file."""
    rows_expected: int
    rows_upper: int
    spill_expected: int

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def resident(self) -> int:
        """The model and transcoders, loaded before the trace (not charged to the budget)."""
        return self.shape.model_bytes + self.shape.transcoder_bytes

    def summary(self) -> dict:
        """JSON-able facts for the graph's metadata."""
        return {"budget": self.budget.device, "budget_source": self.budget.source, "estimated_peak": self.peak,
                "resident": self.resident, "batch_size": self.batch_size, "rows_expected": self.rows_expected,
                "rows_in_memory": self.rows_in_memory, "phases": dict(self.phases)}

    def __str__(self) -> str:
        s = self.shape
        lines = [f"memory plan: {s.n_pos} tokens, {s.n_active:,} active features"
                 f"{'' if s.exact else ' (estimated)'}, {s.n_rows:,} rows in batches of {self.batch_size}; "
                 f"budget {format_bytes(self.budget.device)} ({self.budget.source})"]
        lines += [f"  {name:<28} {format_bytes(b):>12}" for name, b in self.parts.items() if b]
        lines += [f"  peak in {name:<20} {format_bytes(b):>12}" for name, b in self.phases.items()]
        lines.append(f"  {'model and transcoders':<28} {format_bytes(self.resident):>12} (loaded, not charged)")
        if self.spill_expected:
            lines.append(f"  about {format_bytes(self.spill_expected)} of rows wait on disk in {tempfile.gettempdir()}")
        return "\n".join(lines)


def plan_trace(shape: TraceShape, budget: Budget, batch_size: int | None = None,
               max_batch: int | None = None) -> MemoryPlan:
    """The phases' peaks for ``shape`` and the batch size: ``batch_size`` when given, else the largest
    up to ``max_batch`` (256 on the CPU, 1024 on CUDA) that leaves the expected stored rows in
    memory, or, failing that, a quarter of what is left for rows. Raises ``MemoryBudgetError`` when
    even one row at a time does not fit."""
    s = shape
    L, P, D, H, Hkv, dh, F = s.n_layers, s.n_pos, s.d_model, s.n_heads, s.n_kv_heads, s.d_head, s.d_features
    e, em = s.elem, s.model_elem
    n_a, n_slots = s.n_active, s.n_slots
    f_max = s.counts.max(axis=1) if s.counts.size else np.zeros(L, dtype=np.int64)
    capped = s.cap is not None and s.cap < n_a
    rows_expected_nnz, rows_upper_nnz, longest = s.row_nnz()
    run_bytes = (2 * L + 2) * 8                                             # a row's runs of columns (rows.RowChunk)
    idx_bytes = 4 if max(s.graph_nnz(), s.n_nodes) < 2**31 - 1 else 8

    # freeze(): patterns and every norm's input and output are kept, the rest of the forward is transient.
    patterns = L * H * P * P * em
    frozen_acts = (2 + 2 * s.n_norm_roles) * L * P * D * em                # mlp_in/write, norms in/out
    forward = P * s.d_vocab * em + 3 * H * P * P * max(em, 4) + 4 * P * max(s.d_mlp, D) * em
    # replace_mlps(): pre-activations and activations [P, L, F] kept (plus the bool mask); while
    # encoding, the einsum's output and decode's contiguous copy of the activations coexist with them.
    tc_copy = s.transcoder_numel * e if s.transcoder_copy else 0
    encoded = 2 * P * L * F * e + P * L * F + 2 * L * P * D * e
    encoding = 2 * P * L * F * e + P * L * D * e
    index = n_a * (3 * 8 + 2 * e + 8 + 8)                                    # layer/pos/feat, acts, pre, levels, renumbering
    # build_residual_map(): the mixing patterns [L, H, P, P] (cast, transposed and scaled in place)
    # and the folded weights; the [P, L, F] activations are gone by then.
    mix = L * H * P * P * e
    weights = (L * D * (H + Hkv) * dh + (L * D * D if s.skip else 0)) * e
    per_pos = (L * P * D * e) * (2 if s.write_norm else 1) + 2 * L * P * e  # attn_const, write_mul, scales
    # build_sources(): a PLT's [P, D, f + 2] table per layer; a CLT's decoder stack per source layer.
    if s.cross_layer:
        per_layer = s.counts.sum(axis=1)
        tables = int((per_layer * (L - np.arange(L))).sum()) * D * e + L * P * D * 2 * e
        tables_transient = int((per_layer * (L - np.arange(L))).max(initial=0)) * D * e
    else:
        tables = int(P * D * (f_max + 2).sum()) * e
        tables_transient = 3 * P * D * int(f_max.max(initial=0)) * e
    col_of = n_slots * 8
    errors = L * P * D * e
    # A batch (Attributor.rows): dense edges [B, n_slots], grads [B, P, D] and the transients of
    # one layer's step (the OV product and its reshapes, about twice the grads), a CLT's stack;
    # then to_chunk's sparse copy of the batch's rows.
    step = P * e * max(2 * H * dh, H * dh + 2 * Hkv * dh, D + 2 * (int(f_max.max(initial=0)) + 2)
                       + (D if s.write_norm else 0))
    stack = P * L * D * e if s.cross_layer else 0
    per_row = n_slots * e + max(P * D * e + step + stack, min(longest, n_slots) * e + run_bytes) + 3 * D * e
    per_batch = 2 * H * P * P * e + n_slots * 32                           # mix slices; to_chunk's row buffers
    # Stored rows and the graph. Readers go through stored rows a block at a time (a block is at
    # most a chunk, which is at most a batch of rows).
    scoring = (3 * 8 * (n_a + (L + 1) * P + s.n_logits) + s.n_rows * min(s.n_rows, n_a) * 12) if capped else 0
    graph = s.graph_nnz() * (idx_bytes + e) + (s.n_nodes + 1) * idx_bytes + s.n_nodes * _NODE_BYTES
    rows_expected = rows_expected_nnz * e + s.n_rows * run_bytes
    rows_upper = rows_upper_nnz * e + s.n_rows * run_bytes

    def block(b: int) -> int:
        return min(BLOCK_ENTRIES, b * longest, rows_upper_nnz) * 40       # RowChunk.blocks' transients

    small = frozen_acts // (2 + 2 * s.n_norm_roles) + index + tc_copy        # what stays to the end
    before = {
        "forward and freeze": patterns + frozen_acts + forward,
        "encode": patterns + frozen_acts + tc_copy + encoded + encoding,
        "residual map": patterns + frozen_acts + tc_copy + errors + index + mix + weights + per_pos,
        "sources": small + errors + mix + weights + per_pos + tables + tables_transient + col_of,
    }
    on_device = small + errors + mix + weights + per_pos + tables + col_of + per_batch

    def need(b: int, stored: int) -> tuple[int, int, int]:
        """(attribution rows, assemble) on the CPU, or (device, host) on CUDA, and the assemble phase."""
        host_rows = stored + scoring + block(b)
        end = stored + small + graph + block(b)
        if s.on_cuda:
            return on_device + b * per_row, max(host_rows, end), end
        return on_device + b * per_row + host_rows, end, end

    def fits(b: int, stored: int) -> bool:
        first, second, _ = need(b, stored)
        if s.on_cuda:
            return first <= budget.device and second <= budget.host
        return max(first, second) <= budget.device

    cap_b = max(1, min(max_batch or (1024 if s.on_cuda else 256), s.n_rows))
    if batch_size is not None:
        b = batch_size
    else:
        b = _largest(lambda x: fits(x, rows_expected), cap_b)
        if b < min(MIN_BATCH, cap_b):  # rows cannot all stay in memory: give the batch a quarter of what is left
            rows_phase, _, end = need(0, 0)
            room = budget.device - (rows_phase if s.on_cuda else max(rows_phase, end))
            b = max(1, min(cap_b, int(room // 4 // max(per_row, 1))))
    # Stored rows get what neither the batch nor the assembled graph needs.
    rows_phase, second, end = need(b, 0)
    pool = budget.host if s.on_cuda else budget.device
    rows_in_memory = max(0, min(rows_upper, pool - (second if s.on_cuda else max(rows_phase, end))))
    # The peak assumes the store fills its in-memory share: with a cap, the chosen rows' length is
    # an estimate (at 1,024 tokens they were a third longer than expected; BENCHMARKS.md).
    stored = rows_in_memory if s.cap is not None and s.cap < s.n_active else min(rows_expected, rows_in_memory)
    rows_phase, second, end = need(b, stored)
    phases = dict(before)
    phases["attribution rows"] = rows_phase
    phases["assemble"] = end
    parts = {
        "attention patterns": patterns, "freeze activations": frozen_acts, "transcoder activations": encoded,
        "transcoder copy": tc_copy, "active feature index": index, "residual map": mix + weights + per_pos,
        "sources (decoder x act)": tables, f"batch of {b} rows": b * per_row + per_batch,
        "stored rows (expected)": rows_expected, "graph (upper bound)": graph,
    }
    plan = MemoryPlan(s, budget, b, phases, parts, per_row, rows_in_memory, rows_expected, rows_upper,
                      max(0, rows_expected - rows_in_memory))
    least = need(b if batch_size is not None else 1, 0)
    _check(plan, explicit_batch=batch_size is not None, device_least=max(max(before.values()), least[0]),
           host_least=least[1])
    return plan


def _largest(ok, hi: int) -> int:
    """The largest b in [1, hi] with ok(b) (ok is monotone), or 0."""
    if not ok(1):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def _check(plan: MemoryPlan, *, explicit_batch: bool, device_least: int, host_least: int) -> None:
    """Raise unless the least the trace can do with (one row at a time, every stored row on disk) fits."""
    s, budget = plan.shape, plan.budget
    device_need = device_least if s.on_cuda else max(device_least, host_least)
    host_need = host_least
    short_device = device_need > budget.device
    short_host = s.on_cuda and host_need > budget.host
    spill_room = _free_disk()
    short_disk = plan.spill_expected > spill_room
    if not (short_device or short_host or short_disk):
        return
    fixes = []
    if s.cap is None or s.n_feature_rows > 512:
        fixes.append(f"fewer feature rows (max_feature_nodes={max(256, s.n_feature_rows // 4)}"
                     f"{'' if s.cap is None else f' instead of {s.cap}'})")
    fixes.append(f"a shorter prompt (this one is {s.n_pos} tokens; the patterns grow as its square)")
    if explicit_batch and plan.batch_size > 1:
        fixes.append(f"batch_size=None (sized to the budget) instead of {plan.batch_size}")
    fixes.append(f"a larger budget (memory_budget= or ${ENV_BUDGET})")
    if not s.on_cuda:
        fixes.append("a GPU (device='cuda')")
    if short_disk:
        what = (f"the {format_bytes(plan.rows_expected)} of rows it stores need {format_bytes(plan.spill_expected)} "
                f"of disk beyond the budget and {tempfile.gettempdir()} has {format_bytes(spill_room)} free")
        fixes.insert(0, "free disk space or point TMPDIR at a larger disk")
    elif short_host:
        what = f"the graph needs {format_bytes(host_need)} of host memory, over the {format_bytes(budget.host)} allowed"
    else:
        what = f"it needs at least {format_bytes(device_need)}, over the budget of {format_bytes(budget.device)}"
    raise MemoryBudgetError(
        f"this trace does not fit in memory: {what} ({budget.source}). Estimate for {s.n_pos} tokens, "
        f"{s.n_active:,} active features{'' if s.exact else ' (estimated before encoding)'} and {s.n_rows:,} rows:\n"
        f"{plan}\nFix: {'; or '.join(fixes)}.")


def _free_disk() -> int:
    try:
        return shutil.disk_usage(tempfile.gettempdir()).free
    except OSError:
        return 0
