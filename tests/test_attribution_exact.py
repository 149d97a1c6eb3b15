"""Tier 1, exactness: every edge is the direct effect measured by intervention in the frozen replacement model.

The reference is ``run_replacement``: a real forward pass of the tiny model with hooks that
freeze norms and attention patterns and write transcoder outputs plus errors into the MLP slots.
Each source (feature activation, error vector, token embedding) is zeroed in its own batch row;
the change in every target's pre-activation (or demeaned logit) is that source's column.
Attribution itself never runs the model backwards, so agreement is a real check.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from _threads import one_thread  # noqa: F401  (small tensors: one torch thread is faster on a shared CPU)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from circuits import tiny_model, trace
from circuits.attribution import freeze, replace_mlps, run_replacement
from circuits.models import TINY_FAMILIES, Model
from transcoders import TranscoderConfig, build_transcoder

CPU = torch.device("cpu")
F64 = torch.float64
# The reference runs on the CPU in float64; the trace under test runs where `make gpu-check` puts it
# (benchmarks/gpu_check.py sets these to cuda, in float64 and in float32).
TRACE_DEVICE = os.environ.get("CIRCUITS_TEST_DEVICE", "cpu")
TRACE_DTYPE = os.environ.get("CIRCUITS_TEST_DTYPE", "float64")
# Relative to the size of the terms each target sums: float64 is exact to rounding; float32's
# 24-bit mantissa over sums of a few hundred terms leaves a few 1e-6 of the largest term.
TOL = {"float64": 1e-6, "float32": 1e-4}[TRACE_DTYPE]
SAME_RTOL = {"float64": 1e-12, "float32": 1e-5}[TRACE_DTYPE]  # two traces in the same precision


def _model(family: str, *, n_layers: int, n_heads: int, kv_ratio: int, d_head: int, seed: int) -> Model:
    n_kv = max(1, n_heads // kv_ratio)
    return tiny_model(family, seed=seed, dtype=F64, init_scale=5.0, n_layers=n_layers, d_model=n_heads * d_head,
                      n_heads=n_heads, n_kv_heads=n_kv, d_mlp=3 * n_heads * d_head, d_vocab=40, n_ctx=16)


def _transcoder(model: Model, ids: torch.Tensor, *, kind: str, activation: str, skip: bool, d_features: int,
                output_site: str, seed: int):
    """A random transcoder with every parameter nonzero and about a third of its features on."""
    torch.manual_seed(seed)
    cfg = TranscoderConfig(kind=kind, n_layers=model.n_layers, d_model=model.d_model, d_features=d_features,
                           activation=activation, k=max(2, d_features // 3), skip=skip, model_name=model.name,
                           output_site=output_site)
    tc = build_transcoder(cfg).double().eval()
    with torch.no_grad():
        tc.b_enc.normal_(0, 0.1)
        tc.b_dec.normal_()
        if tc.W_skip is not None:
            tc.W_skip.normal_(0, 1 / math.sqrt(model.d_model))
        tc.input_scale.uniform_(0.5, 2.0)
        tc.output_scale.uniform_(0.5, 2.0)
        # Shift each layer's encoder bias so the JumpReLU threshold, 1, falls midway between two
        # pre-activations near their 2/3 quantile: about a third of the features fire, and none sits
        # on the threshold, where float32 rounding (make gpu-check) would decide it by chance.
        _, rec = model.record(ids, [("mlp_in", l) for l in range(model.n_layers)])
        tc.log_threshold.zero_()
        for l in range(model.n_layers):
            pre = tc.pre_acts(rec[("mlp_in", l)], l).flatten().sort().values
            i = min(max(1, round(len(pre) * 2 / 3)), len(pre) - 1)
            tc.b_enc[l] += 1.0 - (pre[i - 1] + pre[i]) / 2
    return tc


def _targets(graph, model: Model, run, tc) -> torch.Tensor:
    """``[B, n_targets]`` the graph's targets' values in each row of a replacement run."""
    kinds = graph.nodes["kind"]
    f = np.flatnonzero(kinds == "feature")
    lg = np.flatnonzero(kinds == "logit")
    layer, pos, feat = (torch.as_tensor(graph.nodes[k][f].astype(np.int64)) for k in ("layer", "position", "feature"))
    feature_values = run.pre_acts[:, pos, layer, feat]
    tok = torch.as_tensor(graph.nodes["token_id"][lg])
    W_U = model.W_U.detach()
    u = W_U[tok] - W_U.mean(0)
    logit_values = run.final[:, -1] @ u.T
    return torch.cat([feature_values, logit_values], dim=1)


def _ablations(graph, mlps, frozen):
    """Batch rows: base, one per source zeroed (graph column order), then every source zeroed.

    Errors before feature_start are constants of the graph (early_mlp="constant"), not sources:
    they keep their values in every row."""
    kinds = graph.nodes["kind"]
    held = graph.metadata["feature_start"] if graph.metadata["early_mlp"] == "constant" else 0
    f = np.flatnonzero(kinds == "feature")
    e = np.flatnonzero((kinds == "error") & (graph.nodes["position"] >= held))
    t = np.flatnonzero(kinds == "token")
    n_src = len(f) + len(e) + len(t)
    B = n_src + 2
    acts = mlps.acts[None].repeat(B, 1, 1, 1)
    errors = mlps.errors[None].repeat(B, 1, 1, 1)
    embed = frozen.embed[None].repeat(B, 1, 1)
    row = 1
    for i in f:
        acts[row, graph.nodes["position"][i], graph.nodes["layer"][i], graph.nodes["feature"][i]] = 0
        row += 1
    for i in e:
        errors[row, graph.nodes["layer"][i], graph.nodes["position"][i]] = 0
        row += 1
    for i in t:
        embed[row, graph.nodes["position"][i]] = 0
        row += 1
    # Zeroing every active feature is zeroing all activations (inactive ones are zero already).
    acts[-1], errors[-1, :, held:], embed[-1] = 0, 0, 0
    return acts, errors, embed, np.concatenate([f, e, t])


def _check_graph_exact(model: Model, tc, ids: torch.Tensor, graph) -> None:
    _check_graph_exact_at(model, tc, ids, graph, graph.metadata["feature_start"])


def _check_graph_exact_at(model: Model, tc, ids: torch.Tensor, graph, feature_start: int) -> None:
    frozen = freeze(model, ids, input_site=tc.cfg.input_site, output_site=tc.cfg.output_site)
    mlps = replace_mlps(tc, frozen, device=CPU, dtype=F64, feature_start=feature_start)
    acts, errors, embed, sources = _ablations(graph, mlps, frozen)
    run = run_replacement(model, frozen, tc, mlps, acts=acts, errors=errors, embed=embed)
    values = _targets(graph, model, run, tc)                                 # [B, n_targets]
    base, each, none = values[0], values[1:-1], values[-1]
    measured = (base[None, :] - each).T.numpy()                               # [n_targets, n_sources]

    kinds = graph.nodes["kind"]
    target_rows = np.flatnonzero(np.isin(kinds, ("feature", "logit")))
    dense = graph.adjacency.toarray()
    edges = dense[np.ix_(target_rows, sources)]
    scale = np.abs(measured).sum(1) + np.abs(none.numpy()) + np.abs(base.numpy())   # size of each target's terms
    tol = TOL * scale[:, None]
    assert np.all(np.abs(edges - measured) <= tol), f"max edge error {np.abs(edges - measured).max():.2e}"
    # Nothing else has edges: no rows for errors and tokens, no columns for logits, none out of the
    # errors the graph holds as constants.
    assert not dense[np.isin(kinds, ("error", "token"))].any()
    held = graph.metadata["feature_start"] if graph.metadata["early_mlp"] == "constant" else 0
    assert not dense[:, (kinds == "error") & (graph.nodes["position"] < held)].any()
    assert not dense[:, kinds == "logit"].any()
    # Each target: incoming edges + constants = its pre-activation.
    bias = graph.nodes["bias"][target_rows]
    np.testing.assert_array_less(np.abs(bias - none.numpy()), TOL * scale + 1e-300)
    np.testing.assert_array_less(np.abs(edges.sum(1) + bias - base.numpy()), TOL * scale + 1e-300)
    np.testing.assert_array_less(np.abs(graph.nodes["pre_activation"][target_rows] - base.numpy()), TOL * scale)
    np.testing.assert_array_equal(graph.nodes["excluded_input"][target_rows], 0.0)
    # Feature activations in the graph are the transcoder's.
    f = kinds == "feature"
    assert np.all(graph.nodes["activation"][f] != 0)
    assert graph.metadata["identity_error"] < TOL
    # Head loadings (the top logit's edges by default): each loaded edge is its loadings plus its direct part.
    table = graph.head_table
    if table is not None and len(table.values):
        index = {n: i for i, n in enumerate(graph.node_ids)}
        t = np.array([index[x] for x in table.targets])
        weight = dense[t, np.array([index[x] for x in table.sources])]
        assert np.all(np.abs(table.values.sum(1) + table.direct - weight) <= TOL * np.abs(dense).sum(1)[t])


SHAPES = {
    "kind": st.sampled_from(["plt", "clt"]),
    "activation": st.sampled_from(["jumprelu", "topk"]),
    "skip": st.booleans(),
    "n_layers": st.integers(1, 3),
    "n_heads": st.sampled_from([1, 2, 4]),
    "kv_ratio": st.sampled_from([1, 2]),
    "d_head": st.sampled_from([2, 4, 8]),
    "d_features": st.integers(4, 24),
    "n_pos": st.integers(2, 6),  # the first position has no features (circuits.replacement.slots)
    "output_site": st.sampled_from(["mlp_resid", "mlp_out"]),
    "batch_size": st.integers(1, 64),
    "seed": st.integers(0, 2**16),
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**SHAPES)
# Whatever hypothesis draws, every family sees grouped-query attention with a skip CLT writing
# before Gemma's post-norm, and a PLT with TopK.
@example(kind="clt", activation="jumprelu", skip=True, n_layers=3, n_heads=4, kv_ratio=2, d_head=4, d_features=12,
         n_pos=5, output_site="mlp_out", batch_size=7, seed=11)
@example(kind="plt", activation="topk", skip=False, n_layers=2, n_heads=4, kv_ratio=2, d_head=8, d_features=20,
         n_pos=6, output_site="mlp_resid", batch_size=64, seed=5)
def test_edges_equal_direct_interventions(family: str, kind: str, activation: str, skip: bool, n_layers: int,
                                          n_heads: int, kv_ratio: int, d_head: int, d_features: int, n_pos: int,
                                          output_site: str, batch_size: int, seed: int) -> None:
    model = _model(family, n_layers=n_layers, n_heads=n_heads, kv_ratio=kv_ratio, d_head=d_head, seed=seed)
    ids = torch.randint(1, 40, (1, n_pos), generator=torch.Generator().manual_seed(seed))
    tc = _transcoder(model, ids, kind=kind, activation=activation, skip=skip, d_features=d_features,
                     output_site=output_site, seed=seed)
    graph = trace(ids, model, tc, dtype=TRACE_DTYPE, device=TRACE_DEVICE, batch_size=batch_size, max_logits=4,
                  logit_prob=0.99)
    assert graph.n_features > 0
    _check_graph_exact(model, tc, ids, graph)


@pytest.mark.parametrize("early_mlp", ["constant", "error"])
@pytest.mark.parametrize("feature_start", [0, 1, 2])
def test_position_policies_are_exact(feature_start: int, early_mlp: str) -> None:
    """Every position policy gives exact edges; before feature_start there are no features, and the MLP
    output there is either each target's constant or error nodes with edges of their own."""
    model = _model("llama", n_layers=2, n_heads=4, kv_ratio=2, d_head=4, seed=4)
    ids = torch.randint(1, 40, (1, 5), generator=torch.Generator().manual_seed(4))
    tc = _transcoder(model, ids, kind="clt", activation="jumprelu", skip=True, d_features=12,
                     output_site="mlp_resid", seed=4)
    graph = trace(ids, model, tc, dtype=TRACE_DTYPE, device=TRACE_DEVICE, max_logits=4, logit_prob=0.99,
                  feature_start=feature_start, early_mlp=early_mlp)
    kinds, position = graph.nodes["kind"], graph.nodes["position"]
    assert graph.n_features > 0 and (position[kinds == "feature"] >= feature_start).all()
    early = (kinds == "error") & (position < feature_start)
    assert graph.adjacency.toarray()[:, early].any() == (early_mlp == "error" and feature_start > 0)
    _check_graph_exact_at(model, tc, ids, graph, feature_start)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_replacement_model_reproduces_the_logits(family: str, kind: str) -> None:
    """Frozen norms and patterns, transcoders in the MLP slots, errors added: the original logits."""
    model = _model(family, n_layers=3, n_heads=4, kv_ratio=2, d_head=4, seed=1)
    ids = torch.randint(1, 40, (1, 7), generator=torch.Generator().manual_seed(1))
    tc = _transcoder(model, ids, kind=kind, activation="jumprelu", skip=True, d_features=16,
                     output_site="mlp_resid", seed=1)
    # Llama and Qwen norms round in float32 even in float64 models; a decoder bias and skip that
    # dwarf the residual stream (errors cancel them) would blow that rounding up. Keep them modest.
    with torch.no_grad():
        tc.b_dec.mul_(0.1)
        tc.W_skip.mul_(0.1)
    frozen = freeze(model, ids)
    mlps = replace_mlps(tc, frozen, device=CPU, dtype=F64)
    original = model.logits(ids)                                              # [P, d_vocab], no hooks
    # Compare at the size of the terms each logit sums, not of the logit, which may cancel.
    scale = (model.W_U.detach().abs() @ frozen.final.abs().T).T.max()
    for acts in (None, mlps.acts[None]):  # features recomputed with frozen masks, or held at their values
        run = run_replacement(model, frozen, tc, mlps, acts=acts)
        assert (run.logits[0] - original).abs().max() <= 1e-6 * scale
    # Without the errors it is a different model: the check has teeth.
    run = run_replacement(model, frozen, tc, mlps, errors=torch.zeros_like(mlps.errors)[None])
    assert (run.logits[0] - original).abs().max() > 1e-3 * scale


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_capped_graph_keeps_exact_rows(family: str) -> None:
    """With max_feature_nodes, kept rows equal the full graph's, and left-out input is accounted for."""
    model = _model(family, n_layers=3, n_heads=2, kv_ratio=1, d_head=8, seed=3)
    ids = torch.randint(1, 40, (1, 6), generator=torch.Generator().manual_seed(3))
    tc = _transcoder(model, ids, kind="clt", activation="jumprelu", skip=True, d_features=12,
                     output_site="mlp_resid", seed=3)
    full = trace(ids, model, tc, dtype=TRACE_DTYPE, device=TRACE_DEVICE, batch_size=5)
    cap = full.n_features // 3
    small = trace(ids, model, tc, dtype=TRACE_DTYPE, device=TRACE_DEVICE, batch_size=5, max_feature_nodes=cap)
    assert small.n_features == cap and small.metadata["n_active_features"] == full.n_features
    # Map each kept node to its node in the full graph.
    full_index = {nid: i for i, nid in enumerate(full.node_ids)}
    where = np.array([full_index[nid] for nid in small.node_ids])
    sub = full.adjacency.toarray()[np.ix_(where, where)]
    small_dense = small.adjacency.toarray()
    rows = np.flatnonzero(np.isin(small.nodes["kind"], ("feature", "logit")))
    np.testing.assert_allclose(small_dense[rows], sub[rows], rtol=SAME_RTOL, atol=SAME_RTOL)
    left_out = full.adjacency.toarray()[where[rows]].sum(1) - sub[rows].sum(1)
    np.testing.assert_allclose(small.nodes["excluded_input"][rows], left_out, rtol=1e3 * SAME_RTOL, atol=1e3 * SAME_RTOL)
    identity = small_dense[rows].sum(1) + small.nodes["bias"][rows] + small.nodes["excluded_input"][rows]
    np.testing.assert_allclose(identity, small.nodes["pre_activation"][rows], rtol=TOL, atol=1e3 * SAME_RTOL)
    # The features kept are the ones most influential through the logit rows first.
    assert np.isin(small.nodes["kind"], ("logit",)).sum() == full.count("logit")


@pytest.mark.real_model
def test_real_model_edges_match_interventions(default_model) -> None:
    """SmolLM2 in float32 with a random CLT: sampled edges equal direct interventions (to float32 rounding)."""
    model = default_model
    ids = model.tokenize("When Mary and John went to the store, John gave a drink to")
    torch.manual_seed(0)
    cfg = TranscoderConfig(kind="clt", n_layers=model.n_layers, d_model=model.d_model, d_features=128,
                           activation="topk", k=4, skip=True, model_name=model.name)
    tc = build_transcoder(cfg).eval()
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.01)
    graph = trace(ids, model, tc, max_feature_nodes=200, device="cpu")
    assert graph.metadata["identity_error"] < 1e-4
    frozen = freeze(model, ids)
    mlps = replace_mlps(tc, frozen, device=CPU, dtype=torch.float32)
    kinds = graph.nodes["kind"]
    rng = np.random.default_rng(0)
    sources = np.concatenate([rng.choice(np.flatnonzero(kinds == k), 4, replace=False)
                              for k in ("feature", "error", "token")])
    B = len(sources) + 1
    acts, errors = mlps.acts[None].repeat(B, 1, 1, 1), mlps.errors[None].repeat(B, 1, 1, 1)
    embed = frozen.embed[None].repeat(B, 1, 1)
    for row, i in enumerate(sources, 1):
        layer, pos, feat = graph.nodes["layer"][i], graph.nodes["position"][i], graph.nodes["feature"][i]
        if kinds[i] == "feature":
            acts[row, pos, layer, feat] = 0
        elif kinds[i] == "error":
            errors[row, layer, pos] = 0
        else:
            embed[row, pos] = 0
    run = run_replacement(model, frozen, tc, mlps, acts=acts, errors=errors, embed=embed)
    values = _targets(graph, model, run, tc).double().numpy()
    measured = (values[0][None] - values[1:]).T
    rows = np.flatnonzero(np.isin(kinds, ("feature", "logit")))
    edges = graph.adjacency.toarray()[np.ix_(rows, sources)]
    scale = np.abs(values[0]) + np.abs(measured).sum(1)
    assert np.all(np.abs(edges - measured) <= 1e-5 * scale[:, None] + 1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_chosen_targets_equal_direct_interventions(family: str) -> None:
    """trace(targets=...): a token, a logit difference and a residual direction, each node's incoming edges
    equal the change of its value when each source is zeroed (the direction read off the final norm's input)."""
    from circuits.attribution.targets import Direction

    model = _model(family, n_layers=2, n_heads=4, kv_ratio=2, d_head=4, seed=7)
    ids = torch.randint(1, 40, (1, 5), generator=torch.Generator().manual_seed(7))
    tc = _transcoder(model, ids, kind="plt", activation="jumprelu", skip=True, d_features=12,
                     output_site="mlp_out", seed=7)
    probe = torch.randn(model.d_model, generator=torch.Generator().manual_seed(7), dtype=F64)
    graph = trace(ids, model, tc, dtype=TRACE_DTYPE, device=TRACE_DEVICE, head_loadings="none",
                  targets=["t3", ("t5", 9), Direction("probe", probe.numpy())])
    lg = graph.span("logit")
    assert list(graph.nodes["token_id"][lg][1:]) == [-3, -4] and graph.nodes["token"][lg][2] == "probe"
    frozen = freeze(model, ids, input_site=tc.cfg.input_site, output_site=tc.cfg.output_site)
    mlps = replace_mlps(tc, frozen, device=CPU, dtype=F64, feature_start=graph.metadata["feature_start"])
    acts, errors, embed, sources = _ablations(graph, mlps, frozen)
    seen = []
    hook = model.norm("ln_final").register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        run = run_replacement(model, frozen, tc, mlps, acts=acts, errors=errors, embed=embed)
    finally:
        hook.remove()
    W_U = model.W_U.detach()
    t3, t5 = model.token_id("t3"), model.token_id("t5")
    values = torch.stack([run.final[:, -1] @ (W_U[t3] - W_U.mean(0)), run.final[:, -1] @ (W_U[t5] - W_U[9]),
                          seen[-1][:, -1] @ probe], dim=1)                          # [B, 3]
    base, each, none = values[0], values[1:-1], values[-1]
    measured = (base[None, :] - each).T.numpy()
    edges = graph.adjacency.toarray()[np.ix_(np.arange(lg.start, lg.stop), sources)]
    scale = np.abs(measured).sum(1) + np.abs(none.numpy()) + np.abs(base.numpy())
    assert np.all(np.abs(edges - measured) <= TOL * scale[:, None]), np.abs(edges - measured).max()
    np.testing.assert_array_less(np.abs(graph.nodes["bias"][lg] - none.numpy()), TOL * scale)
    np.testing.assert_array_less(np.abs(graph.nodes["pre_activation"][lg] - base.numpy()), TOL * scale)
    assert graph.metadata["identity_error"] < TOL
