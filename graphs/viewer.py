"""JSON in the schema of circuit-tracer's and Neuronpedia's graph viewer, and back.

Field names, types and id formats follow circuit-tracer (``frontend/graph_models.py`` as written
by ``utils/create_graph_files.py``, v0.5.1+ ids):

==========  ==================  =====================  ======================  ==================
kind        ``node_id``         ``jsNodeId``           ``feature``             ``layer``
==========  ==================  =====================  ======================  ==================
feature     ``{l}_{f}_{p}``     ``{l}_{f}-0``          cantor(l, f)            ``"{l}"``
error       ``{l}_-1_{p}``      ``{l}_-1-{p}``         -1                      ``"{l}"``
token       ``E_{vocab}_{p}``   ``E_{vocab}-{p}``      p                       ``"E"``
logit       ``{L+1}_{vocab}_{p}``  ``L_{vocab}-{p}``   vocab                   ``"{L+1}"``
==========  ==================  =====================  ======================  ==================

``influence`` is a node's cumulative share of influence (what the viewer's node threshold
compares against; null for logits), ``activation`` a feature's activation (null otherwise), and
``clerp`` a feature's label or ``Output "tok" (p=0.923)`` for a logit. Links run source → target.

As circuit-tracer's ``create_graph_files`` writes it, the viewer sees a pruned graph: features and
errors without an edge are left out (tokens and logits always stay), ``metadata.node_threshold``
is set (the viewer shows its pruning slider only then) and ``metadata.scan`` names the transcoder
set (the viewer fetches feature examples by it). ``graph.save("x.json")`` of a graph that was not
pruned yet prunes it first (``save_viewer_json``, circuit-tracer's default thresholds); the exact
block keeps the whole graph, so the file still reads back into the very graph that was saved.

The viewer ignores fields it does not know, so ``metadata.circuit_engine`` carries the exact node
table, tokens, weight dtype and our metadata: ``read_viewer_json`` gives back the very graph
that was written. Files from circuit-tracer (without that block) are read as far as they go.
This module sits below ``graphs.graph`` and never imports it at run time: the readers build a graph of
the class they are given (``graphs.read_viewer_json`` and ``graphs.from_viewer_json`` pass ``AttributionGraph``).
The output is strict JSON: NaN and infinities never appear (the viewer's ``JSON.parse`` rejects them).
"""

from __future__ import annotations

import json
import math
import re
import time
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from graphs.effects import effect_flags, measured_effects
from graphs.heads import stored_loadings
from graphs.metrics import node_influence, prune
from graphs.node_labels import LABELS_KEY, feature_key
from graphs.nodes import NODE_COLUMNS, NODE_KINDS, empty_nodes, unreadable
from transcoders.writes import dumps, tag_floats, tagged, untag_floats, untagged, write_text

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph

SCHEMA_VERSION = 1
FORMAT = "circuit-engine attribution graph"
GENERATOR = {"name": "circuit-engine", "version": "0.1.0", "url": "https://github.com/circuit-engine"}
FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error", "token": "embedding",
                 "logit": "logit"}
QPARAMS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}


def cantor(layer: int, feature: int) -> int:
    """circuit-tracer's single integer for (layer, feature): the Cantor pairing with feature last."""
    s = int(layer) + int(feature)
    return s * (s + 1) // 2 + int(feature)


def cumulative_influence(influence: np.ndarray) -> np.ndarray:
    """``[n]``: the share of total influence held by the nodes at least as influential as each one."""
    infl = np.asarray(influence, dtype=np.float64)
    order = np.argsort(-infl, kind="stable")
    out = np.empty_like(infl)
    total = infl.sum()
    out[order] = np.cumsum(infl[order]) / (total if total > 0 else 1.0)
    return out


DEFAULT_NODE_THRESHOLD, DEFAULT_EDGE_THRESHOLD = 0.8, 0.98  # circuit-tracer's create_graph_files defaults
SET_KEY = "transcoder_set"  # graph.metadata key: the transcoder set's id (a preset name, org/repo, a folder name)


def to_viewer_json(graph: AttributionGraph, *, slug: str | None = None, scan: str | None = None,
                   cumulative: np.ndarray | None = None, node_threshold: float | None = None,
                   edge_threshold: float | None = None, whole: AttributionGraph | None = None) -> dict[str, Any]:
    """The viewer's JSON for every edge of ``graph`` and every node that has one (tokens and logits always).

    Args:
        slug: the graph's name in the viewer; default from the prompt.
        scan: the transcoder set's id, which the viewer fetches feature examples by; default
            ``graph.metadata["transcoder_set"]``, else (a graph that does not say) the model name.
        cumulative: ``[n_nodes]`` cumulative influence to write as ``influence``; default computed
            on this graph. Pass ``PruneResult.cumulative_scores[node_mask]`` for a pruned graph so
            the numbers are those of the full graph, as circuit-tracer writes them.
        node_threshold, edge_threshold: the pruning that made this graph, recorded in the metadata.
            ``node_threshold`` defaults to ``graph.metadata["node_threshold"]``, else 1.0 (the
            viewer's slider then starts with every node shown).
        whole: the unpruned graph ``graph`` was pruned from (``prune(whole).graph``): the exact block
            then holds ``whole``, so reading the file gives ``whole`` back.
    """
    n = graph.nodes
    cum = cumulative_influence(node_influence(graph)) if cumulative is None else np.asarray(cumulative, np.float64)
    labels: dict[str, str] = graph.metadata.get(LABELS_KEY) or {}
    L, last = graph.n_layers, graph.n_pos - 1
    logit_span = graph.span("logit")
    target = logit_span.start + int(np.argmax(n["prob"][logit_span])) if graph.count("logit") else -1
    nodes, ids = [], []
    used = used_nodes(graph)
    for i in range(graph.n_nodes):
        kind, layer, pos = str(n["kind"][i]), int(n["layer"][i]), int(n["position"][i])
        feat, tok = int(n["feature"][i]), int(n["token_id"][i])
        node: dict[str, Any] = {"feature_type": FEATURE_TYPES[kind], "ctx_idx": pos, "token_prob": 0.0,
                                "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
                                "influence": _finite(cum[i]), "activation": None}
        if kind == "feature":
            node.update(node_id=f"{layer}_{feat}_{pos}", feature=cantor(layer, feat), layer=str(layer),
                        jsNodeId=f"{layer}_{feat}-0", clerp=labels.get(feature_key(layer, feat), ""),
                        activation=_finite(n["activation"][i]))
        elif kind == "error":
            node.update(node_id=f"{layer}_-1_{pos}", feature=-1, layer=str(layer), jsNodeId=f"{layer}_-1-{pos}")
        elif kind == "token":
            node.update(node_id=f"E_{tok}_{pos}", feature=pos, layer="E", jsNodeId=f"E_{tok}-{pos}")
        else:
            prob = float(n["prob"][i])
            node.update(node_id=f"{L + 1}_{tok}_{last}", feature=tok, layer=str(L + 1), ctx_idx=last,
                        jsNodeId=f"L_{tok}-{last}", token_prob=prob, is_target_logit=i == target,
                        clerp=f'Output "{n["token"][i]}" (p={prob:.3f})', influence=None)
        ids.append(node["node_id"])
        if used[i]:
            nodes.append({k: node[k] for k in _NODE_ORDER})

    effects, flags = measured_effects(graph), effect_flags(graph)
    heads = stored_loadings(graph)
    own_ids = graph.node_ids
    links = []
    targets, sources, weights = graph.edges()
    for t, s, w in zip(targets.tolist(), sources.tolist(), weights.tolist()):
        link: dict[str, Any] = {"source": ids[s], "target": ids[t], "weight": w}
        effect = effects.get((own_ids[t], own_ids[s]))
        if effect is not None:
            link["measured_effect"] = effect
        flag = flags.get((own_ids[t], own_ids[s]))
        if flag is not None:
            link["effect_flag"] = flag  # the viewer ignores it; the exact block's metadata holds it too
        loading = heads.get((own_ids[t], own_ids[s]))
        if loading is not None:
            link["heads"] = [[name, v] for name, v in loading.items()]  # graphs.heads: strongest first, then other, direct
        links.append(link)

    meta = graph.metadata
    settings = {"max_n_logits": meta.get("max_logits"), "desired_logit_prob": meta.get("logit_prob"),
                "batch_size": meta.get("batch_size"), "max_feature_nodes": meta.get("max_feature_nodes")}
    pruning = {"node_threshold": node_threshold, "edge_threshold": edge_threshold}
    scan = scan or str(meta.get(SET_KEY) or meta.get("model", "unknown"))
    shown = None if whole is None else _positions_in(whole, graph)
    metadata: dict[str, Any] = {
        "slug": slug or slugify(graph.prompt), "scan": scan,
        "transcoder_list": [], "prompt_tokens": list(graph.token_texts), "prompt": graph.prompt,
        # The viewer shows its pruning slider only for a number here; a graph that does not say was not pruned.
        "node_threshold": _threshold(node_threshold, meta.get("node_threshold"),
                                     (meta.get("viewer_metadata") or {}).get("node_threshold"), 1.0),
        "schema_version": SCHEMA_VERSION,
        "info": {"generator": GENERATOR, "create_time_ms": int(time.time() * 1000), "transcoder_set": scan},
        "generation_settings": {k: v for k, v in settings.items() if v is not None and _finite(v) is not None},
        "pruning_settings": {k: v for k, v in pruning.items() if v is not None},
        "circuit_engine": _exact_block(graph if whole is None else whole,
                                       shown=np.flatnonzero(used) if shown is None else shown[used], graph=graph),
    }
    return {"metadata": metadata, "qParams": dict(QPARAMS), "nodes": nodes, "links": links}


def used_nodes(graph: AttributionGraph) -> np.ndarray:
    """``[n_nodes]`` bool: the nodes circuit-tracer's viewer files list: every token and logit, and the
    features and errors with at least one edge (``create_used_nodes_and_edges``)."""
    a = graph.adjacency.tocoo()
    used = np.isin(graph.nodes["kind"], ("token", "logit"))
    used[a.row] = used[a.col] = True
    return used


def _threshold(*values: Any) -> float:
    return next(float(v) for v in values if v is not None and _finite(v) is not None)


def _positions_in(whole: AttributionGraph, part: AttributionGraph) -> np.ndarray:
    """``[part.n_nodes]``: each node of ``part`` (a subgraph of ``whole``) as its index in ``whole``."""
    index = {node_id: i for i, node_id in enumerate(whole.node_ids)}
    try:
        return np.array([index[node_id] for node_id in part.node_ids], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"node {exc.args[0]} is not in the whole graph. Fix: pass whole=the graph that "
                         "prune(...) was given.") from exc


_NODE_ORDER = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
               "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation")


def write_viewer_json(graph: AttributionGraph, path: str | Path, *, prune_first: bool | None = None,
                      **kwargs: Any) -> Path:
    """Write ``to_viewer_json(graph, **kwargs)`` to ``path`` (strict JSON, atomically).

    ``prune_first``: prune ``graph`` for the viewer as circuit-tracer's ``create_graph_files`` does (node
    0.8, edge 0.98, or the thresholds in ``kwargs``), keeping the whole graph in the exact block. The
    default (None) prunes a graph that was not pruned yet (``graph.save("x.json")`` of a fresh trace)
    and writes a pruned one (``graphs.prune``, ``verify``) as it is.
    """
    if prune_first is None:
        # Pruned already: by graphs.prune or verify (pruned_from), or read from a viewer file (circuit-tracer's).
        done = "pruned_from" in graph.metadata or "viewer_metadata" in graph.metadata
        prune_first = not done and "cumulative" not in kwargs and "whole" not in kwargs
    if prune_first:
        kwargs.setdefault("node_threshold", DEFAULT_NODE_THRESHOLD)
        kwargs.setdefault("edge_threshold", DEFAULT_EDGE_THRESHOLD)
        result = prune(graph, kwargs["node_threshold"], kwargs["edge_threshold"])
        kwargs.update(cumulative=result.cumulative_scores[result.node_mask], whole=graph)
        graph = result.graph
    return write_text(path, dumps(to_viewer_json(graph, **kwargs), ensure_ascii=False))


def read_viewer_data(path: str | Path) -> Any:
    """A viewer JSON file's document, or a clear error for a file that is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise unreadable(path, exc) from exc


def build_from_viewer_json(cls: type[AttributionGraph], data: dict[str, Any]) -> AttributionGraph:
    """The ``cls`` (an ``AttributionGraph``) a viewer JSON document describes: exactly, if we wrote it;
    else rebuilt from the viewer's fields."""
    for key in ("metadata", "nodes", "links"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"not a viewer graph: no {key!r} field. Fix: pass a file written by graphs.save(..json) "
                             "or circuit-tracer's create_graph_files.")
    block = data["metadata"].get("circuit_engine")
    if block and block.get("format") == FORMAT:
        return _from_exact(cls, data, block)
    return _from_foreign(cls, data)


@cache
def viewer_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of what the viewer reads: ``graphs/viewer_schema.json``."""
    return json.loads(resources.files("graphs").joinpath("viewer_schema.json").read_text())


def slugify(text: str, limit: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "graph"


# --- the exact block --------------------------------------------------------------------------


def _exact_block(whole: AttributionGraph, *, shown: np.ndarray, graph: AttributionGraph) -> dict[str, Any]:
    """``whole`` exactly. ``shown`` ``[len(nodes)]``: the index in ``whole`` of each node the viewer fields
    list; the viewer's links are ``graph``'s edges, and ``whole``'s other edges are kept here."""
    columns = {}
    for name, (dtype, _) in NODE_COLUMNS.items():
        values = whole.nodes[name].tolist()
        if np.dtype(dtype).kind == "f":
            values = [None if v != v else tagged(v) for v in values]  # NaN is the column's "missing"
        columns[name] = values
    block: dict[str, Any] = {
        "format": FORMAT, "version": SCHEMA_VERSION, "tokens": [int(t) for t in whole.tokens],
        "token_texts": list(whole.token_texts), "weight_dtype": str(whole.adjacency.dtype),
        "graph_metadata": tag_floats(whole.metadata), "columns": columns}
    if len(shown) != whole.n_nodes:
        block["shown"] = [int(i) for i in shown]
    if whole is not graph:
        # The whole graph's edges that the links (``graph``'s edges) leave out, by whole-graph index.
        at = _positions_in(whole, graph)
        part, a = graph.adjacency.tocoo(), whole.adjacency.tocoo()
        n = np.int64(whole.n_nodes)
        listed = at[part.row].astype(np.int64) * n + at[part.col]
        rest = ~np.isin(a.row.astype(np.int64) * n + a.col, listed)
        block["other_edges"] = {"targets": a.row[rest].tolist(), "sources": a.col[rest].tolist(),
                                "weights": [tagged(w) for w in a.data[rest].tolist()]}
    return block


def _from_exact(cls: type[AttributionGraph], data: dict[str, Any], block: dict[str, Any]) -> AttributionGraph:
    columns = block["columns"]
    n = len(columns["kind"])
    nodes = empty_nodes(n)
    for name, (dtype, fill) in NODE_COLUMNS.items():
        if name not in columns:
            continue  # a column added after the file was written keeps its fill value
        values = [fill if v is None else untagged(v) for v in columns[name]]
        nodes[name] = np.array(values, dtype=str) if np.dtype(dtype).kind == "U" else np.array(values, dtype=dtype)
    shown = block.get("shown", range(n))
    index = {node["node_id"]: int(i) for i, node in zip(shown, data["nodes"])}
    if len(index) != len(shown) or len(data["nodes"]) != len(shown):
        raise ValueError(f"the file lists {len(data['nodes'])} nodes but its exact block {len(shown)}. Fix: do not "
                         "edit metadata.circuit_engine by hand, or delete it to read the viewer fields only.")
    dtype = np.dtype(block.get("weight_dtype", "float32"))
    adjacency = _adjacency(data["links"], index, n, dtype)
    other = block.get("other_edges")
    if other:
        weights = np.array([untagged(w) for w in other["weights"]], dtype=dtype)
        adjacency = adjacency + sp.csr_matrix((weights, (other["targets"], other["sources"])), shape=(n, n),
                                              dtype=dtype)
    return cls(prompt=data["metadata"]["prompt"], tokens=np.array(block["tokens"], dtype=np.int64),
               token_texts=list(block["token_texts"]), nodes=nodes, adjacency=adjacency,
               metadata=untag_floats(block["graph_metadata"]))


def _adjacency(links: list[dict[str, Any]], index: dict[str, int], n: int, dtype: np.dtype) -> sp.csr_matrix:
    rows = np.array([index[link["target"]] for link in links], dtype=np.int64)
    cols = np.array([index[link["source"]] for link in links], dtype=np.int64)
    vals = np.array([link["weight"] for link in links], dtype=dtype)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=dtype)


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# --- files from circuit-tracer ----------------------------------------------------------------

_KIND_OF = {v: k for k, v in FEATURE_TYPES.items()}
_OUTPUT = re.compile(r'^Output "(.*)" \(p=[^)]*\)$', re.S)


def _from_foreign(cls: type[AttributionGraph], data: dict[str, Any]) -> AttributionGraph:
    """A graph from the viewer fields alone (circuit-tracer's files): kinds, positions, ids and weights;
    the pre-activations and biases such files do not hold stay missing."""
    meta = data["metadata"]
    texts = list(meta.get("prompt_tokens") or [])
    parsed = []
    for node in data["nodes"]:
        kind = _KIND_OF.get(node["feature_type"], "feature")  # other transcoder types are features too
        first, middle, last = str(node["node_id"]).rsplit("_", 2)
        parsed.append((kind, first, int(middle), int(last), node))
    logit_layers = [int(first) for kind, first, *_ in parsed if kind == "logit"]
    feature_layers = [int(first) for kind, first, *_ in parsed if kind in ("feature", "error")]
    n_layers = logit_layers[0] - 1 if logit_layers else max(feature_layers, default=-1) + 1
    n_pos = max([len(texts)] + [p + 1 for *_, p, _ in parsed])
    rank = {k: i for i, k in enumerate(NODE_KINDS)}

    def order(item: tuple) -> tuple:
        kind, first, middle, last, node = item
        if kind == "logit":
            return rank[kind], -float(node.get("token_prob") or 0.0), middle
        if kind == "token":
            return rank[kind], last, 0, 0
        return rank[kind], int(first), last, middle

    parsed.sort(key=order)
    nodes = empty_nodes(len(parsed))
    tokens = np.full(n_pos, -1, dtype=np.int64)
    for i, (kind, first, middle, last, node) in enumerate(parsed):
        nodes["kind"][i] = kind
        nodes["position"][i] = last
        if kind in ("feature", "error"):
            nodes["layer"][i] = int(first)
        if kind == "feature":
            nodes["feature"][i] = middle
            nodes["activation"][i] = np.nan if node.get("activation") is None else node["activation"]
        if kind == "token":
            nodes["token_id"][i] = tokens[last] = middle
        if kind == "logit":
            nodes["layer"][i] = n_layers
            nodes["token_id"][i] = middle
            nodes["prob"][i] = node.get("token_prob", np.nan)
    token_text = [texts[p] if kind == "token" and p < len(texts) else "" for kind, _, _, p, _ in parsed]
    for i, (kind, _, _, _, node) in enumerate(parsed):
        if kind == "logit":
            match = _OUTPUT.match(node.get("clerp", ""))
            token_text[i] = match.group(1) if match else ""
    nodes["token"] = np.array(token_text, dtype=str)
    index = {item[4]["node_id"]: i for i, item in enumerate(parsed)}
    links = [link for link in data["links"] if link["source"] in index and link["target"] in index]
    adjacency = _adjacency(links, index, len(parsed), np.dtype(np.float32))
    labels = {feature_key(int(first), middle): node["clerp"] for kind, first, middle, _, node in parsed
              if kind == "feature" and node.get("clerp")}
    metadata: dict[str, Any] = {"model": meta.get("scan", "unknown"), "n_layers": n_layers, "n_pos": n_pos,
                                "source": "viewer json", "viewer_metadata": meta}
    if labels:
        metadata[LABELS_KEY] = labels
    texts += [""] * (n_pos - len(texts))
    return cls(prompt=meta.get("prompt", ""), tokens=tokens, token_texts=texts, nodes=nodes, adjacency=adjacency,
               metadata=metadata)
