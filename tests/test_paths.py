"""The strongest token → logit paths equal an exhaustive search over every path."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs import strongest_paths


def _layered_dag(seed: int, n_layers: int, width: int) -> nx.DiGraph:
    rng = np.random.default_rng(seed)
    g = nx.DiGraph()
    layers = [[f"T{i}" for i in range(width)]] + [[f"F{layer}.{i}" for i in range(width)] for layer in range(n_layers)]
    for i, name in enumerate(layers[0]):
        g.add_node(name, kind="token", position=i)
    for layer, names in enumerate(layers[1:]):
        g.add_nodes_from(names, kind="feature", layer=layer)
    g.add_node("logit", kind="logit")
    for lo, below in enumerate(layers):
        for above in layers[lo + 1:] + [["logit"]]:
            for s in below:
                for t in above:
                    if rng.random() < 0.4:
                        g.add_edge(s, t, weight=float(rng.normal()))
    return g


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_layers=st.integers(0, 3), width=st.integers(1, 3), k=st.integers(1, 6))
def test_matches_exhaustive_search(seed: int, n_layers: int, width: int, k: int) -> None:
    g = _layered_dag(seed, n_layers, width)
    totals = {t: sum(abs(w) for _, _, w in g.in_edges(t, data="weight")) for t in g}
    every = []
    for token in (n for n, kind in g.nodes(data="kind") if kind == "token"):
        for path in nx.all_simple_paths(g, token, "logit"):
            edges = list(zip(path, path[1:]))
            strength = math.prod(abs(g.edges[e]["weight"]) / totals[e[1]] for e in edges)
            sign = math.prod(1 if g.edges[e]["weight"] >= 0 else -1 for e in edges)
            every.append((strength, sign, tuple(path)))
    expected = sorted(every, key=lambda p: -p[0])[:k]
    got = strongest_paths(g, "logit", k=k)
    assert [p.strength for p in got] == pytest.approx([p[0] for p in expected])
    assert {(p.sign, p.nodes) for p in got} <= {(s, n) for _, s, n in every}
    for p in got:
        assert g.nodes[p.nodes[0]]["kind"] == "token" and p.nodes[-1] == "logit"


def test_share_attribute_is_used_when_present() -> None:
    g = nx.DiGraph()
    g.add_node("t", kind="token")
    g.add_edge("t", "a", weight=1.0, share=0.5)
    g.add_edge("a", "logit", weight=-2.0, share=0.25)
    (path,) = strongest_paths(g, "logit", k=3)
    assert path.strength == pytest.approx(0.125) and path.sign == -1 and path.nodes == ("t", "a", "logit")
