"""Graph metrics on small hand-made graphs whose answers are known, and the graph file round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _threads import one_thread  # noqa: F401  (small tensors: one torch thread is faster on a shared CPU)

from graphs import AttributionGraph, influence, node_influence, normalized, prune
from graphs.graph import empty_nodes
from graphs.metrics import error_share_by_layer, find_threshold, graph_scores


def make_graph(kinds: list[str], layers: list[int], edges: dict[tuple[int, int], float],
               probs: dict[int, float], n_layers: int = 2) -> AttributionGraph:
    """A graph with nodes of ``kinds`` at ``layers``; ``edges[(target, source)] = weight``."""
    n = len(kinds)
    nodes = empty_nodes(n)
    nodes["kind"] = np.array(kinds)
    nodes["layer"] = np.array(layers, dtype=np.int32)
    nodes["position"] = np.zeros(n, dtype=np.int32)
    nodes["feature"] = np.where(nodes["kind"] == "feature", np.arange(n), -1)
    nodes["token_id"] = np.where(np.isin(nodes["kind"], ("token", "logit")), np.arange(n), -1)
    for i, p in probs.items():
        nodes["prob"][i] = p
    rows, cols = zip(*edges) if edges else ((), ())
    adjacency = sp.csr_matrix((list(edges.values()), (rows, cols)), shape=(n, n))
    n_pos = sum(k == "token" for k in kinds)
    return AttributionGraph("hand made", np.arange(n_pos), [f"t{i}" for i in range(n_pos)], nodes, adjacency,
                            {"n_layers": n_layers})


def chain_graph() -> AttributionGraph:
    """token 3 → feature 0 → feature 1 → logit 4, and error 2 → logit 4 (|weight| equal to feature 1's)."""
    kinds = ["feature", "feature", "error", "token", "logit"]
    layers = [0, 1, 0, -1, 2]
    edges = {(4, 1): 2.0, (4, 2): -2.0, (1, 0): 3.0, (0, 3): 1.0}
    return make_graph(kinds, layers, edges, {4: 1.0})


def test_influence_of_a_chain() -> None:
    g = chain_graph()
    # Logit row: half feature 1, half error. Each feature's input is all one source.
    np.testing.assert_allclose(node_influence(g), [0.5, 0.5, 0.5, 0.5, 0.0])


def test_replacement_and_completeness_of_a_chain() -> None:
    replacement, completeness = graph_scores(chain_graph())
    # Tokens carry 0.5 of influence, errors 0.5.
    assert replacement == pytest.approx(0.5)
    # Non-error share per node: logit 0.5, everything else 1; weights influence + logit weight
    # (0.5, 0.5, 0.5, 0.5, 1): (0.5 * 4 + 0.5 * 1) / 3.
    assert completeness == pytest.approx(2.5 / 3)


def test_error_shares_by_layer_split_what_replacement_loses() -> None:
    # logit 4 <- feature 0 (2.0), error 1 at layer 0 (1.0), error 2 at layer 1 (-1.0); token 3 -> feature 0.
    kinds = ["feature", "error", "error", "token", "logit"]
    edges = {(4, 0): 2.0, (4, 1): 1.0, (4, 2): -1.0, (0, 3): 1.0}
    g = make_graph(kinds, [0, 0, 1, -1, 2], edges, {4: 1.0})
    shares = error_share_by_layer(g)
    np.testing.assert_allclose(shares, [0.25, 0.25])
    assert shares.sum() == pytest.approx(1.0 - graph_scores(g)[0])
    np.testing.assert_allclose(error_share_by_layer(chain_graph()), [0.5, 0.0])


def test_a_graph_without_errors_scores_one() -> None:
    kinds = ["feature", "feature", "error", "token", "logit"]
    edges = {(4, 1): 2.0, (4, 0): -1.0, (1, 0): 3.0, (0, 3): 1.0, (1, 3): 0.5}
    g = make_graph(kinds, [0, 1, 0, -1, 2], edges, {4: 1.0})
    assert graph_scores(g) == pytest.approx((1.0, 1.0))


def _random_dag(seed: int, n: int = 30) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    levels = np.sort(rng.integers(-1, 5, size=n))
    dense = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.4)
    dense *= levels[:, None] > levels[None, :]  # edges only go up a level
    w = np.zeros(n)
    w[levels == levels.max()] = rng.random(int((levels == levels.max()).sum()))
    return sp.csr_matrix(dense), w, levels


@pytest.mark.parametrize("seed", range(5))
def test_influence_is_the_geometric_series(seed: int) -> None:
    """The sweep and the iteration both equal w((I - Â)^-1 - I) computed densely."""
    a, w, levels = _random_dag(seed)
    na = normalized(a)
    dense = na.toarray()
    expected = w @ (np.linalg.inv(np.eye(len(w)) - dense) - np.eye(len(w)))
    np.testing.assert_allclose(influence(na, w), expected, atol=1e-12)
    np.testing.assert_allclose(influence(na, w, levels), expected, atol=1e-12)
    # Rows of a normalised matrix sum to one in absolute value (or are empty).
    sums = np.abs(dense).sum(1)
    assert np.all((np.abs(sums - 1) < 1e-12) | (sums == 0))


def test_levels_that_do_not_hold_fall_back_to_iterating() -> None:
    a, w, levels = _random_dag(0)
    na = normalized(a)
    np.testing.assert_allclose(influence(na, w, np.zeros_like(levels)), influence(na, w), atol=1e-12)


def test_a_cycle_is_refused() -> None:
    a = sp.csr_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(RuntimeError, match="cycle"):
        influence(a, np.array([1.0, 0.0]), max_iter=50)


def test_find_threshold() -> None:
    scores = np.array([5.0, 3.0, 1.0, 1.0, 0.0])
    assert find_threshold(scores, 0.5) == 5.0     # 5/10 reaches half
    assert find_threshold(scores, 0.51) == 3.0
    assert find_threshold(scores, 0.9) == 1.0
    assert find_threshold(scores, 1.0) == 1.0     # never a zero cut-off
    assert find_threshold(np.zeros(3), 0.8) == 0.0


def test_pruning_keeps_the_strong_path() -> None:
    """Feature 0 feeds the logit strongly; feature 1 barely; tokens and logits always stay."""
    kinds = ["feature", "feature", "feature", "error", "error", "token", "token", "logit"]
    layers = [0, 0, 1, 0, 1, -1, -1, 2]
    edges = {
        (7, 2): 10.0, (7, 1): 0.01, (7, 4): 0.5,   # logit ← feature 2 (strong), feature 1 (weak), error 4
        (2, 0): 5.0, (2, 3): 0.1,                   # feature 2 ← feature 0, error 3
        (0, 5): 1.0, (1, 6): 1.0,                   # features ← tokens
    }
    g = make_graph(kinds, layers, edges, {7: 1.0})
    result = prune(g, node_threshold=0.8, edge_threshold=0.98)
    kept = set(np.flatnonzero(result.node_mask))
    assert {0, 2, 5, 6, 7} <= kept
    assert 1 not in kept  # too little influence
    assert result.graph.n_nodes == len(kept)
    assert set(result.graph.nodes["kind"]) >= {"token", "logit"}
    # Every kept feature has a kept incoming and outgoing edge.
    em = result.edge_mask.toarray()
    for f in np.flatnonzero(result.node_mask & (g.nodes["kind"] == "feature")):
        assert em[f].any() and em[:, f].any()
    # Cumulative scores rise to 1 along decreasing influence.
    assert result.cumulative_scores.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="node_threshold"):
        prune(g, node_threshold=1.5)


def test_pruning_everything_keeps_tokens_and_logits() -> None:
    result = prune(chain_graph(), node_threshold=0.0, edge_threshold=0.0)
    kinds = result.graph.nodes["kind"]
    assert "token" in kinds and "logit" in kinds


def test_node_ids_never_collide() -> None:
    kinds = ["feature", "feature", "error", "error", "token", "logit"]
    g = make_graph(kinds, [0, 1, 0, 1, -1, 2], {}, {5: 1.0})
    g.nodes["feature"][:2] = [0, 0]  # the same feature id at two layers
    ids = g.node_ids
    assert len(set(ids)) == len(ids)
    assert [i[0] for i in ids] == ["F", "F", "E", "E", "T", "L"]


def test_nodes_must_come_in_order() -> None:
    with pytest.raises(ValueError, match="order"):
        make_graph(["error", "feature", "token", "logit"], [0, 0, -1, 1], {}, {3: 1.0})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    g = chain_graph()
    g.metadata["note"] = {"nested": [1, 2]}
    path = g.save(tmp_path / "chain.npz")
    back = AttributionGraph.load(path)
    assert back.prompt == g.prompt and back.token_texts == g.token_texts
    np.testing.assert_array_equal(back.tokens, g.tokens)
    for k, v in g.nodes.items():
        np.testing.assert_array_equal(back.nodes[k], v)
    assert (back.adjacency != g.adjacency).nnz == 0
    assert back.metadata == g.metadata
    assert back.node(4) == g.node(4) and back.node(4)["kind"] == "logit"
    assert graph_scores(back) == graph_scores(g)
    with pytest.raises(ValueError, match="cannot save a graph as '.txt'"):
        g.save(tmp_path / "chain.txt")


def test_traced_graph_round_trips(tmp_path: Path) -> None:
    """A real graph (tiny model, float32) survives save/load with its attributes intact."""
    from circuits import tiny_model, trace
    from transcoders import TranscoderConfig, build_transcoder

    model = tiny_model("llama", n_layers=2)
    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind="plt", n_layers=2, d_model=32, d_features=16, activation="topk",
                                           k=4, model_name=model.name))
    graph = trace("t1 t2 t3", model, tc)
    back = AttributionGraph.load(graph.save(tmp_path / "g.npz"))
    assert back.node_ids == graph.node_ids
    assert back.top_logits == graph.top_logits
    assert back.adjacency.dtype == np.float32
    np.testing.assert_array_equal(back.adjacency.toarray(), graph.adjacency.toarray())
    assert back.metadata["n_layers"] == 2 and back.metadata["dtype"] == "float32"
    f = back.node(0)
    assert f["kind"] == "feature" and {"layer", "position", "feature", "activation", "pre_activation"} <= set(f)
    assert back.count("error") == 2 * 3 and back.count("token") == 3
