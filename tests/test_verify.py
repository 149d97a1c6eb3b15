"""``trace(..., verify=True)``: every kept edge measured by patching, disagreements flagged."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _threads import one_thread  # noqa: F401
from test_attribution_exact import _model, _transcoder

from circuits import trace
from circuits.attribution.verify import _flags, _reader, verify_edges
from circuits.replacement import CleanState, PatchError, Resume, ablation_edits, ablation_values, forward
from circuits.replacement.forward import SparseEditor
from graphs import (
    AttributionGraph,
    effect_flags,
    from_networkx,
    measured_effects,
    prune,
    read_graphml,
    read_viewer_json,
    write_graphml,
)


def _setup(family: str, kind: str = "clt", seed: int = 3):
    model = _model(family, n_layers=3, n_heads=4, kv_ratio=2, d_head=4, seed=seed)
    ids = torch.randint(1, 40, (1, 6), generator=torch.Generator().manual_seed(seed))
    tc = _transcoder(model, ids, kind=kind, activation="jumprelu", skip=True, d_features=16,
                     output_site="mlp_resid", seed=seed)
    return model, tc, ids


def _effects(graph: AttributionGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weights, measured, target scale)`` over the graph's edges."""
    effects = measured_effects(graph)
    ids = graph.node_ids
    rows, cols, w = graph.edges()
    measured = np.array([effects[(ids[t], ids[s])] for t, s in zip(rows, cols)])
    scale = np.abs(graph.adjacency).sum(1).A.ravel()[rows] + np.abs(graph.nodes["pre_activation"][rows])
    return w, measured, scale


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_frozen_measured_effects_equal_weights(family: str, kind: str) -> None:
    model, tc, ids = _setup(family, kind)
    graph = prune(trace(ids, model, tc, dtype="float64", device="cpu"), 0.9, 0.99).graph
    verified = verify_edges(graph, model, tc, freeze_attention=True, batch_size=5)
    w, m, scale = _effects(verified)
    assert len(w) == graph.adjacency.nnz > 0
    assert np.all(np.abs(m - w) <= 1e-6 * scale)
    assert effect_flags(verified) == {}
    summary = verified.metadata["verification"]
    assert summary["n_edges"] == len(w) and summary["n_flagged"] == 0 and summary["seconds"] > 0


class _RealMlps(SparseEditor):
    """The same edits, but asking for the true MLP output, so the pass runs every MLP as it did before
    verification learned to skip them (the reference for the fast path)."""

    def real(self, layer: int, real: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return real


def _reference_effects(graph: AttributionGraph, model, tc, freeze_attention: bool) -> np.ndarray:
    """Each kept edge measured the plain way: one full pass per source (every layer, every MLP, all
    logits), nothing resumed or batched: what ``verify_edges`` computed before it was made fast."""
    clean = CleanState.of(model, tc, [int(t) for t in graph.tokens], feature_start=int(graph.metadata["feature_start"]))
    rows, cols, _ = graph.edges()
    read = _reader(graph, clean, np.unique(rows))
    targets = {t: i for i, t in enumerate(np.unique(rows))}
    zero, ids = ablation_values(clean), graph.node_ids

    def run(edits):
        editor = _RealMlps(edits, model.n_layers)
        return read(forward(model, None, clean=clean, editor=editor, features="frozen", errors="clean",
                            attention="frozen" if freeze_attention else "live"))

    base = run(ablation_edits(zero, [[]]))[0]
    effect = {s: base - run(ablation_edits(zero, [[ids[s]]]))[0] for s in np.unique(cols)}
    return np.array([float(effect[s][targets[t]]) for t, s in zip(rows, cols)])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("kind", ["plt", "clt"])
@pytest.mark.parametrize("freeze_attention", [False, True])
def test_fast_verification_equals_one_full_pass_per_source(family: str, kind: str, freeze_attention: bool) -> None:
    # Batched in layer order, resumed at each batch's lowest layer, MLPs skipped, last logits only:
    # the same measured effects, in float64, as a plain full pass per source.
    model, tc, ids = _setup(family, kind)
    graph = prune(trace(ids, model, tc, dtype="float64", device="cpu"), 0.9, 0.99).graph
    verified = verify_edges(graph, model, tc, freeze_attention=freeze_attention, batch_size=3)
    effects = measured_effects(verified)
    rows, cols, w = graph.edges()
    fast = np.array([effects[(graph.node_ids[t], graph.node_ids[s])] for t, s in zip(rows, cols)])
    want = _reference_effects(graph, model, tc, freeze_attention)
    scale = np.abs(w).max()
    assert len(fast) > 0 and np.abs(fast - want).max() <= 1e-10 * scale


def test_resume_refuses_edits_below_its_layer() -> None:
    model, tc, ids = _setup("llama", "plt")
    clean = CleanState.of(model, tc, ids[0].tolist())
    base = forward(model, None, clean=clean, attention="live", features="frozen", errors="clean", keep_layers=True)
    edits = ablation_edits(ablation_values(clean), [["E0@2"]])
    with pytest.raises(PatchError, match="below resume.layer"):
        forward(model, None, clean=clean, edits=edits, attention="live", features="frozen", errors="clean",
                resume=Resume(1, base))
    with pytest.raises(PatchError, match="features='frozen'"):
        forward(model, None, clean=clean, edits=edits, attention="live", features="recompute", errors="clean",
                resume=Resume(0, base))


def test_trace_verify_measures_every_kept_edge_and_exports_it(tmp_path) -> None:
    model, tc, ids = _setup("llama", "plt")
    full = trace(ids, model, tc, dtype="float64", device="cpu")
    graph = trace(ids, model, tc, dtype="float64", device="cpu", verify=True)
    pruned = prune(full).graph
    assert graph.node_ids == pruned.node_ids and graph.adjacency.nnz == pruned.adjacency.nnz
    w, m, _ = _effects(graph)  # raises KeyError if an edge was not measured
    assert np.all(np.isfinite(m))
    summary = graph.metadata["verification"]
    assert summary["n_edges"] == len(w) and not summary["freeze_attention"]
    flags = effect_flags(graph)
    assert summary["n_flagged"] == len(flags)
    # Unfrozen, attention and norms move: effects differ from weights. Feature edges still track them;
    # zeroing a whole error or embedding vector (large in these random models) saturates the norms.
    assert not np.allclose(m, w, rtol=1e-6)
    features = graph.nodes["kind"][graph.edges()[1]] == "feature"
    assert np.corrcoef(m[features], w[features])[0, 1] > 0.5
    # Effects and flags survive every export.
    g = graph.to_networkx()
    assert sum("measured_effect" in d for *_, d in g.edges(data=True)) == len(w)
    assert {(t, s): f for s, t, f in g.edges(data="effect_flag") if f} == flags
    for back in (from_networkx(g), from_networkx(read_graphml(write_graphml(g, tmp_path / "g.graphml"))),
                 AttributionGraph.load(graph.save(tmp_path / "g.npz")),
                 read_viewer_json(graph.save(tmp_path / "v.json"))):
        assert measured_effects(back) == measured_effects(graph)
        assert effect_flags(back) == flags
        assert back.metadata["verification"] == summary


def test_sign_and_size_disagreements_are_flagged() -> None:
    """A graph whose weights say otherwise than patching: one edge negated, one ten times too big."""
    model, tc, ids = _setup("gpt2", "plt")
    graph = prune(trace(ids, model, tc, dtype="float64", device="cpu"), 0.9, 0.99).graph
    coo = graph.adjacency.tocoo()
    order = np.argsort(-np.abs(coo.data))
    data = coo.data.copy()
    data[order[0]] *= -1.0   # the strongest edge: a sign disagreement
    data[order[1]] *= 10.0   # the next: a size disagreement
    tampered = AttributionGraph(graph.prompt, graph.tokens, graph.token_texts, graph.nodes,
                                sp.csr_matrix((data, (coo.row, coo.col)), shape=coo.shape), dict(graph.metadata))
    verified = verify_edges(tampered, model, tc, freeze_attention=True)
    ids_ = graph.node_ids
    expected = {(ids_[coo.row[order[0]]], ids_[coo.col[order[0]]]): "sign",
                (ids_[coo.row[order[1]]], ids_[coo.col[order[1]]]): "size"}
    assert effect_flags(verified) == expected
    assert verified.metadata["verification"]["n_sign"] == 1
    assert verified.metadata["verification"]["n_size"] == 1


def test_flag_rule() -> None:
    w = np.array([1.0, 1.0, 1.0, 1.0, 0.001, 0.001, -1.0, 0.0])
    m = np.array([1.5, -0.8, 0.3, 2.5, -0.001, 0.5, -0.6, 0.0])
    eps = np.full(len(w), 0.01)
    assert _flags(w, m, eps, (0.5, 2.0)).tolist() == ["", "sign", "size", "size", "", "size", "", ""]


def test_tau_drops_small_edges_and_stranded_nodes() -> None:
    model, tc, ids = _setup("llama", "clt")
    graph = prune(trace(ids, model, tc, dtype="float64", device="cpu"), 0.9, 0.99).graph
    everything = verify_edges(graph, model, tc)
    w, m, _ = _effects(everything)
    rows = graph.edges()[0]
    row_scale = np.abs(graph.adjacency).sum(1).A.ravel()[rows]
    tau = float(np.median(np.abs(m) / row_scale))
    kept = verify_edges(graph, model, tc, tau=tau)
    summary = kept.metadata["verification"]
    assert 0 < summary["n_dropped"] < len(w)
    assert kept.adjacency.nnz == len(w) - summary["n_dropped"]
    assert len(measured_effects(kept)) == kept.adjacency.nnz  # every edge kept carries its effect
    ids = graph.node_ids
    scale_of = {(ids[t], ids[s]): sc for t, s, sc in zip(rows, graph.edges()[1], row_scale)}
    for key, effect in measured_effects(kept).items():
        assert abs(effect) >= tau * scale_of[key]
    # Nothing stranded: every feature and error feeds something, every feature is fed.
    a = kept.adjacency
    kinds = kept.nodes["kind"]
    has_out, has_in = np.asarray(a.sum(0) != 0).ravel(), np.asarray(a.sum(1) != 0).ravel()
    assert np.all(has_out[np.isin(kinds, ("feature", "error"))])
    assert np.all(has_in[kinds == "feature"])
