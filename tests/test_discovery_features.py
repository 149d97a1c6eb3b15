"""Feature-level discovery (EAP, EAP-IG, ACDC over replacement-model nodes) on planted and tiny models.

The planted model is a two-layer GPT-2 with ReLU MLPs, no attention, and a transcoder that *is*
its MLPs (so every error is zero). At the last position, token 3 (clean) versus 2 or 7
(corrupted) moves exactly one chain to the answer logit:

    T@3 (the token)  →  F0.0@3 (reads token 3)  →  F1.0@3 (reads F0.0's write)  →  logits

Distractors: F0.1 fires on token 3 too but writes where nothing reads (a dead end); F0.2 and
F1.1 read a constant and write to the answer direction (active, but equal on both prompts).
"""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from _threads import one_thread  # noqa: F401
from transformers import AutoModelForCausalLM, GPT2Config

from circuits.discovery import FeatureCircuit, FeaturePatcher, discover, discover_features
from circuits.discovery.features.scores import LOGITS, edge_scores, node_scores
from circuits.models.adapter import Model
from circuits.models.tiny import tiny_model, tiny_tokenizer
from circuits.tasks.task import Task, logit_diff
from transcoders import TranscoderConfig, build_transcoder

V, P, D, F = 8, 4, 64, 8
TOK, H, G, ANS, ANCHOR = 0, 2 * V, 2 * V + 2, 2 * V + 4, 2 * V + 6
A = 1000.0  # the anchor fixes every LayerNorm's scale, so the norms are (almost) the identity
PLANTED = {"T@3", "F0.0@3", "F1.0@3"}
PLANTED_EDGES = {("T@3", "F0.0@3"), ("F0.0@3", "F1.0@3"), ("F1.0@3", "logits")}


def _pair(w: torch.Tensor, row: int, dim: int, value: float) -> None:
    """Write ``value`` to the ± pair at ``dim`` (so the residual keeps mean zero for LayerNorm)."""
    w[row, dim], w[row, dim + 1] = value, -value


def planted_model() -> tuple[Model, torch.nn.Module]:
    cfg = GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_inner=F, n_positions=16,
                     activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     tie_word_embeddings=False, layer_norm_epsilon=1e-9, bos_token_id=0, eos_token_id=0)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float64)
    t = hf.transformer
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        sigma = A * (2 / D) ** 0.5
        for ln in [t.h[0].ln_1, t.h[0].ln_2, t.h[1].ln_1, t.h[1].ln_2, t.ln_f]:
            ln.weight.fill_(sigma)
        for v in range(V):
            t.wte.weight[v, TOK + v], t.wte.weight[v, TOK + V + v] = 1.0, -1.0
            t.wte.weight[v, ANCHOR], t.wte.weight[v, ANCHOR + 1] = A, -A
        fc0, out0 = t.h[0].mlp.c_fc.weight, t.h[0].mlp.c_proj.weight   # [D, F], [F, D]
        fc0[TOK + 3, 0] = 1.0
        _pair(out0, 0, H, 2.0)                 # F0.0: token 3 → H
        fc0[TOK + 3, 1] = 1.0
        _pair(out0, 1, G, 1.0)                 # F0.1: token 3 → G, read by nobody
        fc0[ANCHOR, 2] = 1.0 / A
        _pair(out0, 2, ANS, 0.5)               # F0.2: constant → answer
        fc1, out1 = t.h[1].mlp.c_fc.weight, t.h[1].mlp.c_proj.weight
        fc1[H, 0] = 1.0
        _pair(out1, 0, ANS, 1.0)               # F1.0: H → answer
        fc1[ANCHOR, 1] = 1.0 / A
        _pair(out1, 1, ANS, -0.3)              # F1.1: constant → answer
        fc1[TOK + 5, 2] = 1.0                  # F1.2: token 5, never shown
        _pair(out1, 2, ANS, 1.0)
        hf.lm_head.weight[0, ANS], hf.lm_head.weight[0, ANS + 1] = 0.5, -0.5   # answer token 0
        hf.lm_head.weight[1, ANS], hf.lm_head.weight[1, ANS + 1] = -0.5, 0.5   # wrong token 1
    model = Model(hf.eval(), tiny_tokenizer(V), "planted-features")
    tc = build_transcoder(TranscoderConfig(kind="plt", n_layers=2, d_model=D, d_features=F, activation="relu")).double()
    with torch.no_grad():
        for l in range(2):
            mlp = t.h[l].mlp
            tc.W_enc[l].copy_(mlp.c_fc.weight)
            tc.b_enc[l].copy_(mlp.c_fc.bias)
            tc.W_dec[l].copy_(mlp.c_proj.weight)
            tc.b_dec[l].copy_(mlp.c_proj.bias)
    return model, tc


def planted_task(n: int = 6) -> Task:
    g = torch.Generator().manual_seed(0)
    fill = torch.tensor([4, 6, 7])
    clean = fill[torch.randint(0, 3, (n, P), generator=g)]
    clean[:, -1] = 3
    corrupted = clean.clone()
    corrupted[:, -1] = torch.tensor([2, 7]).repeat(n)[:n]
    return Task("planted", clean, corrupted, torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.long),
                torch.tensor([P - 1]), logit_diff)


@pytest.fixture(scope="module")
def planted():
    model, tc = planted_model()
    task = planted_task()
    return model, tc, task, FeaturePatcher(model, task, tc, batch_size=4)


def _names(c: FeatureCircuit) -> set[str]:
    return set(c.node_names)


def _edges(c: FeatureCircuit) -> set[tuple[str, str]]:
    return {(e.src, e.dst) for e in c.edges}


def test_planted_replacement_model_is_the_model(planted):
    model, _, task, p = planted
    with torch.no_grad():
        m = float(task.metric(model.hf(task.clean).logits))
    assert p.m_full == pytest.approx(m, abs=1e-9)
    assert p.m_full == pytest.approx(4.4, abs=1e-3) and p.m_empty == pytest.approx(0.4, abs=1e-3)
    # The transcoder is the MLP, except before feature_start, where the position policy keeps the MLP's
    # output as the error node (no features at the first token).
    assert p.clean.errors[:, :, p.feature_start:].abs().max() < 1e-9
    # Nothing ablated is the clean run; everything ablated is the corrupted run.
    both = torch.stack([p.all_kept(), ~p.all_kept()])
    assert p.evaluate(both).tolist() == pytest.approx([p.m_full, p.m_empty], abs=1e-9)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_attribution_recovers_exactly_the_planted_features(planted, method):
    model, tc, task, p = planted
    c = discover_features(model, task, tc, method=method, patcher=p, progress=False)
    assert _names(c) == PLANTED
    assert _edges(c) == PLANTED_EDGES
    assert c.faithfulness == pytest.approx(1.0, abs=1e-6)
    for n in c.nodes:  # piecewise linear along the chain: first order is exact, and so is the measured effect
        assert n.score == pytest.approx(p.m_empty - p.m_full, rel=1e-4)
        assert n.effect == pytest.approx(p.m_empty - p.m_full, rel=1e-4)
    for e in c.edges:  # removing any one edge of the chain breaks it
        assert e.weight == pytest.approx(p.m_empty - p.m_full, rel=1e-4)
        assert e.effect == pytest.approx(p.m_empty - p.m_full, rel=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_acdc_recovers_exactly_the_planted_features(planted, batch):
    model, tc, task, p = planted
    c = discover_features(model, task, tc, method="acdc", candidates=40, batch=batch, patcher=p, progress=False)
    assert _names(c) == PLANTED
    assert _edges(c) == PLANTED_EDGES
    assert c.faithfulness == pytest.approx(1.0, abs=1e-6)
    assert c.info["nodes_tested"] == 40
    for n in c.nodes:
        assert abs(n.effect) >= c.info["tau"]
    for e in c.edges:
        assert e.effect == pytest.approx(p.m_empty - p.m_full, rel=1e-4)
    # The metric ACDC tracked is the circuit's, evaluated afresh.
    keep = torch.zeros(p.index.n_nodes, dtype=torch.bool)
    for layer, pos, f in c.features:
        keep[p.index.feature(layer, pos, f)] = True
    keep[p.index.embed(3)] = True
    assert float(p.evaluate(keep[None])[0]) == pytest.approx(c.metric_circuit, abs=1e-9)


def test_networkx_export(planted):
    model, tc, task, p = planted
    c = discover_features(model, task, tc, method="eap", patcher=p, progress=False)
    g = c.to_networkx()
    assert isinstance(g, nx.DiGraph)
    a = g.nodes["F0.0@3"]
    assert (a["kind"], a["layer"], a["position"], a["feature"]) == ("feature", 0, 3, 0)
    assert a["delta"] == pytest.approx(-1.0, rel=1e-3)  # fires on 3, not on 2 or 7
    assert g.nodes["T@3"]["kind"] == "embedding" and g.nodes["logits"]["kind"] == "logits"
    assert g.graph["faithfulness"] == pytest.approx(1.0, abs=1e-6)
    assert set(g.edges) == PLANTED_EDGES
    assert all("weight" in g.edges[e] for e in g.edges)


def test_labels_reach_the_nodes(planted):
    model, tc, task, p = planted
    c = discover_features(model, task, tc, method="eap", patcher=p, labels={(0, 0): "token 3", (1, 0): "H"},
                          edges=False, measure=False, progress=False)
    labels = {n.name: n.label for n in c.nodes}
    assert labels["F0.0@3"] == "token 3" and labels["F1.0@3"] == "H" and labels["T@3"] == "t2"  # id 3 is "t2"
    assert c.edges == [] and all(n.effect != n.effect for n in c.nodes)  # NaN: not measured


def test_save_load_round_trip(planted, tmp_path):
    model, tc, task, p = planted
    c = discover_features(model, task, tc, method="eap", patcher=p, progress=False)
    back = FeatureCircuit.load(c.save(tmp_path / "c.json"))
    assert back.nodes == c.nodes and back.edges == c.edges
    assert (back.faithfulness, back.metric_circuit, back.method, back.index) == (c.faithfulness, c.metric_circuit,
                                                                                   c.method, c.index)
    top = c.scores.abs().argsort(descending=True)[:50]
    assert torch.equal(back.scores[top], c.scores[top])
    assert back.info["tau"] == c.info["tau"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="FeatureCircuit.save"):
        FeatureCircuit.load(tmp_path / "bad.json")


def test_discover_dispatches_features(planted):
    model, tc, task, _ = planted
    c = discover(model, task, granularity="features", method="eap", transcoders=tc, progress=False)
    assert isinstance(c, FeatureCircuit) and _names(c) == PLANTED
    # Feature discovery takes every ablation (circuits.ablation); the circuit says which it used.
    zero = discover(model, task, granularity="features", method="eap", transcoders=tc, ablation="zero", progress=False)
    assert c.info["ablation"] == "resample" and zero.info["ablation"] == "zero"


# --- first order on a tiny random model -------------------------------------------------------


@pytest.fixture(scope="module", params=["plt", "clt"])
def tiny(request):
    model = tiny_model("gpt2", dtype=torch.float64, init_scale=3.0)  # LayerNorm computes in float64
    tc = build_transcoder(TranscoderConfig(kind=request.param, n_layers=2, d_model=32, d_features=16,
                                           activation="relu", skip=True))
    torch.manual_seed(1)
    with torch.no_grad():
        tc.W_enc.normal_(0, 0.5)
        tc.b_enc.normal_(0, 0.1)
        for w in [tc.W_dec] if request.param == "plt" else tc.W_dec:
            w.normal_(0, 0.3)
        tc.W_skip.normal_(0, 0.1)
    g = torch.Generator().manual_seed(2)
    n, n_pos = 3, 5
    clean = torch.randint(1, 64, (n, n_pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(1, 64, (n,), generator=g)
    corrupted[:, 3] = torch.randint(1, 64, (n,), generator=g)
    task = Task("random", clean, corrupted, torch.randint(1, 64, (n, 1), generator=g),
                torch.randint(1, 64, (n, 1), generator=g), torch.tensor([n_pos - 1]), logit_diff)
    return FeaturePatcher(model, task, tc.double(), batch_size=2)


def test_tiny_replacement_model_is_the_model(tiny):
    p = tiny
    assert p.clean.errors.abs().max() > 1e-3  # a random transcoder: errors matter
    both = torch.stack([p.all_kept(), ~p.all_kept()])
    assert p.evaluate(both).tolist() == pytest.approx([p.m_full, p.m_empty], abs=1e-9)
    assert abs(p.m_full - p.m_empty) > 1e-3


def test_resumed_passes_match_full_ones(tiny):
    p = tiny
    if p.tc.decoder_vectors(0).shape[1] > 1:
        with pytest.raises(ValueError, match="CLT"):
            p.evaluate(p.all_kept()[None], base=[], start_layer=1)
        return
    g = torch.Generator().manual_seed(3)
    start = torch.rand(p.index.n_nodes, generator=g) < 0.5
    value, base = p.base_run(start)
    assert value == pytest.approx(float(p.evaluate(start[None])[0]), abs=1e-12)
    # Circuits that agree with the start below layer 1 (layer-1 features and errors changed).
    layers = p.index.layers()
    variants = start[None].repeat(3, 1)
    variants[:, layers == 1] = torch.rand(3, int((layers == 1).sum()), generator=g) < 0.5
    resumed = p.evaluate(variants, base=base, start_layer=1)
    assert resumed.tolist() == pytest.approx(p.evaluate(variants).tolist(), abs=1e-12)
    # The replay is real: a change below the start layer is not seen.
    below = start.clone()
    below[layers == 0] = ~below[layers == 0]
    assert float(p.evaluate(below[None], base=base, start_layer=1)[0]) == pytest.approx(value, abs=1e-12)
    assert float(p.evaluate(below[None])[0]) != pytest.approx(value, abs=1e-6)


def test_eap_scores_are_the_first_order_patching_effects(tiny):
    p = tiny
    scores, _ = node_scores(p, "eap")
    # The strongest nodes of each kind: moving one a fraction eps of the way to its corrupted value
    # changes the metric by eps * score, to first order.
    idx = p.index
    e, f, r = idx.split(torch.arange(idx.n_nodes))
    picks = []
    for group, k in ((e, 2), (f.flatten(), 4), (r.flatten(), 3)):  # two positions differ
        picks += group[scores[group].abs().argsort(descending=True)[:k]].tolist()
    assert all(abs(float(scores[i])) > 1e-4 for i in picks)
    eps = 1e-5
    keep = p.all_kept()[None].repeat(len(picks), 1)
    keep[torch.arange(len(picks)), torch.tensor(picks)] = False
    central = (p.evaluate(keep, strength=eps) - p.evaluate(keep, strength=-eps)) / (2 * eps)
    assert central.tolist() == pytest.approx(scores[picks].tolist(), rel=1e-4, abs=1e-8)


def test_eap_ig_tends_to_eap_with_one_step_and_sums_to_the_change(tiny):
    p = tiny
    # With many steps, the embedding scores (IG at the input) add up to m(∅) − m(M): IG's completeness.
    scores, _ = node_scores(p, "eap-ig", steps=32)
    total = float(p.index.split(scores)[0].sum())
    assert total == pytest.approx(p.m_empty - p.m_full, rel=2e-2)


def test_edge_scores_follow_the_direct_paths(tiny):
    p = tiny
    scores, grads = node_scores(p, "eap")
    idx = p.index
    # Into the logits, the edges from every node of the last layer are the node scores themselves
    # (nothing lies between a last-layer node and the logits).
    last = [idx.feature(1, 4, f) for f in range(16)] + [idx.error(1, 4)]
    edges = edge_scores(p, last, grads)
    for u in last:
        assert edges[(u, LOGITS)] == pytest.approx(float(scores[u]), rel=1e-6, abs=1e-9)


def test_edge_effects_are_measured_and_match_scores_to_first_order(tiny):
    from circuits.discovery.features.edges import measure_edges

    p = tiny
    scores, grads = node_scores(p, "eap")
    idx = p.index
    e, f, r = idx.split(scores.abs())
    # A few strong nodes of each kind, so there are edges feature→feature, error→feature,
    # embedding→error, ... and into the logits.
    strongest = [idx.feature(layer, pos, int(f[layer, pos].argmax())) for layer, pos in ((0, 1), (0, 3), (1, 4))]
    nodes = [idx.embed(1), idx.embed(3), idx.error(0, 1), idx.error(0, 4), idx.error(1, 4), *strongest]
    edges = edge_scores(p, nodes, grads)
    pairs = [pair for pair, w in edges.items() if abs(w) > 1e-4]
    assert len(pairs) >= 10 and any(d != LOGITS and idx.describe(d)[0] == "feature" for _, d in pairs)
    full = p.all_kept()
    eps = 1e-5
    central = (measure_edges(p, full, pairs, strength=eps) - measure_edges(p, full, pairs, strength=-eps)) / (2 * eps)
    assert central.tolist() == pytest.approx([edges[e] for e in pairs], rel=1e-4, abs=1e-8)


def test_transcoders_that_do_not_fit_are_refused(planted):
    model, _, task, _ = planted
    wrong = build_transcoder(TranscoderConfig(kind="plt", n_layers=3, d_model=D, d_features=F))
    with pytest.raises(ValueError, match="layers"):
        discover(model, task, granularity="features", transcoders=wrong, progress=False)


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_every_node_ablated_is_the_model_with_ablated_values(ablation):
    """Mean ablation is per position within the task's template groups (circuits.ablation), as for
    heads; zero is zero. Ablating every node must equal the real model run with its embeddings and
    MLP writes replaced by those values, computed here without the patcher: the planted transcoder
    is exact, so a write is linear in its features and error."""
    import dataclasses

    from circuits.hooks import hooked, write_hook

    model, tc = planted_model()
    task = dataclasses.replace(planted_task(), groups=torch.tensor([0, 1] * 3))
    p = FeaturePatcher(model, task, tc, ablation=ablation, batch_size=4)
    sites = [("resid_pre", 0)] + [("mlp_resid", layer) for layer in range(2)]
    recorded = model.record_batch(task.corrupted, sites, stop_early=False)

    def ablated(x: torch.Tensor) -> torch.Tensor:
        if ablation == "zero":
            return torch.zeros_like(x)
        out = torch.empty_like(x)
        for g in (0, 1):
            out[task.groups == g] = x[task.groups == g].mean(0)   # per position: only the prompt axis averages
        return out

    values = {site: ablated(x) for site, x in recorded.items()}
    hooks = [write_hook(model.module(s, layer), model.spec.location(s, layer), lambda _, v=values[(s, layer)]: v)
             for s, layer in sites]
    with torch.no_grad(), hooked(hooks):
        expected = float(task.metric(model.hf(task.clean).logits))
    assert p.m_empty == pytest.approx(expected, abs=1e-9)
    assert abs(p.m_empty - p.m_full) > 0.1   # the ablation matters, so the check has teeth
    with pytest.raises(ValueError, match="the patcher fixes ablation"):
        discover_features(model, task, tc, method="eap", patcher=p, ablation="resample", progress=False)
    c = discover_features(model, task, tc, method="eap", patcher=p, ablation=ablation, progress=False)
    assert "F1.0@3" in set(c.node_names)   # the chain still carries the difference
