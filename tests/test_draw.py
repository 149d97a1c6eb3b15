"""Drawings: tokens along the bottom in prompt order, logits on top, layers between, edge colour by sign.

Structure is read from the SVG graphviz writes (node and edge groups carry our class names and
titles); tests that need graphviz's ``dot`` skip with the fix when it is missing.
"""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import pytest

import graphs
from graph_helpers import hand_made_graph, tiny_graph
from graphs.draw import NEGATIVE, POSITIVE, GraphvizMissingError, cap, drawable, to_dot

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="graphviz's `dot` is not installed: run `make setup` or `apt-get install graphviz`")
SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> tuple[dict[str, tuple[set[str], float, float]], list[tuple[str, str, str, str]]]:
    """Nodes ``{title: (classes, x, y)}`` (SVG y grows downwards) and edges ``[(source, target, classes, stroke)]``."""
    root = ET.fromstring(svg)
    nodes, edges = {}, []
    for g in root.iter(f"{SVG}g"):
        classes = set((g.get("class") or "").split())
        title = g.find(f"{SVG}title")
        if title is None:
            continue
        if "row-label" in classes:
            continue
        if "node" in classes:
            shape = next(el for el in g.iter() if el.tag in (f"{SVG}polygon", f"{SVG}path", f"{SVG}ellipse",
                                                              f"{SVG}text"))
            if shape.tag == f"{SVG}polygon":
                pts = [tuple(map(float, p.split(","))) for p in shape.get("points").split()]
                x, y = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            elif shape.tag == f"{SVG}path":
                nums = list(map(float, re.findall(r"-?\d+\.?\d*", shape.get("d"))))
                x, y = sum(nums[0::2]) / len(nums[0::2]), sum(nums[1::2]) / len(nums[1::2])
            else:
                x, y = float(shape.get("x")), float(shape.get("y"))
            nodes[title.text] = (classes, x, y)
        elif "edge" in classes:
            source, target = title.text.split("->")
            path = next(g.iter(f"{SVG}path"))  # inside an <a> when the edge has a tooltip
            edges.append((source, target, " ".join(classes), path.get("stroke")))
    return nodes, edges


def _ys(nodes: dict, kind: str) -> list[float]:
    return [y for classes, _, y in nodes.values() if kind in classes]


@needs_dot
@pytest.mark.parametrize("make", [hand_made_graph, tiny_graph], ids=["hand-made", "traced"])
def test_svg_layout_and_colours(make) -> None:
    graph = make()
    drawn = drawable(graph, max_nodes=30)
    nodes, edges = _parse(graphs.svg(graph, max_nodes=30))
    assert set(nodes) == set(drawn.nodes)
    tokens, logits = _ys(nodes, "token"), _ys(nodes, "logit")
    inner = _ys(nodes, "feature") + _ys(nodes, "error")
    assert len(tokens) == graph.n_pos  # every token is drawn, even one that feeds nothing kept
    assert logits and inner
    assert len(set(tokens)) == 1 and len(set(logits)) == 1  # one row each
    assert min(tokens) > max(inner) and min(inner) > max(logits)  # tokens lowest, logits highest
    # Tokens run left to right in prompt order.
    xs = [nodes[f"T@{p}"][1] for p in range(graph.n_pos)]
    assert xs == sorted(xs)
    # Higher layers sit higher (smaller SVG y).
    by_layer = sorted((drawn.nodes[n]["layer"], nodes[n][2]) for n in drawn if drawn.nodes[n]["kind"] == "feature")
    for (la, ya), (lb, yb) in zip(by_layer, by_layer[1:]):
        assert la == lb and ya == yb or la < lb and ya > yb
    # Edge colour follows the sign of the weight.
    assert len(edges) == drawn.number_of_edges()
    for source, target, classes, stroke in edges:
        w = drawn.edges[source, target]["weight"]
        assert stroke.lower() == (POSITIVE if w >= 0 else NEGATIVE)
        assert ("positive" in classes) == (w >= 0)


@needs_dot
def test_errors_look_different_and_features_carry_labels() -> None:
    graph = hand_made_graph()
    svg = graphs.svg(graph, max_nodes=100)
    root = ET.fromstring(svg)
    fills = {}
    for g in root.iter(f"{SVG}g"):
        classes = set((g.get("class") or "").split())
        kind = next((k for k in ("feature", "error", "token", "logit") if k in classes), None)
        shape = next((el for el in g.iter() if el.tag in (f"{SVG}polygon", f"{SVG}path")), None)
        if kind and shape is not None:
            fills.setdefault(kind, set()).add((shape.get("fill"), shape.get("stroke-dasharray") is not None))
    assert fills["error"] == {("#e6e6e6", True)}  # grey and dashed
    assert all(not dashed for _, dashed in fills["feature"])
    assert "label " in svg  # features show their labels (from metadata["feature_labels"])


@needs_dot
def test_render_writes_svg_png_and_source(tmp_path: Path) -> None:
    graph = tiny_graph()
    assert graph.render(tmp_path / "g.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert graph.render(tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "digraph" in graph.render(tmp_path / "g.dot").read_text()
    assert graph._repr_svg_().lstrip().startswith(("<?xml", "<svg"))


@needs_dot
def test_any_networkx_graph_draws() -> None:
    """A head-level circuit (no positions, its own kinds) draws with the same code."""
    g = nx.DiGraph()
    g.add_node("input", kind="embed", layer=-1, label="input")  # kinds of its own: kept as the graph's ends
    for layer in range(2):
        for h in range(3):
            g.add_node(f"a{layer}.h{h}", kind="head", layer=layer)
            g.add_edge("input" if layer == 0 else f"a{layer - 1}.h{h}", f"a{layer}.h{h}", weight=(-1) ** h * 0.5)
    g.add_node("logits", kind="output", layer=2)
    g.add_edges_from([(f"a1.h{h}", "logits") for h in range(3)], weight=1.0)
    nodes, edges = _parse(graphs.svg(g))
    assert set(nodes) == set(g.nodes)
    assert set(cap(g, max_nodes=2).nodes) >= {"input", "logits"}
    assert nodes["input"][2] > nodes["a0.h0"][2] > nodes["a1.h0"][2] > nodes["logits"][2]
    assert {stroke.lower() for *_, stroke in edges} == {POSITIVE, NEGATIVE}


def test_cap_keeps_the_most_influential() -> None:
    g = drawable(hand_made_graph(), max_nodes=None, max_edges=None, node_threshold=1.0, edge_threshold=1.0)
    inner = [n for n, k in g.nodes(data="kind") if k in ("feature", "error")]
    capped = cap(g, max_nodes=6, max_edges=20, max_per_cell=1, error_share=0.34)
    kept = [n for n, k in capped.nodes(data="kind") if k in ("feature", "error")]
    assert len(kept) <= 6 < len(inner)
    cells = [(g.nodes[n]["layer"], g.nodes[n]["position"]) for n in kept]
    assert len(cells) == len(set(cells))  # one per (layer, position)
    features = sorted((n for n in inner if g.nodes[n]["kind"] == "feature"), key=lambda n: -g.nodes[n]["influence"])
    errors = [n for n in kept if g.nodes[n]["kind"] == "error"]
    assert len(errors) <= 2 or len(kept) - len(errors) == len(features)  # errors fill in only when features run out
    assert features[0] in kept or capped.out_degree(features[0]) == 0
    assert {n for n, k in capped.nodes(data="kind") if k == "token"} == {n for n, k in g.nodes(data="kind")
                                                                           if k == "token"}
    assert all(capped.out_degree(n) > 0 for n in kept)  # nothing dangles
    assert capped.number_of_edges() <= 20 + len(capped)


def test_dot_source_needs_no_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    source = graphs.render(tiny_graph(), tmp_path / "g.dot").read_text()
    assert 'pos="' in source and "->" in source
    assert to_dot(drawable(tiny_graph())).source.count("->") == drawable(tiny_graph()).number_of_edges()


def test_missing_dot_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GraphvizMissingError, match=r"make setup.*apt-get install graphviz"):
        graphs.render(tiny_graph(), tmp_path / "g.svg")
    assert not (tmp_path / "g.svg").exists()
    assert tiny_graph()._repr_svg_() is None  # Jupyter falls back to the text repr
