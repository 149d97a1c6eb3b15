"""The viewer's files without a browser: the viewer JSON as circuit-tracer writes it, graph.html's data and
self-containment, the pinned-subgraph scores' definition, feature contexts, and ``circuits view``'s server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import graphs
from graph_helpers import assert_same_graph, hand_made_graph, tiny_graph
from graphs import prune
from graphs.html import to_html, write_html
from graphs.html_data import page_data, pinned_scores
from graphs.html_server import ViewerFolderError, ViewerServer
from graphs.metrics import graph_scores
from graphs.node_labels import CONTEXTS_KEY, set_feature_contexts
from graphs.viewer import to_viewer_json, used_nodes

# --- viewer JSON, as circuit-tracer's create_graph_files writes it ------------------------------------


def test_save_prunes_a_fresh_graph_for_the_viewer_and_reads_back_whole(tmp_path: Path) -> None:
    graph = tiny_graph()
    doc = json.loads(graphs.save(graph, tmp_path / "g.json").read_text())
    pruned = prune(graph, 0.8, 0.98).graph
    assert sorted(n["node_id"] for n in doc["nodes"]) == sorted(n["node_id"] for n in to_viewer_json(pruned)["nodes"])
    assert len(doc["links"]) == pruned.adjacency.nnz < graph.adjacency.nnz
    assert doc["metadata"]["node_threshold"] == 0.8
    assert doc["metadata"]["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    linked = {x["source"] for x in doc["links"]} | {x["target"] for x in doc["links"]}
    for node in doc["nodes"]:  # no feature or error without an edge; tokens and logits always
        assert node["node_id"] in linked or node["feature_type"] in ("embedding", "logit")
    assert_same_graph(graph, graphs.load(tmp_path / "g.json"))  # the exact block keeps the whole graph


def test_edgeless_nodes_are_dropped_and_tokens_logits_kept() -> None:
    graph = prune(tiny_graph()).graph
    # Cut every edge out of one error and into one logit: the error goes, the logit stays.
    kind = graph.nodes["kind"]
    error = int(np.flatnonzero(kind == "error")[0])
    logit = int(np.flatnonzero(kind == "logit")[-1])
    a = graph.adjacency.tolil()
    a[:, error] = 0
    a[logit, :] = 0
    cut = type(graph)(graph.prompt, graph.tokens, graph.token_texts, graph.nodes, a.tocsr(), graph.metadata)
    cut.adjacency.eliminate_zeros()
    ids = [n["node_id"] for n in to_viewer_json(cut)["nodes"]]
    used = used_nodes(cut)
    assert not used[error] and used[logit] and used[graph.span("token")].all()
    assert len(ids) == int(used.sum()) == cut.n_nodes - 1
    layer, pos = cut.nodes["layer"][error], cut.nodes["position"][error]
    assert f"{layer}_-1_{pos}" not in ids


def test_scan_is_the_transcoder_set(tmp_path: Path) -> None:
    graph = hand_made_graph()
    assert to_viewer_json(graph)["metadata"]["scan"] == "hand-made"  # no set named: the model, as before
    graph.metadata["transcoder_set"] = "smollm2-quick"
    meta = to_viewer_json(graph)["metadata"]
    assert meta["scan"] == meta["info"]["transcoder_set"] == "smollm2-quick"
    assert to_viewer_json(graph, scan="org/set")["metadata"]["scan"] == "org/set"


# --- the pinned subgraph's scores ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_graph, lambda: prune(tiny_graph()).graph, hand_made_graph])
def test_pinning_every_feature_gives_the_graphs_scores(make) -> None:
    graph = make()
    every = graph.nodes["kind"] == "feature"
    assert pinned_scores(graph, every) == pytest.approx(graph_scores(graph), rel=1e-9)


def test_pinned_scores_are_graph_scores_with_the_rest_as_errors() -> None:
    # The definition, built literally: features not pinned become error nodes (moved into the error
    # block, their inputs cut), and graph_scores scores that graph.
    graph = prune(tiny_graph()).graph
    kind = graph.nodes["kind"]
    rng = np.random.default_rng(0)
    for share in (0.0, 0.3, 0.7):
        pinned = (kind == "feature") & (rng.random(graph.n_nodes) < share)
        rest = (kind == "feature") & ~pinned
        order = np.concatenate([np.flatnonzero(pinned), np.flatnonzero(rest), np.flatnonzero(kind != "feature")])
        nodes = {k: v[order].copy() for k, v in graph.nodes.items()}
        nodes["kind"][int(pinned.sum()):int(pinned.sum()) + int(rest.sum())] = "error"
        a = graph.adjacency.tolil()
        a[np.flatnonzero(rest), :] = 0
        a = a.tocsr()[order][:, order]
        a.eliminate_zeros()
        literal = type(graph)(graph.prompt, graph.tokens, graph.token_texts, nodes, a, dict(graph.metadata))
        assert pinned_scores(graph, pinned) == pytest.approx(graph_scores(literal), rel=1e-9)


# --- the page -----------------------------------------------------------------------------------------


def test_page_is_self_contained_and_escapes_its_data(tmp_path: Path) -> None:
    graph = hand_made_graph()
    graph.metadata["feature_labels"] = {k: "</script><script>alert(1)</script>" for k in graph.metadata["feature_labels"]}
    page = to_html(graph)
    assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from the network, no CDN
    data = page.split('<script id="graph-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data  # a label cannot close the data block
    assert json.loads(data)["nodes"]["label"][0] == "</script><script>alert(1)</script>"
    assert write_html(graph, tmp_path / "g.html").read_bytes().decode() == page


def test_page_data_columns_contexts_and_edge_extras() -> None:
    graph = prune(tiny_graph()).graph
    graph.metadata = dict(graph.metadata)
    f = graph.span("feature").start
    key = f"{graph.nodes['layer'][f]}.{graph.nodes['feature'][f]}"
    assert set_feature_contexts(graph, {key: [[2.5, [" a", " b", " c"], 1]], "99.99": [[1.0, ["x"], 0]]}) == 1
    target, source = graph.node_ids[graph.adjacency.tocoo().row[0]], graph.node_ids[graph.adjacency.tocoo().col[0]]
    graphs.set_measured_effect(graph, {(target, source): 0.25})
    graphs.set_effect_flags(graph, {(target, source): "size"})
    data = page_data(graph, node_threshold=0.8, scan="tiny-set")
    n = len(data["nodes"]["id"])
    assert all(len(column) == n for column in data["nodes"].values())
    assert n == int(used_nodes(graph).sum())
    assert data["contexts"] == {key: [[2.5, [" a", " b", " c"], 1]]}  # only features in the graph
    assert len(data["edges"]["s"]) == len(data["edges"]["t"]) == len(data["edges"]["w"]) == graph.adjacency.nnz
    measured = [(x["measured_effect"], x["effect_flag"]) for x in data["edges"]["extra"].values() if "measured_effect" in x]
    assert measured == [(0.25, "size")]
    assert data["scan"] == "tiny-set" and data["node_threshold"] == 0.8
    assert data["scores"]["replacement"] == pytest.approx(graph.replacement_score)
    assert graph.metadata[CONTEXTS_KEY] == {key: [[2.5, [" a", " b", " c"], 1]]}


def test_context_windows_are_trimmed_to_the_row() -> None:
    from circuits.labels import FeatureLabels

    class Tok:
        def decode(self, ids: list[int]) -> str:
            return f"<{ids[0]}>"

    acts = np.array([[[3.0, 1.0, 0.0]]], dtype=np.float32)  # [L=1, F=1, k=3]
    contexts = np.array([[[[-1, -1, 7, 8, 9], [-1, 4, 5, 6, -1], [0, 0, 0, 0, 0]]]], dtype=np.int32)
    labels = FeatureLabels(acts, contexts[..., 3], contexts, [["x"]], before=3)
    windows = labels.context_windows([(0, 0)], Tok())
    # The first lost two tokens before its row's start, so the firing token (index 3 of 5) is at 1; the
    # second, at 2, ends its row; the third never fired.
    assert windows == {(0, 0): [[3.0, ["<7>", "<8>", "<9>"], 1], [1.0, ["<4>", "<5>", "<6>"], 2]]}


# --- circuits view ------------------------------------------------------------------------------------


def test_server_serves_the_page_and_renders_one_from_graph_json(tmp_path: Path) -> None:
    graph = prune(tiny_graph()).graph
    with_page = tmp_path / "a"
    with_page.mkdir()
    write_html(graph, with_page / "graph.html")
    only_json = tmp_path / "b"
    only_json.mkdir()
    graphs.save(graph, only_json / "graph.json")
    for folder in (with_page, only_json):
        with ViewerServer(folder) as server:
            with urllib.request.urlopen(server.url, timeout=30) as reply:
                page = reply.read().decode()
            assert reply.status == 200 and 'id="graph-data"' in page
    assert [p.name for p in only_json.iterdir()] == ["graph.json"]  # nothing written into the folder
    with pytest.raises(ViewerFolderError, match="Fix:"):
        ViewerServer(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ViewerFolderError, match="neither graph.html nor graph.json"):
        ViewerServer(empty)


def test_circuits_view_command(tmp_path: Path) -> None:
    write_html(prune(tiny_graph()).graph, tmp_path / "graph.html")
    proc = subprocess.Popen([sys.executable, "-m", "circuits", "view", str(tmp_path), "--no-open"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        url = re.search(r"http://\S+", line).group(0)
        with urllib.request.urlopen(url, timeout=30) as reply:
            assert reply.status == 200 and "<!DOCTYPE html>" in reply.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    missing = subprocess.run([sys.executable, "-m", "circuits", "view", str(tmp_path / "nope"), "--no-open"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "Fix:" in missing.stderr and "Traceback" not in missing.stderr


def test_a_circuit_tracer_file_is_saved_as_it_is(tmp_path: Path) -> None:
    # Its graph was pruned when circuit-tracer wrote it: saving it again keeps every node and its threshold.
    data = Path(__file__).parent / "data" / "circuit_tracer_excerpt.json"
    original = json.loads(data.read_text())
    original["metadata"]["node_threshold"] = 0.6
    graph = graphs.from_viewer_json(original)
    doc = json.loads(graphs.save(graph, tmp_path / "again.json").read_text())
    assert sorted(n["node_id"] for n in doc["nodes"]) == sorted(n["node_id"] for n in original["nodes"])
    assert len(doc["links"]) == len(original["links"])
    assert doc["metadata"]["node_threshold"] == 0.6
