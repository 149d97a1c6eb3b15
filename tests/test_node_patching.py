"""Tier 2: node patching (whole heads and MLPs ablated) and node-level ACDC.

Node patching is checked against the edge engine (removing every outgoing edge of a node is
ablating the node) and against the corrupted run; node ACDC against the planted circuit.
"""

from __future__ import annotations

import pytest
import torch
from _threads import one_thread  # noqa: F401
from planted import V, planted_induction_model

from circuits import tiny_model
from circuits.discovery.heads.acdc_nodes import acdc_nodes
from circuits.patching import EdgePatcher
from circuits.patching.nodes import NodePatcher, node_forward
from circuits.tasks import induction


def _task(model, n: int = 6, seq_len: int = 4):
    return induction.dataset(model.tokenizer, n=n, seq_len=seq_len, bos=None, seed=0)


def _model(family: str):
    return tiny_model(family, dtype=torch.float64, n_layers=2, n_heads=4, n_kv_heads=2 if family != "gpt2" else None,
                      init_scale=3.0)


def _random_nodes(g, seed: int) -> torch.Tensor:
    nodes = torch.rand(g.n_src, generator=torch.Generator().manual_seed(seed)) < 0.5
    nodes[0] = False
    return nodes


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_ablating_a_node_is_removing_all_its_outgoing_edges(family, ablation):
    model = _model(family)
    task = _task(model)
    nodes, edges = NodePatcher(model, task, ablation=ablation), EdgePatcher(model, task, ablation=ablation, split_qkv=False)
    g = nodes.graph
    for seed in range(3):
        removed = _random_nodes(g, seed)
        as_edges = edges.graph.valid & removed[:, None]
        torch.testing.assert_close(nodes.evaluate(removed), edges.evaluate(as_edges), rtol=1e-9, atol=1e-9)
    assert nodes.m_full == pytest.approx(edges.m_full, abs=1e-9)
    assert nodes.m_empty == pytest.approx(edges.m_empty, abs=1e-9)
    # m(∅) is run on one row per shared ablated value (mean, zero): it must be every prompt's run.
    everything = torch.ones(g.n_src, dtype=torch.bool)
    assert nodes.m_empty == pytest.approx(float(nodes.evaluate(everything)[0]), abs=1e-9)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_every_node_resampled_is_the_corrupted_run(family):
    model = _model(family)
    task = _task(model)
    p = NodePatcher(model, task, ablation="resample")
    everything = torch.ones(p.graph.n_src, dtype=torch.bool)
    logits, _, _ = node_forward(model, p.graph, task.clean, task.positions, removed=everything,
                                ablated=p.chunks[0].ablated)
    with torch.no_grad():
        want = model.hf(task.corrupted, use_cache=False).logits[:, task.positions]
    torch.testing.assert_close(logits[0], want, rtol=1e-9, atol=1e-9)


def test_batched_node_sets_equal_one_at_a_time():
    model = _model("qwen2")
    p = NodePatcher(model, _task(model))
    sets = torch.stack([_random_nodes(p.graph, s) for s in range(4)])
    together = p.evaluate(sets)
    alone = torch.cat([p.evaluate(s) for s in sets])
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


def test_resuming_from_a_base_run_is_exact():
    model = tiny_model("llama", dtype=torch.float64, n_layers=3, n_heads=4, n_kv_heads=2, init_scale=3.0)
    p = NodePatcher(model, _task(model))
    g = p.graph
    base_nodes = _random_nodes(g, 7)
    _, base = p.base_run(base_nodes)
    for layer in (1, 2):
        test = base_nodes.clone()
        later = torch.tensor([i > 0 and g.src_layer(i) >= layer for i in range(g.n_src)])
        test[later] = ~base_nodes[later]  # flip every decision from `layer` on
        a = p.evaluate(test, base=base, start_layer=layer)
        b = p.evaluate(test)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        assert abs(float(a[0]) - p.evaluate(base_nodes)[0]) > 1e-6  # the flipped nodes did matter


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_node_scores_are_the_eap_scores_of_all_outgoing_edges(family):
    model = _model(family)
    task = _task(model)
    nodes, edges = NodePatcher(model, task, ablation="mean"), EdgePatcher(model, task, ablation="mean", split_qkv=False)
    torch.testing.assert_close(nodes.node_scores(), edges.edge_scores("eap").sum(1).double(), rtol=1e-5, atol=1e-6)  # edge scores are float32 sums
    assert all(p.requires_grad for p in model.hf.parameters())  # unfrozen again


@pytest.mark.parametrize("ablation", ["mean", "zero", "resample"])
def test_node_scores_taken_in_the_clean_pass_are_node_scores(ablation):
    # scores=True: the patcher's clean pass is the gradient pass's forward; the same scores, clean
    # logits and m(M) as a patcher that runs them apart.
    model = _model("llama")
    task = _task(model)
    plain, taken = NodePatcher(model, task, ablation=ablation), NodePatcher(model, task, ablation=ablation, scores=True)
    torch.testing.assert_close(taken.node_scores(), plain.node_scores(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(taken.chunks[0].clean_logits, plain.chunks[0].clean_logits, rtol=1e-12, atol=1e-12)
    assert taken.m_full == pytest.approx(plain.m_full, abs=1e-12) and taken.m_empty == pytest.approx(plain.m_empty)
    assert all(p.requires_grad for p in model.hf.parameters())  # unfrozen again


@pytest.mark.parametrize("include_mlps", [True, False])
@pytest.mark.parametrize("screen_layers", [True, False])
def test_node_acdc_recovers_exactly_the_planted_heads(include_mlps, screen_layers):
    model = planted_induction_model(second_head=0.5)
    task = induction.dataset(model.tokenizer, n=8, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    p = NodePatcher(model, task, ablation="resample")
    circuit = acdc_nodes(p, include_mlps=include_mlps, screen_layers=screen_layers, progress=False)
    assert circuit.heads == [(0, 0), (1, 0), (1, 2)]  # previous-token head, induction head, the weaker copy
    assert circuit.mlps == ([] if include_mlps else [0, 1])  # the planted MLPs are zero: never needed
    assert circuit.faithfulness == pytest.approx(1.0, abs=1e-6)
    effects = circuit.head_effects()  # heads only, whether or not MLPs were tested
    assert sorted(effects) == circuit.heads
    assert list(effects.values()) == sorted(effects.values(), key=abs, reverse=True)
    for (l, h), effect in effects.items():
        assert effect == float(circuit.effects[p.graph.head_src(l, h)])
        assert abs(effect) >= circuit.info["tau"]
    G = circuit.to_networkx()
    assert {"a0.h0", "a1.h0", "a1.h2"} <= set(G.nodes)
    assert G.has_edge("a0.h0", "a1.h0") and G.has_edge("a1.h0", "logits")
    assert G.nodes["a1.h0"]["effect"] < 0  # removing the induction head lowers log p(correct)


@pytest.mark.parametrize("z,controls", [(None, False), (3.0, False), (3.0, True)])
def test_node_acdc_on_prompt_chunks_recovers_the_planted_heads(z, controls):
    # 24 prompts in chunks of 6: with z=None every test reads every chunk and decides exactly as one
    # chunk of all the prompts; with z=3 most tests stop after the first chunk, and the planted circuit
    # (whose effects are far from tau) comes out the same, its faithfulness measured on every prompt.
    model = planted_induction_model(second_head=0.5)
    task = induction.dataset(model.tokenizer, n=24, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    whole = acdc_nodes(NodePatcher(model, task, ablation="resample"), include_mlps=True, progress=False)
    p = NodePatcher(model, task, ablation="resample", batch_size=6, scores=controls)
    assert p.per_prompt_mean and len(p.chunks) == 4
    # controls: each prompt's node EAP scores, as discover_nodes passes them
    circuit = acdc_nodes(p, include_mlps=True, z=z, controls=p.prompt_scores() if controls else None, progress=False)
    assert circuit.heads == whole.heads == [(0, 0), (1, 0), (1, 2)] and circuit.mlps == whole.mlps == []
    assert circuit.faithfulness == pytest.approx(1.0, abs=1e-6)
    assert circuit.metric_circuit == pytest.approx(p.evaluate(~circuit.kept)[0].item(), abs=1e-9)
    if z is None:
        assert circuit.info["tests_decided_early"] == 0
        assert torch.allclose(circuit.effects, whole.effects, atol=1e-9, equal_nan=True)
        assert circuit.info["work"] == pytest.approx(whole.info["work"])  # the same passes, in chunks
    else:
        assert circuit.info["tests_decided_early"] > 0
        assert circuit.info["work"] < whole.info["work"]




def test_node_acdc_capped_at_one_chunk_is_acdc_on_its_prompts():
    # max_chunks=1: a test the first chunk leaves undecided is decided by its mean there, so the search is
    # ACDC on the first chunk's prompts alone (resample ablation: each prompt's own corrupted partner), its
    # result measured on every prompt. A random model, whose node effects spread over the prompts.
    model = _model("llama")
    task = _task(model, n=24, seq_len=6)
    p = NodePatcher(model, task, ablation="resample", batch_size=6)
    tau = 0.02 * abs(p.m_full - p.m_empty)
    capped = acdc_nodes(p, tau, include_mlps=True, max_chunks=1, progress=False)
    first = acdc_nodes(NodePatcher(model, task.subset(slice(0, 6)), ablation="resample", batch_size=6), tau,
                       include_mlps=True, z=None, progress=False)
    assert torch.equal(capped.kept, first.kept)
    assert torch.allclose(capped.effects, first.effects, atol=1e-9, equal_nan=True)
    assert capped.info["tests_decided_at_cap"] > 0 and capped.info["tests_decided_early"] == capped.info["tests"]
    assert capped.metric_circuit == pytest.approx(p.evaluate(~capped.kept)[0].item(), abs=1e-9)
    whole = acdc_nodes(p, tau, include_mlps=True, progress=False)
    assert whole.info["tests_decided_at_cap"] == 0 and whole.info["work"] > capped.info["work"]


@pytest.mark.parametrize("z", [None, 3.0])
def test_speculative_node_acdc_decides_as_one_node_at_a_time(z):
    # batch=3: a layer's next nodes go in one pass as cumulative removals, judged in order up to the
    # first kept; the decisions, effects and circuit must be those of testing one node at a time.
    model = planted_induction_model(second_head=0.5)
    task = induction.dataset(model.tokenizer, n=24, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    p = NodePatcher(model, task, ablation="resample", batch_size=6)
    one = acdc_nodes(p, include_mlps=True, z=z, progress=False)
    spec = acdc_nodes(p, include_mlps=True, z=z, batch=3, progress=False)
    assert spec.heads == one.heads == [(0, 0), (1, 0), (1, 2)] and spec.mlps == one.mlps
    assert torch.allclose(spec.effects, one.effects, atol=1e-9, equal_nan=True)
    assert spec.info["tests"] == one.info["tests"] and spec.info["passes"] < one.info["passes"]
    assert spec.faithfulness == pytest.approx(one.faithfulness, abs=1e-9)

def test_node_acdc_with_candidates_tests_only_those():
    model = planted_induction_model()
    task = induction.dataset(model.tokenizer, n=8, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    p = NodePatcher(model, task, ablation="resample")
    scores = p.node_scores()
    top = [i for i in scores.abs().argsort(descending=True).tolist() if i > 0][:2]  # 0: the embeddings
    assert set(top) == {p.graph.head_src(0, 0), p.graph.head_src(1, 0)}  # EAP ranks the planted heads first
    circuit = acdc_nodes(p, scores=scores, candidates=2, include_mlps=False, progress=False)
    assert circuit.heads == [(0, 0), (1, 0)]
    assert circuit.info["nodes_tested"] == 2
    with pytest.raises(ValueError, match="scores"):
        acdc_nodes(p, candidates=2, progress=False)


def test_discover_at_node_level():
    from circuits import discover

    model = planted_induction_model()
    task = induction.dataset(model.tokenizer, n=8, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    acdc_circuit = discover(model, task, level="nodes", ablation="resample", include_mlps=False, progress=False)
    eap_circuit = discover(model, task, level="nodes", method="eap", ablation="resample", top_n=2,
                           include_mlps=False, progress=False)
    assert acdc_circuit.heads == eap_circuit.heads == [(0, 0), (1, 0)]
    assert acdc_circuit.faithfulness == pytest.approx(1.0, abs=1e-6)
    assert not acdc_circuit.info["controls"]  # the effects alone decide, unless asked
    steered = discover(model, task, level="nodes", ablation="resample", include_mlps=False, controls=True, progress=False)
    assert steered.info["controls"] and steered.heads == [(0, 0), (1, 0)]
    assert eap_circuit.faithfulness == pytest.approx(1.0, abs=1e-6)
    bf16 = discover(model, task, level="nodes", ablation="resample", include_mlps=False, precision="bf16", progress=False)
    assert bf16.heads == [(0, 0), (1, 0)]
    assert bf16.faithfulness == pytest.approx(1.0, abs=1e-6)  # re-measured in the model's precision
    with pytest.raises(ValueError, match="EAP-IG"):
        discover(model, task, level="nodes", method="eap-ig", progress=False)
    with pytest.raises(ValueError, match="level"):
        discover(model, task, level="layers", progress=False)
    with pytest.raises(ValueError, match="controls=True"):
        discover(model, task, level="nodes", z=None, controls=True, progress=False)
    with pytest.raises(ValueError, match="controls"):
        discover(model, task, level="nodes", method="eap", top_n=2, controls=True, progress=False)


def test_node_circuit_golden_round_trip(tmp_path, monkeypatch):
    from circuits.discovery.heads.node_circuit import NodeCircuit
    from circuits.testing import assert_matches_golden

    model = planted_induction_model(second_head=0.5)
    task = induction.dataset(model.tokenizer, n=8, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    p = NodePatcher(model, task, ablation="resample")
    full = acdc_nodes(p, include_mlps=False, progress=False)
    golden = tmp_path / "golden.json"
    monkeypatch.setenv("CIRCUITS_UPDATE_GOLDEN", "1")
    assert_matches_golden(full, golden)
    monkeypatch.delenv("CIRCUITS_UPDATE_GOLDEN")
    assert {r["node"] for r in NodeCircuit.read(golden)["nodes"]} == set(full.nodes)
    assert assert_matches_golden(full, golden)["jaccard"] == 1.0
    # A higher threshold drops the weaker head: the golden comparison names it.
    weaker = acdc_nodes(p, tau=0.5 * abs(float(full.effects[p.graph.head_src(1, 0)])), include_mlps=False,
                        progress=False)
    assert weaker.heads == [(0, 0), (1, 0)]
    with pytest.raises(AssertionError, match="missing a1.h2"):
        assert_matches_golden(weaker, golden, tolerance=0.1)
    golden.write_text("{broken")
    with pytest.raises(ValueError, match="cannot read a node circuit"):
        NodeCircuit.read(golden)


def _violations(p: NodePatcher, circuit, tau: float) -> list[int]:
    """Kept nodes whose removal from the circuit itself moves the metric by less than tau (fresh passes)."""
    removed = ~circuit.kept
    current = float(p.evaluate(removed)[0])
    assert current == pytest.approx(circuit.metric_circuit, abs=1e-9)
    out = []
    for node in [i for i in range(1, p.graph.n_src) if circuit.kept[i]]:
        trial = removed.clone()
        trial[node] = True
        moved = float(p.evaluate(trial)[0]) - current
        if abs(moved) < tau:
            out.append(node)
        elif circuit.info["sweeps"] > 1:  # the recorded effect is the move in the final circuit
            assert float(circuit.effects[node]) == pytest.approx(moved, abs=1e-9)
    return out


def test_swept_node_acdc_keeps_only_nodes_that_matter_in_the_result():
    # A random model with no planted circuit (seed 4: one sweep leaves a node that only mattered
    # next to nodes removed after it). Sweeping until stable leaves a circuit in which every kept
    # node, removed from the circuit itself, moves the metric by at least tau.
    model = tiny_model("llama", dtype=torch.float64, n_layers=3, n_heads=4, n_kv_heads=2, init_scale=3.0, seed=4)
    task = _task(model, n=8, seq_len=5)
    p = NodePatcher(model, task, ablation="mean")
    tau = 0.05 * abs(p.m_full - p.m_empty)
    one = acdc_nodes(p, tau, include_mlps=True, max_sweeps=1, progress=False)
    assert _violations(p, one, tau), "this model should show what one sweep leaves behind"
    swept = acdc_nodes(p, tau, include_mlps=True, progress=False)
    assert 1 < swept.info["sweeps"] < 4  # stable before the cap
    assert _violations(p, swept, tau) == []
    assert swept.kept.sum() < one.kept.sum()
    with pytest.raises(ValueError, match="max_sweeps"):
        acdc_nodes(p, tau, max_sweeps=0, progress=False)


def test_a_control_variate_decides_a_close_call_on_the_first_chunk():
    # A close call (|mean effect| within 2% of tau) read on its effects alone needs every prompt. With a
    # control equal to the true per-prompt effects, the regression estimate on the first chunk is the
    # mean over every prompt exactly and its residuals are zero: decided there, the same way, the same
    # effect. Any other item's control must not enter the trial's.
    from circuits.discovery.heads.chunked import ChunkedSearch

    model = tiny_model("llama", dtype=torch.float64, n_layers=3, n_heads=4, n_kv_heads=2, init_scale=3.0, seed=1)
    task = _task(model, n=12, seq_len=5)
    p = NodePatcher(model, task, ablation="mean", batch_size=4)
    g = p.graph
    node, layer = g.head_src(1, 0), 1
    none = torch.zeros(g.n_src, dtype=torch.bool)
    trial = none.clone()
    trial[node] = True
    per_chunk = [p.chunk_metrics(i, torch.stack([none, trial]))[0] for i in range(len(p.chunks))]
    effect = torch.cat([v[1] - v[0] for v in per_chunk])  # [N] removing the node alone, per prompt
    mean = float(effect.mean())
    assert float(effect.std()) > 0.1 * abs(mean) > 0  # the prompts disagree: the first chunk alone cannot decide
    controls = torch.randn(task.n, g.n_src, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    controls[:, node] = effect
    for tau, kept in ((1.02 * abs(mean), False), (0.98 * abs(mean), True)):
        plain = ChunkedSearch(p, none.clone(), tau, z=3.0)
        [(e_plain, small_plain)] = plain.test(trial[None], layer)
        assert plain.early == 0 and e_plain == pytest.approx(mean, abs=1e-12)  # every prompt read
        ctl = ChunkedSearch(p, none.clone(), tau, z=3.0, controls=controls)
        [(e_ctl, small_ctl)] = ctl.test(trial[None], layer)
        assert ctl.early == ctl.early_by_control == 1  # the first of the three chunks decided it
        assert ctl.work == pytest.approx(plain.work / 3)
        assert e_ctl == pytest.approx(mean, abs=1e-10)
        assert small_ctl == small_plain == (not kept)
    with pytest.raises(ValueError, match="controls must be"):
        ChunkedSearch(p, none, 1.0, z=3.0, controls=controls[:, :-1])


def test_chunk_runs_stay_current_through_removals_and_sweeps():
    # Node patching records every set of a batched pass, so the search keeps each chunk's run current
    # through the removals it reads and a new sweep from the top resumes from it instead of recording
    # again (each chunk runs from the embeddings once). Whatever it holds must equal a fresh pass under
    # the current set: values, and each run resumed at any layer below where it is current.
    from circuits.discovery.heads.chunked import ChunkedSearch

    model = tiny_model("llama", dtype=torch.float64, n_layers=3, n_heads=4, n_kv_heads=2, init_scale=3.0, seed=1)
    task = _task(model, n=12, seq_len=5)
    p = NodePatcher(model, task, ablation="mean", batch_size=4)
    g = p.graph
    from_scratch = []
    chunk_metrics = p.chunk_metrics
    p.chunk_metrics = lambda i, removed, base=None, start_layer=0, keep_base=False: (  # type: ignore[method-assign]
        from_scratch.append(i) if base is None else None, chunk_metrics(
            i, removed, base=base, start_layer=start_layer, keep_base=keep_base))[1]
    state = ChunkedSearch(p, torch.zeros(g.n_src, dtype=torch.bool), tau=float("inf"), z=3.0)
    for sweep, heads in enumerate([(0, 2), (1, 3)]):
        for layer in range(g.n_layers - 1, -1, -1):
            for k, h in enumerate(heads):
                state.z = None if (layer + k + sweep) % 3 == 0 else 3.0  # some tests read every chunk
                trial = state.removed.clone()
                trial[g.head_src(layer, h)] = True
                assert state.test(trial[None], layer)[0][1]  # under an infinite tau: removed
    assert sorted(from_scratch) == [0, 1, 2]
    for i in range(len(p.chunks)):
        fresh = chunk_metrics(i, state.removed)[0][0]
        if state.values[i] is not None:
            torch.testing.assert_close(state.values[i], fresh, rtol=1e-10, atol=1e-10)
        for layer in range(state.below[i] + 1 if state.below[i] < g.n_layers else g.n_layers):
            resumed = chunk_metrics(i, state.removed, base=state.bases[i], start_layer=layer)[0][0]
            torch.testing.assert_close(resumed, fresh, rtol=1e-10, atol=1e-10)
    assert state.current() == pytest.approx(float(p.evaluate(state.removed)[0]), abs=1e-10)


def _metric_with_heads_zeroed(model, task, heads: list[tuple[int, int]]) -> float:
    """Direct intervention, no patching engine: zero the heads' rows of GPT-2's output projection."""
    import copy

    hf = copy.deepcopy(model.hf)
    d_head = hf.config.n_embd // hf.config.n_head
    with torch.no_grad():
        for layer, head in heads:
            hf.transformer.h[layer].attn.c_proj.weight[head * d_head:(head + 1) * d_head] = 0.0
        logits = hf(task.clean, use_cache=False).logits[:, task.positions]
    return float(task.metric_fn(logits, task.answers, task.wrong))


def test_completeness_compares_the_circuit_and_the_model_without_each_subset():
    # The planted model's other heads and MLPs are zero, so the whole planted circuit is complete:
    # removing any subset does the same to the circuit as to the model. A circuit that leaves out
    # the backup induction head a1.h2 is not: without a1.h0 the model still has a1.h2, the circuit not.
    model = planted_induction_model(second_head=0.5)
    task = induction.dataset(model.tokenizer, n=8, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    p = NodePatcher(model, task, ablation="zero")
    full = acdc_nodes(p, include_mlps=False, progress=False)
    assert full.heads == [(0, 0), (1, 0), (1, 2)]
    rows = full.completeness() + full.completeness([["a0.h0", "a1.h2"], ["a1.h0", "a1.h2"]], variants_per_pass=1)
    assert [r["removed"] for r in rows[:5]] == [["a0.h0"], ["m0"], ["a1.h0"], ["a1.h2"], ["m1"]]  # MLPs always run
    for r in rows:
        assert r["gap"] == pytest.approx(0.0, abs=1e-9)
        assert r["effect_circuit"] == pytest.approx(r["effect_model"], abs=1e-9)
    assert rows[2]["effect_circuit"] == pytest.approx(float(full.effects[p.graph.head_src(1, 0)]), abs=1e-9)

    partial = acdc_nodes(p, tau=0.5 * abs(float(full.effects[p.graph.head_src(1, 0)])), include_mlps=False,
                         progress=False)
    assert partial.heads == [(0, 0), (1, 0)]
    (row,) = partial.completeness([["a1.h0"]])
    assert row["circuit"] == pytest.approx(_metric_with_heads_zeroed(model, task, [(1, 0), (1, 2)]), abs=1e-9)
    assert row["model"] == pytest.approx(_metric_with_heads_zeroed(model, task, [(1, 0)]), abs=1e-9)
    assert row["gap"] > 0.1 * abs(p.m_full - p.m_empty)  # the backup head carries the task in the model
    with pytest.raises(ValueError, match="not in the circuit"):
        partial.completeness([["a1.h2"]])
    with pytest.raises(ValueError, match="is empty"):
        partial.completeness([[]])


def test_bf16_discovery_remeasures_under_the_callers_ablation():
    # A caller's patcher with its own reference set: the float32 faithfulness after a bf16 search
    # must use that reference too, not the task's corrupted prompts.
    from circuits.discovery import discover_nodes

    model = _model("llama")
    task = _task(model, n=8, seq_len=5)
    reference = induction.dataset(model.tokenizer, n=8, seq_len=5, bos=None, seed=7).clean
    search = NodePatcher(model, task, ablation="mean", reference=reference, precision="bf16")
    circuit = discover_nodes(model, task, patcher=search, precision="bf16", progress=False)
    exact = NodePatcher(model, task, ablation="mean", reference=reference)
    default = NodePatcher(model, task, ablation="mean")
    assert abs(exact.m_empty - default.m_empty) > 1e-3  # the two references ablate differently
    assert circuit.patcher.m_empty == pytest.approx(exact.m_empty, abs=1e-12)
    assert circuit.faithfulness == pytest.approx(exact.faithfulness(circuit.kept), abs=1e-12)

