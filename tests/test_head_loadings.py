"""Head loadings: every edge is the sum of its per-head loadings and its direct part (the sum rule), each
loading is what intervening on that head's frozen pattern changes, and files keep them."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest
import torch
from _threads import one_thread  # noqa: F401
from test_attribution_exact import CPU, F64, _ablations, _model, _transcoder

from circuits import trace
from circuits.attribution import freeze, replace_mlps, run_replacement
from circuits.models import TINY_FAMILIES
from graphs import AttributionGraph

TOL = 1e-6


def _setup(family: str, kind: str = "clt", seed: int = 2, n_layers: int = 2):
    model = _model(family, n_layers=n_layers, n_heads=4, kv_ratio=2, d_head=4, seed=seed)
    ids = torch.randint(1, 40, (1, 5), generator=torch.Generator().manual_seed(seed))
    tc = _transcoder(model, ids, kind=kind, activation="jumprelu", skip=True, d_features=12,
                     output_site="mlp_out", seed=seed)
    return model, ids, tc


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_loadings_sum_to_every_edge(family: str, kind: str) -> None:
    """head_loadings='all': every nonzero edge into every target is loaded, and its loadings plus its direct
    part add up to its weight; an edge from an earlier position has no direct part."""
    model, ids, tc = _setup(family, kind, n_layers=3)
    graph = trace(ids, model, tc, dtype="float64", max_logits=3, logit_prob=0.99, head_loadings="all", top_heads=2)
    table = graph.head_table
    index = {n: i for i, n in enumerate(graph.node_ids)}
    t = np.array([index[x] for x in table.targets])
    s = np.array([index[x] for x in table.sources])
    dense = graph.adjacency.toarray()
    assert set(zip(t, s)) == set(zip(*np.nonzero(dense)))
    weight = dense[t, s]
    scale = np.abs(dense).sum(1)[t]
    assert np.all(np.abs(table.values.sum(1) + table.direct - weight) <= TOL * scale)
    earlier = graph.nodes["position"][s] < graph.nodes["position"][t]
    assert earlier.any() and np.all(np.abs(table.direct[earlier]) <= TOL * scale[earlier])
    # Attention carries most edges somewhere: the loadings are not all zero.
    assert np.abs(table.values).sum() > 0.1 * np.abs(weight).sum()
    # The stored top heads plus the rest plus the direct part: the weight again, in every export.
    for (tid, sid), entry in _stored(graph).items():
        assert len(entry) == 2 + 2
        assert abs(sum(entry.values()) - dense[index[tid], index[sid]]) <= TOL * np.abs(dense[index[tid]]).sum()


def _stored(graph: AttributionGraph) -> dict:
    from graphs.heads import stored_loadings
    return stored_loadings(graph)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_loadings_equal_pattern_interventions(family: str) -> None:
    """Head (l, h)'s loading of an edge into a logit = the edge's direct effect with the patterns of every layer
    above l zeroed, minus the same with head (l, h)'s zeroed too: measured by zeroing each source in the frozen
    replacement model (paths whose last attention hop is that head)."""
    model, ids, tc = _setup(family, "plt")
    graph = trace(ids, model, tc, dtype="float64", max_logits=2, logit_prob=0.99, head_loadings="targets")
    assert graph.count("logit") == 2 and set(graph.head_table.targets) == set(graph.node_ids[graph.span("logit")])
    frozen = freeze(model, ids, input_site=tc.cfg.input_site, output_site=tc.cfg.output_site)
    mlps = replace_mlps(tc, frozen, device=CPU, dtype=F64, feature_start=graph.metadata["feature_start"])
    acts, errors, embed, sources = _ablations(graph, mlps, frozen)
    lg = graph.span("logit")
    tok = torch.as_tensor(graph.nodes["token_id"][lg])
    W_U = model.W_U.detach()
    u = W_U[tok] - W_U.mean(0)

    def effects(patterns: torch.Tensor) -> np.ndarray:
        """``[n_logit, n_sources]`` each source's direct effect with these frozen patterns."""
        run = run_replacement(model, dataclasses.replace(frozen, patterns=patterns), tc, mlps, acts=acts,
                              errors=errors, embed=embed)
        v = run.final[:, -1] @ u.T
        return (v[0][None] - v[1:-1]).T.numpy()

    table = graph.head_table
    index = {n: i for i, n in enumerate(graph.node_ids)}
    L, H = model.n_layers, model.n_heads
    full = effects(frozen.patterns)
    scale = np.abs(full).sum(1, keepdims=True)
    loaded = np.zeros((len(tok), len(sources), L * H))
    direct = np.zeros((len(tok), len(sources)))
    col = {int(c): j for j, c in enumerate(sources)}
    for tid, sid, vals, d in zip(table.targets, table.sources, table.values, table.direct):
        loaded[index[tid] - lg.start, col[index[sid]]] = vals
        direct[index[tid] - lg.start, col[index[sid]]] = d
    for l in range(L):
        above = frozen.patterns.clone()
        above[l + 1:] = 0
        base = effects(above)
        for h in range(H):
            without = above.clone()
            without[l, h] = 0
            measured = base - effects(without)
            assert np.all(np.abs(loaded[:, :, l * H + h] - measured) <= TOL * scale), (l, h)
    none = frozen.patterns.clone()
    none[:] = 0
    assert np.all(np.abs(direct - effects(none)) <= TOL * scale)


def test_loadings_survive_every_format(tmp_path) -> None:
    model, ids, tc = _setup("llama")
    graph = trace(ids, model, tc, dtype="float64", max_logits=2, logit_prob=0.99)
    stored = _stored(graph)
    assert stored
    (tid, sid), entry = next(iter(stored.items()))
    full = graph.head_loadings((sid, tid))
    assert len(full) == model.n_layers * model.n_heads + 1 and list(full)[-1] == "direct"
    index = {n: i for i, n in enumerate(graph.node_ids)}
    weight = graph.adjacency[index[tid], index[sid]]
    assert abs(sum(full.values()) - weight) <= TOL * abs(graph.adjacency[index[tid]]).sum()
    assert graph.head_loadings((index[sid], index[tid])) == full
    g = graph.to_networkx()
    assert g.edges[sid, tid]["heads"].startswith(next(iter(entry)))
    for suffix in (".npz", ".graphml", ".json"):
        back = AttributionGraph.load(graph.save(tmp_path / f"g{suffix}"))
        assert _stored(back) == stored, suffix
        assert (back.head_loadings((sid, tid)) == full) if suffix == ".npz" else (back.head_loadings((sid, tid)) == entry)
    assert AttributionGraph.from_networkx(g).metadata["head_loadings"]["edges"] == graph.metadata["head_loadings"]["edges"]
    data = __import__("json").loads((tmp_path / "g.json").read_text())
    assert any("heads" in link for link in data["links"])
    assert isinstance(nx.DiGraph(g), nx.DiGraph)
    with pytest.raises(KeyError, match="head_loadings"):
        graph.head_loadings((tid, sid))  # the wrong way round: no such edge


def test_default_loads_the_chosen_targets_or_the_top_logit() -> None:
    model, ids, tc = _setup("qwen2")
    graph = trace(ids, model, tc, dtype="float64", max_logits=3, logit_prob=0.99)
    top = graph.node_ids[graph.span("logit").start]
    assert graph.count("logit") == 3 and set(graph.head_table.targets) == {top}
    graph = trace(ids, model, tc, dtype="float64", targets=["t1", ("t2", "t3")])
    assert set(graph.head_table.targets) == set(graph.node_ids[graph.span("logit")])


def test_no_loadings_when_asked_for_none() -> None:
    model, ids, tc = _setup("gpt2")
    graph = trace(ids, model, tc, dtype="float64", max_logits=2, head_loadings="none")
    assert graph.head_table is None and "head_loadings" not in graph.metadata
    with pytest.raises(ValueError, match="head_loadings must be"):
        trace(ids, model, tc, dtype="float64", head_loadings="some")


def test_drawn_attention_edges_name_their_heads() -> None:
    from graphs.draw import drawable, to_dot

    model, ids, tc = _setup("gpt2")
    graph = trace(ids, model, tc, dtype="float64", max_logits=2, logit_prob=0.99)
    g = drawable(graph, max_nodes=None, max_edges=None, node_threshold=1.0, edge_threshold=1.0)
    source = to_dot(g).source
    labelled = [line for line in source.splitlines() if "label=\"L" in line and "->" in line]
    assert labelled and all("%" in line for line in labelled)
    assert not any("->" in line and "label=\"L" in line for line in to_dot(g, heads=0).source.splitlines())
