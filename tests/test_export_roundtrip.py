"""Every writer has a reader that gives the same graph back: native .npz, GraphML, viewer JSON.

Also: GraphML keeps every attribute of any networkx graph with its type; the viewer JSON
validates against graphs/viewer_schema.json (as circuit-tracer's own file does), is strict JSON,
and follows circuit-tracer's id formats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphs
from graph_helpers import AWKWARD_TOKENS, assert_same_graph, hand_made_graph, tiny_graph
from graphs import from_viewer_json, measured_effects, prune
from graphs.graphml import graphml_ready
from graphs.viewer import cantor, to_viewer_json, used_nodes

DATA = Path(__file__).parent / "data"
SUFFIXES = (".npz", ".graphml", ".json")


def _strict_json(text: str) -> dict:
    def refuse(name: str) -> float:
        raise AssertionError(f"{name} in JSON: the viewer's JSON.parse rejects it")

    return json.loads(text, parse_constant=refuse)


# --- AttributionGraph round trips ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_made_graph_round_trips(tmp_path: Path, suffix: str, dtype: type) -> None:
    graph = hand_made_graph(dtype=dtype)
    path = graph.save(tmp_path / f"g{suffix}")
    back = graphs.load(path)
    assert_same_graph(graph, back)
    assert measured_effects(back) == measured_effects(graph) != {}
    assert back.metadata["feature_labels"] == graph.metadata["feature_labels"]
    assert_same_graph(graph, type(graph).load(path))  # the class's own load dispatches the same way


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_traced_graph_round_trips(tmp_path: Path, suffix: str) -> None:
    graph = tiny_graph()
    back = graphs.load(graphs.save(graph, tmp_path / f"g{suffix}"))
    assert_same_graph(graph, back)
    assert back.scores == pytest.approx(graph.scores)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_pruned_graph_round_trips(tmp_path: Path, suffix: str) -> None:
    pruned = prune(tiny_graph()).graph
    assert_same_graph(pruned, graphs.load(graphs.save(pruned, tmp_path / f"p{suffix}")))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n_layers=st.integers(1, 4),
       tokens=st.lists(st.text(max_size=6), min_size=1, max_size=5), suffix=st.sampled_from(SUFFIXES))
def test_random_graphs_round_trip(tmp_path_factory: pytest.TempPathFactory, seed: int, n_layers: int,
                                  tokens: list[str], suffix: str) -> None:
    # numpy's str arrays drop trailing NULs, so such tokens cannot be in a node table to begin with.
    tokens = [t.rstrip("\x00") for t in tokens]
    graph = hand_made_graph(seed=seed, n_layers=n_layers, tokens=tokens)
    path = tmp_path_factory.mktemp("rt") / f"g{suffix}"
    assert_same_graph(graph, graphs.load(graphs.save(graph, path)))


def test_unknown_suffix_names_the_fix(tmp_path: Path) -> None:
    graph = hand_made_graph()
    with pytest.raises(ValueError, match=r"\.npz, \.graphml, \.json"):
        graphs.save(graph, tmp_path / "g.csv")
    with pytest.raises(ValueError, match="graphml"):
        graph.save(tmp_path / "g.csv")
    with pytest.raises(FileNotFoundError, match="no graph file"):
        graphs.load(tmp_path / "missing.json")


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that fails leaves neither a partial file nor a temporary one."""
    path = tmp_path / "g.json"
    path.write_text("previous")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setitem(graphs.graph._WRITERS, ".json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        graphs.save(hand_made_graph(), path)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


# --- networkx and GraphML -----------------------------------------------------------------------


def test_to_networkx_attributes() -> None:
    graph = hand_made_graph()
    g = graph.to_networkx()
    assert list(g.nodes) == graph.node_ids
    assert g.number_of_edges() == graph.adjacency.nnz
    infl = graphs.node_influence(graph)
    for i, node_id in enumerate(graph.node_ids):
        attrs = g.nodes[node_id]
        assert attrs["kind"] == graph.nodes["kind"][i]
        assert attrs["layer"] == graph.nodes["layer"][i]
        assert attrs["influence"] == pytest.approx(infl[i])
        assert isinstance(attrs["label"], str)
        assert attrs["label"] or attrs["kind"] in ("token", "logit")  # a token's label is its text, maybe ""
        assert all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in attrs.values())
    feature = next(n for n, k in g.nodes(data="kind") if k == "feature")
    assert {"position", "feature", "activation"} <= set(g.nodes[feature])
    assert g.nodes[feature]["label"].startswith("label ")
    token = graph.node_ids[graph.span("token").start]
    assert g.nodes[token]["token"] == AWKWARD_TOKENS[0]
    effects = measured_effects(graph)
    for s, t, attrs in g.edges(data=True):
        i, j = graph.node_ids.index(t), graph.node_ids.index(s)
        assert attrs["weight"] == float(graph.adjacency[i, j])
        assert attrs.get("measured_effect") == effects.get((t, s))
    assert sum("measured_effect" in a for *_, a in g.edges(data=True)) == len(effects)


def test_graphml_keeps_every_attribute_and_type(tmp_path: Path) -> None:
    g = nx.DiGraph(name="circuit", faithfulness=0.93, budget=3, tags=["ioi", "heads"], none=None,
                   nested={"a": [1, 2.5], "b": None}, flag=False)
    g.add_node(("a", 0, 1), kind="head", layer=np.int64(0), score=np.float32(0.1), text=" Mary\r\n", big=2**40,
               maybe=None, cell=[1, "x"])
    g.add_node(("m", 1), kind="mlp", layer=1, score=0.5, text="<&>", big=7, mixed=1)
    g.add_node(("logits",), kind="logit", layer=2, mixed=2.5, text="\x00ctl")
    g.add_edge(("a", 0, 1), ("m", 1), weight=np.float64(-0.25), verified=True)
    g.add_edge(("m", 1), ("logits",), weight=1e-300, verified=False, note=None)
    back = graphs.read_graphml(graphs.write_graphml(g, tmp_path / "g.graphml"))

    def expected(attrs: dict) -> dict:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items() if v is not None}

    assert list(back.nodes) == list(g.nodes)  # tuple keys come back as tuples, in order
    assert back.graph == expected(g.graph)
    assert back.graph["nested"] == {"a": [1, 2.5], "b": None}  # None inside a JSON value is kept
    for n in g:
        assert back.nodes[n] == expected(g.nodes[n])
        for k, v in back.nodes[n].items():
            assert type(v) is type(expected(g.nodes[n])[k]), (n, k)  # ints stay ints, bools bools
    assert back.nodes[("a", 0, 1)]["score"] == float(np.float32(0.1))  # float32 as its exact double
    for s, t, attrs in g.edges(data=True):
        assert back.edges[s, t] == expected(attrs)


def test_graphml_text_reads_as_networkx_own(tmp_path: Path) -> None:
    """``write_graphml`` streams its own text; networkx's reader (what Gephi-bound users and
    ``read_graphml`` use) gets from it exactly what it gets from networkx's writer."""
    g = nx.DiGraph(name="a \"quoted\" <name> & more", weight=0.1, n=2**40, flag=True)
    g.add_node("F3.7@2", layer=3, score=float(np.float32(0.1)), text=" Mary\n\ttab", ok=False, inf=float("inf"))
    g.add_node("E'0@1", layer=0, score=-1e-300, text="<&>\"'", ok=True, inf=float("-inf"))
    g.add_node("logit \"x\"", layer=4)
    g.add_edge("F3.7@2", "logit \"x\"", weight=-0.25, verified=True)
    g.add_edge("E'0@1", "F3.7@2", weight=5e-324, note="a\nb")
    theirs = tmp_path / "nx.graphml"
    nx.write_graphml(graphml_ready(g), theirs)
    a, b = nx.read_graphml(theirs), nx.read_graphml(graphs.write_graphml(g, tmp_path / "ours.graphml"))
    assert a.graph == b.graph and list(a.nodes) == list(b.nodes) and list(a.edges) == list(b.edges)
    for n in a:
        assert a.nodes[n] == b.nodes[n] and [type(v) for v in a.nodes[n].values()] == \
            [type(v) for v in b.nodes[n].values()], n
    for s, t in a.edges:
        assert a.edges[s, t] == b.edges[s, t]
    assert b.nodes["F3.7@2"]["score"] == float(np.float32(0.1)) and b.nodes["F3.7@2"]["text"] == " Mary\n\ttab"


def test_graphml_ready_holds_only_scalars() -> None:
    g = graphml_ready(hand_made_graph().to_networkx())
    scalars = (bool, int, float, str)
    assert all(isinstance(v, scalars) for v in g.graph.values())
    assert all(isinstance(v, scalars) for _, a in g.nodes(data=True) for v in a.values())
    assert all(isinstance(v, scalars) for *_, a in g.edges(data=True) for v in a.values())


def test_from_networkx_refuses_foreign_graphs() -> None:
    with pytest.raises(ValueError, match="to_networkx"):
        graphs.from_networkx(nx.DiGraph())


# --- the viewer's JSON --------------------------------------------------------------------------


def test_viewer_json_validates_and_is_strict(tmp_path: Path) -> None:
    for graph in (hand_made_graph(), tiny_graph()):
        text = graphs.save(graph, tmp_path / "g.json").read_text()
        doc = _strict_json(text)
        jsonschema.validate(doc, graphs.viewer_schema())
        ids = [n["node_id"] for n in doc["nodes"]]
        assert len(set(ids)) == len(ids)
        assert {(link["source"], link["target"]) for link in doc["links"]} <= {(a, b) for a in ids for b in ids}


def test_circuit_tracer_file_validates_and_reads() -> None:
    doc = _strict_json((DATA / "circuit_tracer_excerpt.json").read_text())
    jsonschema.validate(doc, graphs.viewer_schema())
    graph = from_viewer_json(doc)
    assert graph.n_layers == 26
    assert [graph.count(k) for k in graphs.NODE_KINDS] == [3, 2, 2, 2]
    assert graph.top_logits == [("4", 0.328125), ("0", 0.0830078125)]
    assert graph.node_ids[:3] == ["F0.391@1", "F3.234@1", "F4.42@1"]
    assert graph.adjacency.nnz == len(doc["links"])
    # Written back, it has circuit-tracer's ids and weights.
    again = to_viewer_json(graph)
    assert sorted(n["node_id"] for n in again["nodes"]) == sorted(n["node_id"] for n in doc["nodes"])
    assert sorted((x["source"], x["target"], x["weight"]) for x in again["links"]) == \
        sorted((x["source"], x["target"], x["weight"]) for x in doc["links"])
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    for node in again["nodes"]:
        for key in ("feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "is_target_logit"):
            assert node[key] == by_id[node["node_id"]][key], (node["node_id"], key)


def test_viewer_node_fields_follow_circuit_tracer() -> None:
    graph = hand_made_graph()
    doc = to_viewer_json(graph, slug="my-graph", scan="smollm2")
    assert doc["metadata"]["slug"] == "my-graph" and doc["metadata"]["scan"] == "smollm2"
    assert doc["metadata"]["prompt_tokens"] == AWKWARD_TOKENS
    assert doc["qParams"] == {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    L, last = graph.n_layers, graph.n_pos - 1
    labels = graph.metadata["feature_labels"]
    shown = np.flatnonzero(used_nodes(graph))  # features and errors without an edge are left out
    assert len(shown) == len(doc["nodes"])
    for i, node in zip(shown, doc["nodes"]):
        kind, layer, pos = graph.nodes["kind"][i], graph.nodes["layer"][i], graph.nodes["position"][i]
        feat, tok = graph.nodes["feature"][i], graph.nodes["token_id"][i]
        assert node["ctx_idx"] == pos
        if kind == "feature":
            assert (node["node_id"], node["jsNodeId"], node["layer"]) == (f"{layer}_{feat}_{pos}", f"{layer}_{feat}-0",
                                                                          str(layer))
            assert node["feature"] == cantor(layer, feat)
            assert node["feature_type"] == "cross layer transcoder"
            assert node["activation"] == graph.nodes["activation"][i]
            assert node["clerp"] == labels[f"{layer}.{feat}"]
        elif kind == "error":
            ids = (node["node_id"], node["jsNodeId"], node["feature"])
            assert ids == (f"{layer}_-1_{pos}", f"{layer}_-1-{pos}", -1)
            assert node["feature_type"] == "mlp reconstruction error" and node["activation"] is None
        elif kind == "token":
            assert (node["node_id"], node["jsNodeId"], node["layer"]) == (f"E_{tok}_{pos}", f"E_{tok}-{pos}", "E")
            assert node["feature"] == pos and node["feature_type"] == "embedding"
        else:
            assert (node["node_id"], node["jsNodeId"]) == (f"{L + 1}_{tok}_{last}", f"L_{tok}-{last}")
            assert node["layer"] == str(L + 1) and node["feature"] == tok and node["influence"] is None
            assert node["token_prob"] == graph.nodes["prob"][i]
            assert node["clerp"].startswith(f'Output "{graph.nodes["token"][i]}" (p=')
    assert sum(n["is_target_logit"] for n in doc["nodes"]) == 1
    first_logit = int(np.searchsorted(shown, graph.span("logit").start))
    assert doc["nodes"][first_logit]["is_target_logit"]  # the most likely one
    influences = [n["influence"] for n in doc["nodes"] if n["influence"] is not None]
    assert min(influences) > 0 and max(influences) == pytest.approx(1.0)  # cumulative shares


def test_cantor_matches_circuit_tracer() -> None:
    # Values from circuit-tracer's fixture: node 0_391_1 has feature 77027, 2_14696_1 has 108037647.
    assert cantor(0, 391) == 77027
    assert cantor(2, 14696) == 108037647
