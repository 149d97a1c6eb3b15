"""Edge patching at head granularity on tiny random models of every family (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _threads import one_thread  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

from circuits.models.tiny import TINY_FAMILIES, tiny_model
from circuits.patching import (
    MIB_BUDGETS,
    HeadGraph,
    EdgePatcher,
    area_under_curve,
    faithfulness,
    kl_to_clean,
    patched_forward,
)
from circuits.patching.weights import post_attention_norm
from circuits.tasks import induction

POS = torch.arange(7)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_model(request):
    model = tiny_model(request.param, dtype=torch.float64, n_layers=2, n_heads=4, n_kv_heads=2, init_scale=3.0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (3, 7), generator=gen)
    corrupt = torch.randint(1, 60, (3, 7), generator=gen)
    return model, HeadGraph.for_model(model), ids, corrupt


def _logits(model, ids):
    with torch.no_grad():
        return model.hf(ids).logits


def _outputs(model, graph, ids):
    return patched_forward(model, graph, ids, None, None, POS, record=True).outputs


def test_graph_counts():
    g = HeadGraph(n_layers=12, n_heads=12)
    # GPT-2 small with q/k/v split: MIB's edge count.
    assert g.n_edges == 32491
    assert g.n_src == 1 + 12 * 13 and g.n_dst == 12 * (36 + 1) + 1
    assert g.edge_name(*g.parse_edge("a0.h1->a2.h3<q>")) == "a0.h1->a2.h3<q>"
    assert g.valid[g.head_src(3, 0), g.mlp_dst(3)] and not g.valid[g.head_src(3, 0), g.head_dst(3, 1, "k")]
    assert HeadGraph(2, 4, split_qkv=False).dst_names[:5] == ["a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0"]


def test_recorded_outputs_sum_to_the_residual_stream(family_model):
    model, g, ids, _ = family_model
    out = _outputs(model, g, ids)  # [n_src, B, T, d]
    assert out.shape == (g.n_src, 3, 7, model.d_model)
    seen = {}
    h = model.norm("ln_final").register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    _logits(model, ids)
    h.remove()
    # The residual stream is the sources' outputs plus the output projections' biases (GPT-2),
    # which belong to no head.
    bias = sum(model.module("attn_z", l).bias for l in range(model.n_layers)
               if model.module("attn_z", l).bias is not None and model.spec.family != "gemma")
    # Gemma's RMSNorm computes in float32 even for a float64 model, and the heads' shares of its
    # output are formed with the same float32 scale.
    tol = 1e-6 if model.spec.family == "gemma" else 1e-9
    torch.testing.assert_close(out.sum(0) + bias, seen["x"], rtol=tol, atol=tol)


def test_no_edge_removed_is_the_model_and_all_removed_is_the_corrupted_run(family_model):
    model, g, ids, corrupt = family_model
    abl = _outputs(model, g, corrupt)
    none = patched_forward(model, g, ids, abl, g.empty(), POS).logits[0]
    torch.testing.assert_close(none, _logits(model, ids), rtol=1e-10, atol=1e-10)
    everything = patched_forward(model, g, ids, abl, g.valid, POS).logits[0]
    torch.testing.assert_close(everything, _logits(model, corrupt), rtol=1e-9, atol=1e-9)


def test_removing_a_nodes_outgoing_edges_is_patching_the_node(family_model):
    model, g, ids, corrupt = family_model
    abl = _outputs(model, g, corrupt)
    # The MLP of layer 0 replaced by its corrupted output, by a plain hook.
    mlp = model.module("mlp_resid", 0)
    corrupted_out = {}
    h = mlp.register_forward_hook(lambda m, a, out: corrupted_out.setdefault("x", out))
    _logits(model, corrupt)
    h.remove()
    h = mlp.register_forward_hook(lambda m, a, out: corrupted_out["x"])
    want = _logits(model, ids)
    h.remove()
    removed = g.empty()
    removed[g.mlp_src(0)] = g.valid[g.mlp_src(0)]
    got = patched_forward(model, g, ids, abl, removed, POS).logits[0]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    if post_attention_norm(model, 0) is not None:
        return  # Gemma: a head's write passes a shared norm, so one head is no separable node output
    # Head 1 of layer 0: its slice of the o_proj input replaced by the corrupted one.
    dh = model.dims.d_head
    z = {}
    o_proj = model.module("attn_z", 0)
    h = o_proj.register_forward_pre_hook(lambda m, a: z.setdefault("c", a[0].clone()))
    _logits(model, corrupt)
    h.remove()

    def swap(m, a):
        x = a[0].clone()
        x[..., dh:2 * dh] = z["c"][..., dh:2 * dh]
        return (x,)

    h = o_proj.register_forward_pre_hook(swap)
    want = _logits(model, ids)
    h.remove()
    removed = g.empty()
    removed[g.head_src(0, 1)] = g.valid[g.head_src(0, 1)]
    got = patched_forward(model, g, ids, abl, removed, POS).logits[0]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_patching_after_the_norm_would_differ(family_model):
    """A removed edge is patched into the residual *before* the reader's norm: check it against a
    hand-computed MLP input built that way, at one position-independent edge (input → m1)."""
    model, g, ids, corrupt = family_model
    abl = _outputs(model, g, corrupt)
    clean = _outputs(model, g, ids)
    removed = g.empty()
    removed[0, g.mlp_dst(1)] = True
    seen = {}
    mlp = model.module("mlp_out", 1)
    h = mlp.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    patched_forward(model, g, ids, abl, removed, POS)
    h.remove()
    resid = {}
    h = model.norm("ln_mlp", 1).register_forward_pre_hook(lambda m, a: resid.setdefault("x", a[0]))
    _logits(model, ids)
    h.remove()
    with torch.no_grad():
        want = model.norm("ln_mlp", 1)(resid["x"] + abl[0] - clean[0])
    torch.testing.assert_close(seen["x"], want, rtol=1e-9, atol=1e-9)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.05, 0.95))
def test_batched_variants_equal_one_at_a_time(seed, density):
    model = tiny_model("llama", dtype=torch.float64, n_layers=2, n_heads=4, n_kv_heads=2, seed=seed % 7)
    g = HeadGraph.for_model(model)
    gen = torch.Generator().manual_seed(seed)
    ids, corrupt = torch.randint(1, 60, (2, 2, 6), generator=gen)
    abl = patched_forward(model, g, corrupt, None, None, POS[:6], record=True).outputs
    removed = (torch.rand(3, g.n_src, g.n_dst, generator=gen) < density) & g.valid
    batched = patched_forward(model, g, ids, abl, removed, POS[:6]).logits
    for k in range(3):
        single = patched_forward(model, g, ids, abl, removed[k], POS[:6]).logits[0]
        torch.testing.assert_close(batched[k], single, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_faithfulness_of_full_model_is_one_and_of_empty_circuit_zero(ablation):
    model = tiny_model("qwen2", dtype=torch.float64, n_layers=2, n_heads=4, n_kv_heads=2, init_scale=3.0)
    task = induction.dataset(model.tokenizer, n=6, seq_len=4, bos=None)
    p = EdgePatcher(model, task, ablation=ablation, batch_size=4)  # two prompt chunks
    g = p.graph
    assert p.faithfulness(g.valid) == pytest.approx(1.0, abs=1e-9)
    assert p.faithfulness(g.empty()) == pytest.approx(0.0, abs=1e-9)
    assert p.m_full == pytest.approx(float(task.metric(_logits(model, task.clean))), abs=1e-9)
    if ablation == "resample":  # every edge carrying the corrupted value is the corrupted run
        assert p.m_empty == pytest.approx(float(task.metric(_logits(model, task.corrupted))), abs=1e-9)


def test_ablation_values():
    model = tiny_model("gpt2", dtype=torch.float64, n_layers=2, n_heads=4, init_scale=3.0)
    task = induction.dataset(model.tokenizer, n=4, seq_len=4, bos=None)
    g = HeadGraph.for_model(model)
    zero = EdgePatcher(model, task, ablation="zero")
    assert zero.chunks[0].ablated.abs().max() == 0
    ref = task.clean.flip(0)
    mean = EdgePatcher(model, task, ablation="mean", reference=ref)
    want = patched_forward(model, g, ref, None, None, POS[:1], record=True).outputs.mean(1, keepdim=True)
    torch.testing.assert_close(mean.chunks[0].ablated, want)
    res = EdgePatcher(model, task, ablation="resample")
    torch.testing.assert_close(res.chunks[0].ablated, res.outputs(task.corrupted))
    with pytest.raises(ValueError, match="ablation"):
        EdgePatcher(model, task, ablation="gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reference"):
        EdgePatcher(model, task, ablation="mean", reference=task.clean[:, :3])


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_eap_scores_are_first_order_effects(family):
    """Shrink the ablation towards the clean run: EAP and EAP-IG scores become the exact effects."""
    model = tiny_model(family, dtype=torch.float64, n_layers=2, n_heads=4, n_kv_heads=2, init_scale=2.0)
    task = induction.dataset(model.tokenizer, n=4, seq_len=4, bos=None)
    p = EdgePatcher(model, task)
    for chunk in p.chunks:
        clean = p.outputs(chunk.ids)
        chunk.ablated = clean + 1e-3 * (chunk.ablated - clean)
    g = p.graph
    eap, ig = p.edge_scores("eap"), p.edge_scores("eap-ig", steps=3)
    top = eap.abs().flatten().topk(6).indices
    removed = torch.zeros(6, g.n_src, g.n_dst, dtype=torch.bool)
    removed.view(6, -1)[torch.arange(6), top] = True
    effect = p.evaluate(removed) - p.m_full
    torch.testing.assert_close(eap.flatten()[top].double(), effect, rtol=2e-2, atol=1e-9)
    torch.testing.assert_close(ig.flatten()[top].double(), effect, rtol=2e-2, atol=1e-9)
    assert all(p.requires_grad for p in model.hf.parameters())  # unfrozen again


@pytest.mark.parametrize("split_qkv", [True, False])
def test_per_prompt_edge_scores_are_each_prompts_own(split_qkv):
    # Resample ablation pairs each prompt with its own corrupted partner, so a prompt's scores alone are
    # those of a task of that one prompt; their mean over the prompts is the task's scores.
    model = tiny_model("llama", dtype=torch.float64, n_layers=2, n_heads=4, n_kv_heads=2, init_scale=2.0)
    task = induction.dataset(model.tokenizer, n=5, seq_len=4, bos=None)
    p = EdgePatcher(model, task, split_qkv=split_qkv, batch_size=3)
    for method in ("eap", "eap-ig"):
        each = p.edge_scores(method, steps=2, batch_size=2, per_prompt=True)
        assert each.shape == (task.n, p.graph.n_src, p.graph.n_dst)
        torch.testing.assert_close(each.mean(0), p.edge_scores(method, steps=2), rtol=1e-5, atol=1e-6)
        for i in (0, 3):
            alone = EdgePatcher(model, task.subset([i]), split_qkv=split_qkv).edge_scores(method, steps=2)
            torch.testing.assert_close(each[i], alone, rtol=1e-5, atol=1e-6)
        assert each.std(0).max() > 0  # the prompts differ


def test_resuming_from_a_prefix_is_exact():
    model = tiny_model("qwen3", dtype=torch.float64, n_layers=3, n_heads=4, n_kv_heads=2, init_scale=3.0)
    task = induction.dataset(model.tokenizer, n=4, seq_len=4, bos=None)
    p = EdgePatcher(model, task)
    g = p.graph
    base = g.valid & (torch.rand(g.n_src, g.n_dst, generator=torch.Generator().manual_seed(1)) < 0.5)
    prefixes = p.prefix(base)
    for layer in (1, 2, 3):  # 3 = only the logits' inputs change
        test = base.clone()
        later = torch.tensor([g.dst_layer(d) >= layer for d in range(g.n_dst)])
        test[:, later] = g.valid[:, later] & ~base[:, later]  # flip every decision from `layer` on
        a = p.evaluate(torch.stack([test, base]), start_layer=layer, prefixes=prefixes)
        b = p.evaluate(torch.stack([test, base]))
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        assert abs(float(a[0] - a[1])) > 1e-6  # the flipped edges did matter


def test_model_is_untouched_after_patching():
    model = tiny_model("llama", dtype=torch.float64, n_kv_heads=2)
    g = HeadGraph.for_model(model)
    ids = torch.randint(1, 60, (2, 5))
    before = _logits(model, ids)
    abl = patched_forward(model, g, ids.flip(0), None, None, POS[:5], record=True).outputs
    patched_forward(model, g, ids, abl, g.valid, POS[:5])
    torch.testing.assert_close(_logits(model, ids), before, rtol=0, atol=0)
    assert model.module("attn_pattern", 0).num_key_value_groups == 2
    logits, _ = model.record(ids[0], [("attn_z", 0)])  # nnsight tracing still works
    torch.testing.assert_close(logits, before[0])


def test_kl_and_faithfulness_formulas():
    logits = torch.randn(3, 2, 11)
    assert float(kl_to_clean(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_to_clean(logits, logits + torch.randn(3, 2, 11))) > 0
    assert faithfulness(2.0, 4.0, 0.0) == 0.5
    with pytest.raises(ValueError, match="undefined"):
        faithfulness(1.0, 1.0, 1.0)


def test_cpr_and_cmd_on_a_hand_made_curve():
    # f rises linearly from 0 at k=0 to 1 at k=1: CPR = 1/2, CMD = 1/2.
    assert area_under_curve([0.0, 0.5, 1.0], [0.0, 0.5, 1.0]) == pytest.approx((0.5, 0.5))
    # A perfect method (f = 1 at every budget) over MIB's budgets: CPR = 1 - 0.001, CMD = 0.
    cpr, cmd = area_under_curve(MIB_BUDGETS, [1.0] * len(MIB_BUDGETS))
    assert cpr == pytest.approx(0.999) and cmd == pytest.approx(0.0)
    # Overshooting counts against CMD: f = 2 everywhere on [0, 1].
    assert area_under_curve([0.0, 1.0], [2.0, 2.0]) == pytest.approx((2.0, 1.0))
    # Trapezoids by hand on three uneven budgets.
    cpr, cmd = area_under_curve([0.1, 0.2, 0.6], [0.2, 0.6, 0.9])
    assert cpr == pytest.approx(0.1 * 0.4 + 0.4 * 0.75)
    assert cmd == pytest.approx(0.1 * 0.6 + 0.4 * 0.25)
    assert area_under_curve([0.001, 0.01, 0.1], [0.0, 1.0, 1.0], log_scale=True)[0] == pytest.approx(1.5 * np.log(10))
    with pytest.raises(ValueError, match="increase"):
        area_under_curve([0.2, 0.1], [0.0, 1.0])
