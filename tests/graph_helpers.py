"""Graphs for the export, drawing and CLI tests: hand-made ones with awkward values, and a traced tiny one."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import scipy.sparse as sp
import torch

from graphs import AttributionGraph, set_feature_labels, set_measured_effect
from graphs.graph import empty_nodes

# Token texts that trip up XML and JSON: spaces, newlines, \r, markup, control characters, non-ASCII, empty.
AWKWARD_TOKENS = [" Mary", "\n", "a\r\nb", "<&>\"'", "\x00\x1b", "naïve ☃", "", "  "]


def hand_made_graph(*, n_layers: int = 2, tokens: list[str] | None = None, seed: int = 0,
                    dtype: type = np.float32, with_extras: bool = True) -> AttributionGraph:
    """A graph of every node kind with random edges (features and logits are the targets),
    NaN where kinds lack a column, and (``with_extras``) labels, measured effects and odd metadata."""
    rng = np.random.default_rng(seed)
    texts = list(AWKWARD_TOKENS if tokens is None else tokens)
    P, L = len(texts), n_layers
    feats = [(layer, p, f) for layer in range(L) for p in range(P)
             for f in rng.choice(10_000, size=2, replace=False) if rng.random() < 0.7]
    n_f, n_l = len(feats), 3
    n = n_f + L * P + P + n_l
    nodes = empty_nodes(n)
    f, e = slice(0, n_f), slice(n_f, n_f + L * P)
    t, lg = slice(e.stop, e.stop + P), slice(e.stop + P, n)
    nodes["kind"][f], nodes["kind"][e], nodes["kind"][t], nodes["kind"][lg] = "feature", "error", "token", "logit"
    if n_f:
        nodes["layer"][f], nodes["position"][f], nodes["feature"][f] = np.array(feats).T
    nodes["activation"][f] = rng.gamma(2.0, size=n_f)
    nodes["pre_activation"][f] = nodes["activation"][f] + rng.normal(size=n_f)
    nodes["layer"][e], nodes["position"][e] = np.divmod(np.arange(L * P), P)
    nodes["activation"][e] = rng.gamma(1.0, size=L * P)
    nodes["layer"][t], nodes["position"][t] = -1, np.arange(P)
    nodes["token_id"][t] = rng.integers(0, 50_000, size=P)
    nodes["layer"][lg], nodes["position"][lg] = L, P - 1
    nodes["token_id"][lg] = [17, 2**40 + 3, 5]  # an id past 32 bits must stay an int
    probs = np.sort(rng.dirichlet(np.ones(4))[:n_l])[::-1]
    nodes["prob"][lg] = probs
    nodes["pre_activation"][lg] = rng.normal(size=n_l)
    nodes["bias"][f], nodes["bias"][lg] = rng.normal(size=n_f), rng.normal(size=n_l)
    nodes["excluded_input"][f], nodes["excluded_input"][lg] = 0.0, rng.normal(size=n_l)
    nodes["token"] = np.array([""] * (n_f + L * P) + texts + ["Mary", " the", "\tx"])
    # Edges: every source earlier in layer order may feed a feature of a later layer or a logit.
    rows, cols = [], []
    src_layer = np.where(nodes["kind"] == "token", -1, nodes["layer"])
    targets = np.flatnonzero(np.isin(nodes["kind"], ("feature", "logit")))
    sources = np.flatnonzero(np.isin(nodes["kind"], ("feature", "error", "token")))
    for tgt in targets:
        ok = sources[src_layer[sources] < nodes["layer"][tgt]]
        pick = ok[rng.random(len(ok)) < 0.5]
        rows += [tgt] * len(pick)
        cols += list(pick)
    weights = rng.normal(scale=rng.choice([1e-30, 1e-3, 1.0, 1e6], size=len(rows)))
    adjacency = sp.csr_matrix((weights.astype(dtype), (rows, cols)), shape=(n, n), dtype=dtype)
    metadata = {"model": "hand-made", "n_layers": L, "n_pos": P, "dtype": np.dtype(dtype).name}
    graph = AttributionGraph(prompt="".join(texts), tokens=nodes["token_id"][t].copy(), token_texts=texts,
                             nodes=nodes, adjacency=adjacency, metadata=metadata)
    if with_extras:
        graph.metadata.update({"nested": {"a": [1, 2.5, None, "x"], "b": {"c": True}}, "none": None,
                               "nan": float("nan"), "inf": float("-inf"), "unicode": "naïve ☃ \r\n"})
        if n_f:
            set_feature_labels(graph, {(int(la), int(ft)): f"label {la}.{ft} <&> ␣Mary" for la, _, ft in feats})
        coo = adjacency.tocoo()
        effect = {(graph.node_ids[r], graph.node_ids[c]): float(v) * 0.5
                  for r, c, v in list(zip(coo.row, coo.col, coo.data))[::3]}
        set_measured_effect(graph, effect)
    return graph


@cache
def tiny_setup(family: str = "llama", seed: int = 0):
    """A tiny random model and a random PLT for it (float32)."""
    from circuits import tiny_model
    from transcoders import TranscoderConfig, build_transcoder

    model = tiny_model(family, seed=seed, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64, d_vocab=40,
                       n_ctx=32)
    cfg = TranscoderConfig(kind="plt", n_layers=3, d_model=32, d_features=24, activation="topk", k=4,
                           model_name=model.name)
    torch.manual_seed(seed)
    tc = build_transcoder(cfg).eval()
    with torch.no_grad():
        tc.b_enc.normal_(0, 0.1)
    return model, tc


@cache
def tiny_graph() -> AttributionGraph:
    """The attribution graph of a short prompt through ``tiny_setup()`` (treat as read-only)."""
    from circuits import trace

    model, tc = tiny_setup()
    return trace("t1 t2 t3 t4 t5 t6", model=model, transcoders=tc)


def assert_same_graph(a: AttributionGraph, b: AttributionGraph) -> None:
    """Equal in every attribute: prompt, tokens, node table (values and dtypes), edges (pattern,
    values and dtype) and metadata (NaN equal to NaN)."""
    assert a.prompt == b.prompt
    assert a.token_texts == b.token_texts
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert set(a.nodes) == set(b.nodes)
    for name, col in a.nodes.items():
        other = b.nodes[name]
        assert col.dtype.kind == other.dtype.kind, name
        if col.dtype.kind != "U":
            assert col.dtype == other.dtype, name
        np.testing.assert_array_equal(col, other, err_msg=name)
    assert a.adjacency.dtype == b.adjacency.dtype
    assert a.adjacency.shape == b.adjacency.shape
    ca, cb = a.adjacency.tocoo(), b.adjacency.tocoo()
    ta = sorted(zip(ca.row.tolist(), ca.col.tolist(), ca.data.tolist()))
    tb = sorted(zip(cb.row.tolist(), cb.col.tolist(), cb.data.tolist()))
    assert ta == tb
    assert json.dumps(a.metadata, sort_keys=True) == json.dumps(b.metadata, sort_keys=True)
    assert a.node_ids == b.node_ids
