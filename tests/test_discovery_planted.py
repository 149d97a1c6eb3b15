"""Tier 2: discovery on hand-built models whose circuit is known by construction (tests/planted.py)."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from _threads import one_thread  # noqa: F401
from planted import PLANTED_EDGES, SECOND_HEAD_EDGES, V, planted_induction_model

from circuits.discovery import acdc, attribution_circuit, discover, measure_effects
from circuits.patching import EdgePatcher
from circuits.tasks import induction


def _task(model, n: int = 8):
    return induction.dataset(model.tokenizer, n=n, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)


@pytest.fixture(scope="module")
def planted():
    model = planted_induction_model()
    return model, EdgePatcher(model, _task(model))


@pytest.fixture(scope="module")
def planted_two_heads():
    model = planted_induction_model(second_head=0.5)
    return model, EdgePatcher(model, _task(model))


def _names(circuit) -> set[str]:
    return {e["name"] for e in circuit.edges}


def test_planted_model_does_induction(planted):
    _, p = planted
    assert p.m_full > -1.5  # log p(correct) on the second copy
    assert p.m_empty < -3.0  # about log(1/23): nothing to copy from
    assert p.m_full - p.m_empty > 1.5


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("order", ["topological", "scores"])
def test_acdc_recovers_exactly_the_planted_edges(planted, batch, order):
    _, p = planted
    scores = p.edge_scores("eap") if order == "scores" else None
    c = acdc(p, tau=0.05, scores=scores, order=order, batch=batch, progress=False)
    assert _names(c) == set(PLANTED_EDGES)
    assert c.faithfulness == pytest.approx(1.0, abs=1e-6)
    # The metric ACDC tracked through resumed passes is the circuit's, evaluated afresh.
    assert c.metric_circuit == pytest.approx(float(p.evaluate(c.graph.valid & ~c.kept)[0]), abs=1e-9)
    for e in c.edges:  # every kept edge carries its measured effect, above tau
        assert abs(e["effect"]) >= 0.05


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_attribution_recovers_exactly_the_planted_edges(planted, method):
    _, p = planted
    c = attribution_circuit(p, method, tau=0.05, progress=False)
    assert _names(c) == set(PLANTED_EDGES)
    assert c.faithfulness == pytest.approx(1.0, abs=1e-6)
    # Off-circuit edges score (numerically) zero: they carry nothing that differs, or nothing anyone reads.
    off = ~c.kept & c.graph.valid
    assert c.scores[off].abs().max() < 1e-3


def test_a_second_weaker_head_is_found_too(planted_two_heads):
    _, p = planted_two_heads
    want = set(PLANTED_EDGES) | set(SECOND_HEAD_EDGES)
    assert _names(acdc(p, tau=0.02, progress=False)) == want
    assert _names(attribution_circuit(p, "eap-ig", tau=0.02, progress=False)) == want


def test_acdc_with_candidates_keeps_only_tested_edges(planted):
    _, p = planted
    scores = p.edge_scores("eap-ig")
    c = acdc(p, tau=0.05, scores=scores, candidates=6, progress=False)
    assert _names(c) == set(PLANTED_EDGES)
    assert c.info["edges_tested"] <= 6


def test_acdc_threshold_above_every_effect_keeps_nothing(planted):
    _, p = planted
    c = acdc(p, tau=100.0, progress=False)
    assert c.n_edges == 0
    assert c.faithfulness == pytest.approx(0.0, abs=1e-9)


def test_measured_effects_for_attribution_circuits(planted):
    _, p = planted
    c = measure_effects(p, attribution_circuit(p, "eap", tau=0.05, progress=False), progress=False)
    for e in c.edges:
        assert e["effect"] < -0.05  # removing any planted edge hurts the log-probability


def test_discover_api_and_networkx_export(planted):
    model, p = planted
    c = discover(model, p.task, method="acdc", tau=0.05, progress=False)
    assert _names(c) == set(PLANTED_EDGES)
    assert c.info["ablation"] == "resample" and c.info["task"] == "induction"
    G = c.to_networkx()
    assert isinstance(G, nx.DiGraph)
    assert set(G.nodes) == {"input", "a0.h0", "a1.h0", "logits"}
    assert G.nodes["a1.h0"] == {"kind": "head", "layer": 1, "head": 0}
    assert G.nodes["input"]["kind"] == "input" and G.nodes["logits"]["kind"] == "logits"
    assert G.edges["a0.h0", "a1.h0"]["ports"] == "k"
    assert G.edges["a1.h0", "logits"]["effect"] < 0
    assert G.graph["faithfulness"] == pytest.approx(1.0, abs=1e-6)
    assert c.heads == [(0, 0), (1, 0)] and c.n_edges == 4


def test_features_granularity_without_transcoders_says_how_to_get_them(planted):
    from transcoders.io import TranscoderLoadError

    model, p = planted
    with pytest.raises(TranscoderLoadError, match="no default transcoder set.*Fix: train one"):
        discover(model, p.task, granularity="features")
    with pytest.raises(ValueError, match="method"):
        discover(model, p.task, method="sae")


def test_unsplit_qkv_graph_finds_the_same_heads():
    model = planted_induction_model()
    c = discover(model, _task(model), method="acdc", tau=0.05, split_qkv=False, progress=False)
    assert _names(c) == {"input->a0.h0", "a0.h0->a1.h0", "input->a1.h0", "a1.h0->logits"}


# What each ablation removes, by construction. Mean ablation replaces the current token by the
# average embedding, so the induction head's query now depends on its edge from the input. Zero
# ablation also removes positions (the previous-token head's q and k) and the anchor that fixes
# every LayerNorm's scale (so input → a1.h0<k> and input → logits matter too).
MEAN_EXTRA = {"input->a1.h0<q>"}
ZERO_EXTRA = MEAN_EXTRA | {"input->a0.h0<q>", "input->a0.h0<k>", "input->a1.h0<k>", "input->logits"}


@pytest.mark.parametrize(("ablation", "extra"), [("resample", set()), ("mean", MEAN_EXTRA), ("zero", ZERO_EXTRA)])
@pytest.mark.parametrize("metric", ["task", "kl"])
def test_each_ablation_finds_its_own_circuit(planted, ablation, extra, metric):
    model, p = planted
    c = discover(model, p.task, method="acdc", ablation=ablation, metric=metric, progress=False)
    assert _names(c) == set(PLANTED_EDGES) | extra
    assert c.faithfulness == pytest.approx(1.0, abs=1e-4)  # the removed edges' effects are tiny, not zero
