"""Edge ACDC started from a node circuit, decided on prompt chunks, on the planted induction model
(tests/planted.py), whose edges are known by construction."""

from __future__ import annotations

import pytest
import torch
from _threads import one_thread  # noqa: F401
from planted import PLANTED_EDGES, SECOND_HEAD_EDGES, V, planted_induction_model

from circuits.discovery import acdc, discover_edges
from circuits.discovery.heads.acdc_nodes import acdc_nodes
from circuits.models.tiny import tiny_model
from circuits.patching import EdgePatcher
from circuits.patching.nodes import NodePatcher
from circuits.tasks import induction

TAU = 0.02
WANT = set(PLANTED_EDGES) | set(SECOND_HEAD_EDGES)


@pytest.fixture(scope="module")
def planted():
    model = planted_induction_model(second_head=0.5)
    task = induction.dataset(model.tokenizer, n=24, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    return model, task


def _names(circuit) -> set[str]:
    return {e["name"] for e in circuit.edges}


def test_edge_acdc_within_a_node_circuit_recovers_the_planted_edges(planted):
    model, task = planted
    nodes = acdc_nodes(NodePatcher(model, task, ablation="resample"), include_mlps=True, progress=False)
    assert nodes.heads == [(0, 0), (1, 0), (1, 2)] and nodes.mlps == []
    start = nodes.as_edge_circuit()
    c = discover_edges(model, task, within=nodes, tau=TAU, batch_size=6, progress=False)
    assert _names(c) == WANT
    assert c.faithfulness == pytest.approx(1.0, abs=1e-6)
    assert c.info["ablation"] == "resample"  # the node circuit's
    assert c.info["within"] == start.n_edges
    # Only the node circuit's edges are tested (plain ACDC tests every edge of the graph).
    plain = acdc(EdgePatcher(model, task, batch_size=6), tau=TAU, progress=False)
    assert _names(plain) == WANT
    assert c.info["edges_tested"] <= start.n_edges < plain.info["edges_tested"]
    # The start state is the node circuit, whose faithfulness is 1 here.
    assert c.info["faithfulness_candidates"] == pytest.approx(1.0, abs=1e-6)
    # Its kept edges are the within set's: nothing outside it can come back.
    assert not (c.kept & ~start.kept).any()


def test_within_an_edge_set_that_misses_a_planted_edge_cannot_keep_it(planted):
    model, task = planted
    p = EdgePatcher(model, task, batch_size=6)
    g = p.graph
    within = g.valid.clone()
    s, d = g.parse_edge("a0.h0->a1.h0<k>")
    within[s, d] = False
    c = acdc(p, tau=TAU, within=within, progress=False)
    assert "a0.h0->a1.h0<k>" not in _names(c)
    assert c.faithfulness < 0.9  # the induction head lost the previous token it matches against


@pytest.mark.parametrize("batch", [1, 3])
def test_chunked_acdc_without_z_is_acdc_on_every_prompt(planted, batch):
    """z=None reads every chunk for every test: the same decisions, effects and work as one chunk."""
    model, task = planted
    whole = acdc(EdgePatcher(model, task, batch_size=24), tau=TAU, batch=batch, z=None, progress=False)
    p = EdgePatcher(model, task, batch_size=6)
    assert len(p.chunks) == 4 and p.per_prompt_mean
    chunked = acdc(p, tau=TAU, batch=batch, z=None, progress=False)
    assert _names(chunked) == _names(whole) == WANT
    assert torch.equal(chunked.kept, whole.kept)
    torch.testing.assert_close(chunked.effects, whole.effects, rtol=0, atol=1e-9, equal_nan=True)
    assert chunked.info["tests_decided_early"] == 0
    assert chunked.info["tests"] == whole.info["tests"] and chunked.info["edges_tested"] == whole.info["edges_tested"]
    assert chunked.info["work"] == pytest.approx(whole.info["work"])
    assert chunked.metric_circuit == pytest.approx(whole.metric_circuit, abs=1e-9)


@pytest.mark.parametrize("batch", [1, 3])
def test_chunked_acdc_decides_most_tests_early_and_finds_the_same_edges(planted, batch):
    model, task = planted
    p = EdgePatcher(model, task, batch_size=6)
    whole = acdc(p, tau=TAU, batch=batch, z=None, progress=False)
    c = acdc(p, tau=TAU, batch=batch, z=3.0, progress=False)
    assert _names(c) == WANT
    assert c.info["tests_decided_early"] > c.info["tests"] // 2
    assert c.info["work"] < whole.info["work"]
    # The metric of the result is measured on every prompt, whatever the tests read.
    assert c.metric_circuit == pytest.approx(float(p.evaluate(p.graph.valid & ~c.kept)[0]), abs=1e-9)
    for e in c.edges:
        assert abs(e["effect"]) >= TAU


@pytest.mark.parametrize("screen", [False, True])
def test_acdc_with_eap_controls_finds_the_same_edges(planted, screen):
    # Each prompt's EAP scores as control variates (through discover_edges, as a user asks for them): the
    # planted edges, each kept one measured at tau or more, the result measured on every prompt.
    model, task = planted
    p = EdgePatcher(model, task, batch_size=6)
    c = discover_edges(model, task, tau=TAU, patcher=p, controls=True, screen_targets=screen, progress=False)
    assert _names(c) == WANT and c.info["controls"]
    assert c.info["tests_decided_early"] > c.info["tests"] // 2
    assert c.metric_circuit == pytest.approx(float(p.evaluate(p.graph.valid & ~c.kept)[0]), abs=1e-9)
    for e in c.edges:
        assert abs(e["effect"]) >= TAU
    with pytest.raises(ValueError, match="controls=True"):
        discover_edges(model, task, tau=TAU, patcher=p, controls=True, z=None, progress=False)


@pytest.mark.parametrize("screen_chunks", [None, 1])
def test_screening_targets_removes_their_edges_in_one_test(planted, screen_chunks):
    # screen_chunks=1: a group the first chunk leaves undecided is split instead of read to the end.
    model, task = planted
    p = EdgePatcher(model, task, batch_size=6)
    plain = acdc(p, tau=TAU, progress=False)
    c = acdc(p, tau=TAU, screen_targets=True, screen_chunks=screen_chunks, progress=False)
    assert _names(c) == WANT
    assert c.info["screen_targets"] and c.info["edges_screened"] > 0
    assert c.info["tests"] < plain.info["tests"]
    for e in c.edges:  # a kept edge was tested alone at the end of its bisection
        assert abs(e["effect"]) >= TAU
    with pytest.raises(ValueError, match="screen_chunks"):
        acdc(p, tau=TAU, screen_chunks=1, progress=False)


@pytest.mark.parametrize("options,match", [({"method": "eap", "within": torch.ones(1)}, "within="),
                                           ({"method": "eap-ig", "z": 2.0}, "z="),
                                           ({"method": "eap", "screen_targets": True}, "screen_targets="),
                                           ({"method": "eap", "controls": True}, "controls="),
                                           ({"method": "eap-ig", "max_chunks": 1}, "max_chunks="),
                                           ({"z": -1.0}, "z must be")])
def test_discover_edges_rejects_acdc_keywords_elsewhere(planted, options, match):
    model, task = planted
    with pytest.raises(ValueError, match=match):
        discover_edges(model, task, progress=False, **options)


def test_within_a_node_circuit_needs_split_qkv(planted):
    model, task = planted
    nodes = acdc_nodes(NodePatcher(model, task, ablation="resample"), include_mlps=True, progress=False)
    with pytest.raises(ValueError, match="split_qkv"):
        discover_edges(model, task, within=nodes, split_qkv=False, progress=False)


def test_candidates_within_a_set_are_its_strongest_edges(planted):
    model, task = planted
    p = EdgePatcher(model, task, batch_size=6)
    g = p.graph
    scores = p.edge_scores("eap")
    nodes = acdc_nodes(NodePatcher(model, task, ablation="resample"), include_mlps=True, progress=False)
    within = nodes.as_edge_circuit().kept
    c = acdc(p, tau=TAU, scores=scores, candidates=7, within=within, progress=False)
    assert _names(c) == WANT  # the seven planted edges are the strongest inside the node circuit
    assert c.info["edges_tested"] <= 7
    strongest = torch.where(within, scores.abs(), torch.zeros(())).flatten().topk(7).indices
    assert set(strongest.tolist()) == set(c.kept.flatten().nonzero().flatten().tolist())
    # The candidates are the strongest inside, however strong the edges outside.
    loud = torch.where(within, scores, torch.full((), 1e6))
    assert _names(acdc(p, tau=TAU, scores=loud, candidates=7, within=within, progress=False)) == WANT
    # With fewer candidates inside, a planted edge is removed untested.
    fewer = acdc(p, tau=TAU, scores=scores, candidates=3, within=within, progress=False)
    assert fewer.info["edges_tested"] <= 3 and fewer.n_edges < len(WANT)
    assert not (fewer.kept & ~within).any() and g.n_edges > int(within.sum())


def test_a_floor_keeps_the_weaker_head_greedy_acdc_loses(planted):
    # tau at 30% of the gap: each edge of the weaker induction head a1.h2 moves the metric by about 20%,
    # so greedy ACDC removes them one by one (f 0.78). A floor of 0.95 rejects a removal whose loss would
    # take the (estimated) faithfulness under it, which keeps exactly the planted circuit, with or without
    # screening; a floor the greedy result already meets changes nothing.
    model, task = planted
    p = EdgePatcher(model, task, batch_size=6)
    tau = 0.3 * (p.m_full - p.m_empty)
    plain = acdc(p, tau=tau, progress=False)
    assert _names(plain) == set(PLANTED_EDGES) and plain.faithfulness < 0.8
    for screen in (False, True):
        c = acdc(p, tau=tau, floor=0.95, screen_targets=screen, progress=False)
        assert _names(c) == WANT
        assert c.faithfulness == pytest.approx(1.0, abs=1e-6)
        assert c.info["floor_reached"] and c.info["steps_undone"] == 0
    low = acdc(p, tau=tau, floor=0.5, progress=False)
    assert _names(low) == _names(plain) and low.faithfulness == pytest.approx(plain.faithfulness, abs=1e-9)
    with pytest.raises(ValueError, match="floor"):
        acdc(p, tau=tau, floor=1.5, progress=False)


def test_restore_to_floor_undoes_the_costliest_steps_first(planted):
    # The fallback when the estimate drifted: from the circuit without the weaker head, undo removal
    # steps, the costliest first, until f reaches the floor; a step that helped is never undone.
    from circuits.discovery.heads.floor import restore_to_floor

    model, task = planted
    p = EdgePatcher(model, task, batch_size=6)
    g = p.graph
    idx = lambda names: torch.tensor([g.parse_edge(n) for n in names])  # noqa: E731
    removed = g.valid.clone()
    removed[tuple(idx(PLANTED_EDGES).T)] = False
    m = float(p.evaluate(removed)[0])
    gap = p.m_full - p.m_empty
    noise = idx(["a0.h3->logits"])
    steps = [(noise, -1e-3 * gap), (idx(SECOND_HEAD_EDGES), -0.2 * gap), (idx(["a0.h2->logits"]), 0.01 * gap)]
    r = restore_to_floor(p, removed, steps, 0.95, m)
    assert r.reached and r.steps == 1 and r.faithfulness == pytest.approx(1.0, abs=1e-6)
    assert set(map(tuple, (g.valid & ~r.removed).nonzero().tolist())) == set(map(tuple, idx(sorted(WANT)).tolist()))
    # Without the weaker head's step the floor cannot be reached: every harmful step is undone, and it says so.
    r = restore_to_floor(p, removed, [steps[0], steps[2]], 0.95, m)
    assert not r.reached and r.steps == 1 and r.faithfulness < 0.95
    assert restore_to_floor(p, removed, steps, 0.5, m).steps == 0  # already above the floor



def test_a_cap_on_the_chunks_read_decides_as_acdc_on_those_prompts():
    # max_chunks=1: every test is decided on the first chunk's prompts, by the interval where it decides
    # (which agrees with the mean there) and else by the mean: ACDC run on those prompts alone. A random
    # model, whose effects spread over the prompts (the planted one's do not), so that some tests are close.
    model = tiny_model("gpt2", dtype=torch.float64, n_layers=2, n_heads=2, init_scale=3.0)
    task = induction.dataset(model.tokenizer, n=24, seq_len=6, bos=None, seed=0)
    p = EdgePatcher(model, task, batch_size=6)
    tau = 0.01 * abs(p.m_full - p.m_empty)
    capped = acdc(p, tau=tau, max_chunks=1, progress=False)
    first = acdc(EdgePatcher(model, task.subset(slice(0, 6)), batch_size=6), tau=tau, z=None, progress=False)
    assert torch.equal(capped.kept, first.kept)
    torch.testing.assert_close(capped.effects, first.effects, rtol=0, atol=1e-9, equal_nan=True)
    assert capped.info["max_chunks"] == 1 and capped.info["tests_decided_at_cap"] > capped.info["tests"] // 2
    assert capped.info["tests_decided_early"] == capped.info["tests"]  # no test read past its first chunk
    # What it keeps is measured on every prompt.
    assert capped.metric_circuit == pytest.approx(float(p.evaluate(p.graph.valid & ~capped.kept)[0]), abs=1e-9)
    # Without the cap the close calls read on, and decide on more prompts.
    whole = acdc(p, tau=tau, progress=False)
    assert whole.info["tests_decided_at_cap"] == 0 and whole.info["work"] > capped.info["work"]
    # A cap of every chunk is no cap, and z=None reads every prompt whatever the cap.
    assert acdc(p, tau=tau, max_chunks=4, progress=False).info["max_chunks"] == -1
    assert acdc(p, tau=tau, z=None, max_chunks=1, progress=False).info["max_chunks"] == -1
    with pytest.raises(ValueError, match="max_chunks"):
        acdc(p, tau=tau, max_chunks=0, progress=False)
