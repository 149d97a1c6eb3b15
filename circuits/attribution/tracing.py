"""``trace(prompt)``: the attribution graph of a prompt in the model's replacement model."""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from circuits.attribution.attribute import (
    Attributor,
    FeatureTargets,
    Targets,
    build_sources,
)
from circuits.attribution.heads import HeadLoadingMode, TargetLoadings, loadings_for
from circuits.attribution.checks import (
    check_options,
    check_transcoders,
    default_transcoders,
)
from circuits.attribution.residual_map import build_residual_map
from circuits.attribution.targets import ChosenTargets, TargetSpec, choose_targets
from circuits.attribution.memory import TraceShape, plan_trace, resolve_budget
from circuits.attribution.rows import RowStore, assemble, compute_rows, compute_selected_rows
from circuits.models.adapter import Model, PromptError
from circuits.models.loading import load_model, resolve_device, resolve_dtype
from circuits.replacement import FrozenForward, as_compute, freeze, replace_mlps
from circuits.replacement.slots import early_errors
from graphs.graph import AttributionGraph, empty_nodes
from graphs.heads import HeadLoadingTable, set_head_loadings
from transcoders.positions import FEATURE_START

log = logging.getLogger("circuits.attribution")

# Identity residuals above this (relative) mean the frozen map does not follow the forward pass.
# Not tighter in float64: Llama and Gemma norms compute in float32 whatever the dtype.
_IDENTITY_WARN = {torch.float64: 1e-5, torch.float32: 1e-3}


def trace(prompt: str | Sequence[int] | Tensor, model: Model | None = None, transcoders: nn.Module | None = None, *,
          targets: TargetSpec | Sequence[TargetSpec] | None = None, head_loadings: HeadLoadingMode = "auto",
          top_heads: int = 3, max_logits: int = 10, logit_prob: float = 0.95, max_feature_nodes: int | None = None,
          batch_size: int | None = None, device: str | torch.device | None = None,
          dtype: str | torch.dtype | None = None, memory_budget: int | str | None = None, verify: bool = False,
          node_threshold: float = 0.8, edge_threshold: float = 0.98, tau: float | None = None,
          feature_start: int = FEATURE_START, prepend_bos: bool = False,
          early_mlp: Literal["constant", "error"] = "constant") -> AttributionGraph:
    """Attribute ``prompt``'s next-token logits to features, errors and tokens.

    Args:
        prompt: text, or token ids.
        model: default ``circuits.load_model()``.
        transcoders: a PLT or CLT set for ``model``; default ``transcoders.load_transcoders(model)``.
        targets: what the graph explains (``circuits.attribution.targets``): token strings or ids, logit
            differences (``(" Mary", " John")`` or ``LogitDiff``), ``Direction(name, vec)`` read from the
            residual stream leaving the last layer; one, or a list. Each is a ``logit`` node. Default: the
            salient logits.
        max_logits, logit_prob: without ``targets``, the logit nodes are the most likely next tokens, until
            their probabilities add up to ``logit_prob``, at most ``max_logits`` of them.
        head_loadings: which edges are split over the attention heads they pass through
            (``circuits.attribution.heads``): ``"targets"`` (edges into every logit node), ``"auto"`` (the
            default: into the chosen ``targets``, or into the most likely logit without them), ``"all"``
            (every edge), or ``"none"``. Each loaded target costs about ``n_layers * n_heads / 2`` extra
            rows (SmolLM2: +13% CPU on the demo's 4,096-feature IOI graph, BENCHMARKS.md). The ``top_heads`` strongest heads of each such edge are stored on the graph
            (``graph.head_loadings(edge)``, and the ``heads`` edge attribute of every export); every head's
            loading is kept in ``graph.head_table``, ``n_edges * n_layers * n_heads`` numbers (for SmolLM2's
            full IOI graph ~25k edges × 270 heads, 27 MB per target in float32), outside the memory plan.
        max_feature_nodes: None for every active feature; else the most influential ones, chosen
            greedily as circuit-tracer does (their left-out input goes to ``excluded_input``).
        batch_size: targets per backward pass (default: the most, up to 256 on the CPU and 1024 on a
            GPU, that fit ``memory_budget``; the graph is the same whatever the batch size).
        device: where attribution runs; default CUDA when present, else the CPU.
        dtype: float32 by default; float64 for exactness checks.
        memory_budget: what the trace may allocate on top of the loaded model and transcoders, in
            bytes or as a string ("8GiB"); default ``$CIRCUITS_MEMORY_BUDGET``, else 80% of the memory
            available when it starts. The trace is planned before it runs (``circuits.attribution.memory``):
            batches are sized to the budget, stored rows beyond it wait in a temporary file, and a
            trace that cannot fit raises ``MemoryBudgetError`` (naming the estimate and the fix) before
            any expensive work.
        verify: prune (influence, ``node_threshold``/``edge_threshold``, as ``graphs.prune``) and measure
            every kept edge by patching in the unfrozen replacement model (``circuits.attribution.verify``):
            each edge gets a ``measured_effect``, disagreeing ones an ``effect_flag``, and the metadata a
            ``verification`` summary. ``tau``: also drop edges whose measured effect is under ``tau`` times
            their target's total absolute input.
        feature_start: positions before it have no features; their MLP output is kept exactly as
            their error nodes (``circuits.replacement.slots``: the first token is an attention sink,
            where transcoders are neither trained nor evaluated). 0 puts features everywhere.
        early_mlp: what the MLP output before ``feature_start`` is in the graph: ``"constant"`` (part of
            each target's bias: nothing there is a transcoder's failure) or ``"error"`` (error nodes).
            Edges and the replacement model are the same either way; the scores count it as error
            only with ``"error"``.
        prepend_bos: put the tokenizer's BOS first (unless the prompt starts with it), so that nothing is
            attributed to position 0 and the prompt's first word gets features: circuit-tracer's
            convention, for graphs comparable edge for edge with its graphs of the same model and set.

    Returns:
        An ``AttributionGraph`` whose edges are exact direct effects in the frozen replacement model;
        with ``verify``, the pruned and verified graph.
    """
    if isinstance(prompt, str) and not prompt.strip():
        raise PromptError("the prompt is empty: pass some text, e.g. trace(\"When Mary and John ...\")")
    if early_mlp not in ("constant", "error"):
        raise ValueError(f"early_mlp must be 'constant' or 'error', got {early_mlp!r}")
    if head_loadings not in ("auto", "targets", "all", "none"):
        raise ValueError(f"head_loadings must be 'auto', 'targets', 'all' or 'none', got {head_loadings!r}")
    held_positions = feature_start if early_mlp == "constant" else 0  # their errors are constants of the graph
    check_options(max_logits, logit_prob, max_feature_nodes, batch_size)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    model = load_model() if model is None else model
    transcoders = default_transcoders(model) if transcoders is None else transcoders
    check_transcoders(model, transcoders)
    clock = _Clock()

    ids = model.tokenize(prompt, prepend_bos=prepend_bos)
    # Plan before the forward pass (counts estimated from the activation), and again once the
    # transcoders have encoded the prompt (exact), before anything the size of the graph is built.
    budget = resolve_budget(memory_budget, dev)
    shape = TraceShape.of(model, transcoders, ids.shape[-1], device=dev, dtype=dt, max_logits=max_logits,
                          max_feature_nodes=max_feature_nodes, feature_start=feature_start,
                          held_errors=held_positions)
    plan_trace(shape, budget, batch_size)
    frozen = freeze(model, ids, input_site=transcoders.cfg.input_site, output_site=transcoders.cfg.output_site)
    tc = as_compute(transcoders, dev, dt)
    mlps = replace_mlps(tc, frozen, device=dev, dtype=dt, feature_start=feature_start)

    # Features in node order: (layer, position, feature id).
    layer, pos, feat = mlps.mask.permute(1, 0, 2).nonzero(as_tuple=True)
    acts, pre = mlps.acts[pos, layer, feat], mlps.pre_acts[pos, layer, feat]
    errors, held = early_errors(mlps.errors, held_positions)
    del mlps  # [P, L, F] activations: only the active ones are needed from here on
    P, L = frozen.n_pos, model.n_layers
    n_active = len(layer)
    chosen = choose_targets(model, targets, frozen.logits, max_logits=max_logits, logit_prob=logit_prob,
                            device=dev, dtype=dt)
    token_ids, probs = chosen.token_ids, chosen.probs
    plan = plan_trace(dataclasses.replace(shape.with_counts(layer.cpu().numpy(), pos.cpu().numpy()),
                                          n_logits=len(token_ids)), budget, batch_size)
    log.info("%s", plan)
    rmap = build_residual_map(model, frozen, tc, device=dev, dtype=dt)
    frozen = _release_bulk(frozen)
    clock.lap("forward and freeze")

    logit_values = chosen.values(frozen.final[-1], _resid_final(model, ids, chosen))
    # The constant write of each slot: b_dec and the skip of the norm bias, plus, per position, the
    # errors held as constants before feature_start.
    const = rmap.mlp_const if held is None else rmap.mlp_const[:, None] + held
    sources = build_sources(tc, layer, pos, feat, acts, errors, frozen.embed.to(dev, dt), const)
    f_targets = FeatureTargets(rmap, tc, layer, pos, feat)
    l_targets = chosen.targets(rmap, P)
    attributor = Attributor(rmap, sources)
    clock.lap("targets and sources")

    store = RowStore(plan.rows_in_memory)
    selected = _edge_rows(attributor, f_targets, l_targets, probs, layer, L, P, max_feature_nodes,
                          plan.batch_size, store)
    clock.lap("edges")
    loadings: list[TargetLoadings] = []
    if head_loadings != "none":
        n_full = n_active + L * P + P + len(token_ids)
        # Without chosen targets, "auto" loads the most likely logit only (salient logits come most likely first).
        n_loaded = 1 if head_loadings == "auto" and not chosen.chosen else len(token_ids)
        loaded = torch.arange(n_loaded, device=l_targets.layer.device)
        loadings = loadings_for(rmap, sources, l_targets.take(loaded),
                                n_full - len(token_ids) + np.arange(n_loaded), plan.batch_size)
        if head_loadings == "all":
            chosen_features = np.flatnonzero(selected)
            loadings += loadings_for(rmap, sources, f_targets.take(torch.as_tensor(chosen_features,
                                     device=layer.device)), chosen_features, plan.batch_size)
        clock.lap("head loadings")
    del attributor, sources, f_targets, rmap, tc  # the map and decoder tables: the graph needs their room

    # Node order: selected features, errors, tokens, logits; rows and columns renumbered to it.
    n_sel, n_err, n_logit = int(selected.sum()), L * P, len(token_ids)
    new_feature = np.full(n_active, -1)
    new_feature[selected] = np.arange(n_sel)
    col_map = np.concatenate([new_feature, n_sel + np.arange(n_err + P)])
    row_map = np.concatenate([new_feature, np.full(n_err + P, -1), n_sel + n_err + P + np.arange(n_logit)])
    np_dtype = np.float64 if dt == torch.float64 else np.float32
    spilled, stored = store.bytes_on_disk, store.bytes_on_disk + store.bytes_in_memory
    built = assemble(store, n_sel + n_err + P + n_logit, row_map, col_map, np_dtype)
    clock.lap("assemble")

    sel = torch.as_tensor(np.flatnonzero(selected), device=layer.device)
    nodes = _node_table(model, frozen, errors, layer[sel], pos[sel], feat[sel], acts[sel], pre[sel],
                        chosen, logit_values)
    nodes["bias"][:] = built.bias
    nodes["excluded_input"][:] = built.excluded
    identity_error = _identity_error(built, nodes)
    if identity_error > _IDENTITY_WARN.get(dt, 1e-2):
        warnings.warn(f"attribution identity off by {identity_error:.1e} (relative): edges plus biases do not add up "
                      "to the pre-activations. The model may compute in a precision or a way the frozen map does "
                      "not follow; try dtype='float64' and check the architecture map.", stacklevel=2)
    clock.lap("graph")

    metadata = {
        "model": model.name, "family": model.spec.family, "n_layers": L, "d_model": model.d_model, "n_pos": P,
        "transcoders": _jsonable(transcoders.cfg.to_dict() if hasattr(transcoders.cfg, "to_dict") else {}),
        "targets": chosen.describe() if chosen.chosen else None,
        "n_active_features": n_active, "max_feature_nodes": max_feature_nodes, "max_logits": max_logits,
        "logit_prob": logit_prob, "feature_start": feature_start, "prepend_bos": prepend_bos, "early_mlp": early_mlp,
        "dtype": str(dt).removeprefix("torch."), "device": str(dev),
        "batch_size": plan.batch_size, "identity_error": identity_error, "seconds": clock.laps,
        "memory": plan.summary() | {"rows_stored": stored, "rows_on_disk": spilled},
    }
    text = prompt if isinstance(prompt, str) else model.tokenizer.decode(frozen.tokens.tolist())
    tokens = frozen.tokens.cpu().numpy().astype(np.int64)
    graph = AttributionGraph(text, tokens, [model.tokenizer.decode([int(t)]) for t in tokens], nodes,
                             built.matrix, metadata)
    if head_loadings != "none":
        _store_loadings(graph, loadings, row_map, col_map, model.n_heads, top_heads)
    log.info("traced %d tokens: %d features (of %d active), %d edges in %.2fs", P, n_sel, n_active,
             built.matrix.nnz, sum(clock.laps.values()))
    if verify:
        from circuits.attribution.verify import verify_edges  # patching imports attribution: import late
        from graphs.metrics import prune

        pruned = prune(graph, node_threshold, edge_threshold).graph
        clock.lap("prune")
        graph = verify_edges(pruned, model, transcoders, tau=tau)
        graph.metadata["node_threshold"], graph.metadata["edge_threshold"] = node_threshold, edge_threshold
        clock.lap("verify")
    return graph


def _edge_rows(attributor: Attributor, features: FeatureTargets, logits: Targets, probs: Tensor, layer: Tensor,
               L: int, P: int, max_feature_nodes: int | None, batch_size: int, store: RowStore) -> np.ndarray:
    """Rows for the logits and for every active feature, or for the ``max_feature_nodes`` most
    influential ones, into ``store``. Node ids during the computation: every active feature, errors,
    tokens, logits. Returns which features got rows ``[n_active]``."""
    n_active, n_logit = len(features), len(logits)
    n_full = n_active + L * P + P + n_logit
    cap = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    # A bar only for long jobs (and, as tqdm decides, only on a terminal).
    bar = tqdm(total=cap + n_logit, desc="attribution rows", unit="row", leave=False,
               disable=True if cap + n_logit < 2048 else None)
    try:
        if cap == n_active:
            compute_rows(attributor, logits, np.arange(n_full - n_logit, n_full), batch_size, store, bar)
            compute_rows(attributor, features, np.arange(n_active), batch_size, store, bar)
            return np.ones(n_active, dtype=bool)
        levels = np.concatenate([layer.cpu().numpy(), np.repeat(np.arange(L), P), np.full(P, -1),
                                 np.full(n_logit, L)])
        return compute_selected_rows(attributor, features, logits, probs.numpy(), cap, batch_size, n_full, levels,
                                     store, bar=bar)
    finally:
        bar.close()


def _release_bulk(frozen: FrozenForward) -> FrozenForward:
    """``frozen`` without its patterns and MLP inputs and writes (``[L, H, P, P]`` and ``[L, P, D]``),
    which the residual map and the errors now hold in folded form; the rest of the trace reads only
    its tokens, logits, embeddings and final norm output."""
    empty = frozen.patterns.new_empty(0)
    return dataclasses.replace(frozen, patterns=empty, mlp_in=empty, mlp_write=empty)


def _store_loadings(graph: AttributionGraph, loadings: list[TargetLoadings], row_map: np.ndarray,
                    col_map: np.ndarray, n_heads: int, top: int) -> None:
    """Put each target's loadings on ``graph`` under its node ids (sources left out of the graph dropped)."""
    ids = np.array(graph.node_ids)
    targets, sources, values, direct = [], [], [], []
    for tl in loadings:
        cols = col_map[tl.cols]
        keep = cols >= 0
        targets.append(np.full(int(keep.sum()), ids[row_map[tl.row]]))
        sources.append(ids[cols[keep]])
        values.append(tl.values[keep])
        direct.append(tl.direct[keep])
    width = graph.n_layers * n_heads
    table = HeadLoadingTable(n_heads, np.concatenate(targets) if targets else np.zeros(0, str),
                             np.concatenate(sources) if sources else np.zeros(0, str),
                             np.concatenate(values) if values else np.zeros((0, width)),
                             np.concatenate(direct) if direct else np.zeros(0))
    set_head_loadings(graph, table, top)


def _resid_final(model: Model, ids: Tensor, chosen: ChosenTargets) -> Tensor | None:
    """``[D]`` the residual stream leaving the last layer at the last position, which direction targets
    read (one more forward pass, only when there are some); None otherwise."""
    if bool(chosen.through_norm.all()):
        return None
    _, rec = model.record(ids, [("resid_post", model.n_layers - 1)])
    return rec[("resid_post", model.n_layers - 1)][-1]


def _node_table(model: Model, frozen, errors: Tensor, layer: Tensor, pos: Tensor, feat: Tensor, acts: Tensor,
                pre: Tensor, chosen: ChosenTargets, logit_values: Tensor) -> dict[str, np.ndarray]:
    token_ids, probs = chosen.token_ids, chosen.probs
    L, P = model.n_layers, frozen.n_pos
    n_f, n_l = len(layer), len(token_ids)
    nodes = empty_nodes(n_f + L * P + P + n_l)
    f, e = slice(0, n_f), slice(n_f, n_f + L * P)
    t, lg = slice(e.stop, e.stop + P), slice(e.stop + P, e.stop + P + n_l)
    nodes["kind"][f], nodes["kind"][e], nodes["kind"][t], nodes["kind"][lg] = "feature", "error", "token", "logit"
    nodes["layer"][f] = layer.cpu().numpy()
    nodes["position"][f] = pos.cpu().numpy()
    nodes["feature"][f] = feat.cpu().numpy()
    nodes["activation"][f] = acts.double().cpu().numpy()
    nodes["pre_activation"][f] = pre.double().cpu().numpy()
    grid_l, grid_p = np.divmod(np.arange(L * P), P)
    nodes["layer"][e], nodes["position"][e] = grid_l, grid_p
    nodes["activation"][e] = errors.double().norm(dim=-1).reshape(-1).cpu().numpy()
    nodes["layer"][t], nodes["position"][t] = -1, np.arange(P)
    nodes["token_id"][t] = frozen.tokens.cpu().numpy()
    nodes["layer"][lg], nodes["position"][lg] = L, P - 1
    nodes["token_id"][lg] = token_ids.numpy()
    nodes["prob"][lg] = probs.numpy()
    nodes["pre_activation"][lg] = logit_values.double().cpu().numpy()
    decode = model.tokenizer.decode
    texts = [""] * (n_f + L * P) + [decode([int(i)]) for i in frozen.tokens] + list(chosen.texts)
    nodes["token"] = np.array(texts)
    return nodes


def _identity_error(built, nodes: dict[str, np.ndarray]) -> float:
    """max over targets of |sum(edges) + bias - pre_activation| (left-out features' edges included),
    relative to the size of those terms."""
    targets = np.isin(nodes["kind"], ("feature", "logit"))
    if not targets.any():
        return 0.0
    pre = nodes["pre_activation"][targets]
    residual = built.total[targets] + built.bias[targets] - pre
    scale = built.magnitude[targets] + np.abs(built.bias[targets]) + np.abs(pre)
    return float(np.max(np.abs(residual) / np.maximum(scale, 1e-30)))


def _jsonable(d: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in d.items()}


class _Clock:
    """Phase timings, logged and kept for the graph's metadata (as circuit-tracer logs its phases)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 4)
        log.info("%s: %.2fs", name, now - self._t)
        self._t = now
