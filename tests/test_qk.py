"""QK attributions: the pair terms add up to the head's pre-softmax score, which is the model's (checked
against its projections and its frozen attention pattern), on all six families; on the tiny induction
model the induction head's key is the previous-token head's work and its query the current token."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _threads import one_thread  # noqa: F401
from test_attribution_exact import _model, _transcoder

from circuits.attribution import freeze
from circuits.attribution.qk import BIAS, qk_attribution
from circuits.models import TINY_FAMILIES
from test_induction import trained  # noqa: F401  (the trained induction model, a module fixture)

TOL = 1e-6
# Against the model itself: Llama, Qwen and Gemma norms compute in float32 even in a float64 model (the
# replacement model fits their scales in float64), and init_scale=5 makes cancellations that show it.
MODEL_TOL = 1e-4


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_pairs_add_up_to_the_models_score(family: str) -> None:
    model = _model(family, n_layers=2, n_heads=4, kv_ratio=2, d_head=4, seed=3)
    ids = torch.randint(1, 40, (1, 6), generator=torch.Generator().manual_seed(3))
    tc = _transcoder(model, ids, kind="clt", activation="jumprelu", skip=True, d_features=12,
                     output_site="mlp_out", seed=3)
    layer, head, q = 1, 3, 5
    # The model's own Q and K projection outputs for this head (before norms and rotary).
    seen = {}
    spec = model.spec
    if spec.v_chunk is None:
        hooks = [model.module(spec.q_proj, layer).register_forward_hook(lambda m, a, o: seen.update(q=o[0])),
                 model.module(spec.k_proj, layer).register_forward_hook(lambda m, a, o: seen.update(k=o[0]))]
    else:
        hooks = [model.module(spec.v_proj, layer).register_forward_hook(
            lambda m, a, o: seen.update(q=o[0, :, :model.d_model], k=o[0, :, model.d_model:2 * model.d_model]))]
    with torch.no_grad():
        model.hf(ids)
    for h in hooks:
        h.remove()
    dh, G = model.dims.d_head, model.n_heads // model.n_kv_heads
    scores = []
    for k in range(q + 1):
        qk = qk_attribution(ids, model, tc, layer=layer, head=head, query=q, key=k, dtype="float64",
                            loadings=k == 2)
        terms = qk.terms
        scale = float(np.abs(terms).sum())
        assert abs(terms.sum() - qk.score) <= TOL * scale
        assert qk.query_sources[-1] == BIAS and qk.key_sources[-1] == BIAS
        q_model = seen["q"][q, head * dh:(head + 1) * dh].double().numpy()
        k_model = seen["k"][k, (head // G) * dh:(head // G + 1) * dh].double().numpy()
        np.testing.assert_allclose(qk.projected[0], q_model, rtol=0, atol=MODEL_TOL * np.abs(q_model).max())
        np.testing.assert_allclose(qk.projected[1], k_model, rtol=0, atol=MODEL_TOL * np.abs(k_model).max())
        scores.append(qk.softcapped if qk.softcapped is not None else qk.score)
        if k == 2:
            # Each side's marginals split over heads: loadings plus direct = the marginal, for every source.
            for side, loads in (("query", qk.query_loadings), ("key", qk.key_loadings)):
                marg = qk.marginals(side)
                for src, entry in loads.items():
                    assert abs(sum(entry.values()) - marg[src]) <= TOL * scale, (side, src)
    # The rotary embeddings, query/key norms, scaling and soft-capping: the frozen pattern is their softmax.
    pattern = torch.tensor(scores).softmax(0).numpy()
    want = freeze(model, ids).patterns[layer, head, q, :q + 1].double().numpy()
    np.testing.assert_allclose(pattern, want, rtol=0, atol=MODEL_TOL)


def test_gemma2_softcap_is_reported() -> None:
    model = _model("gemma2", n_layers=1, n_heads=2, kv_ratio=1, d_head=4, seed=1)
    ids = torch.randint(1, 40, (1, 4), generator=torch.Generator().manual_seed(1))
    tc = _transcoder(model, ids, kind="plt", activation="jumprelu", skip=False, d_features=8,
                     output_site="mlp_out", seed=1)
    qk = qk_attribution(ids, model, tc, layer=0, head=1, key=1, dtype="float64", loadings=False)
    cap = model.hf.config.attn_logit_softcapping
    assert qk.softcapped == pytest.approx(cap * math.tanh(qk.score / cap), rel=1e-12)


def test_bad_positions_raise() -> None:
    model = _model("llama", n_layers=1, n_heads=2, kv_ratio=1, d_head=4, seed=1)
    ids = torch.randint(1, 40, (1, 4), generator=torch.Generator().manual_seed(1))
    tc = _transcoder(model, ids, kind="plt", activation="jumprelu", skip=False, d_features=8,
                     output_site="mlp_out", seed=1)
    with pytest.raises(ValueError, match="causal"):
        qk_attribution(ids, model, tc, layer=0, head=0, query=1, key=2)
    with pytest.raises(ValueError, match="no head"):
        qk_attribution(ids, model, tc, layer=3, head=0, key=0)


def test_induction_head_score_is_the_previous_token_heads_key(trained) -> None:  # noqa: F811
    """The trained induction model (tests/test_induction.py): at the second copy of a token, the induction
    head's score for the key after the token's first copy comes, on the key side, from the first copy's token
    moved there by the previous-token head, and on the query side from the current token itself."""
    from test_induction import V, _roles

    from transcoders import TranscoderConfig, build_transcoder

    model = trained.model
    prev, ind, _ = _roles(model)
    seq = torch.randperm(V - 1, generator=torch.Generator().manual_seed(5))[:8] + 1
    ids = torch.cat([torch.zeros(1, dtype=torch.long), seq, seq])[None]        # BOS, then the sequence twice
    j = 3
    q, k = 1 + 8 + j, 1 + j + 1                                                 # the key after the first copy
    # The MLPs are zero: a transcoder with no active features and no decoder bias leaves zero errors.
    cfg = TranscoderConfig(kind="plt", n_layers=model.n_layers, d_model=model.d_model, d_features=4,
                           activation="jumprelu", k=2, skip=False, model_name=model.name)
    tc = build_transcoder(cfg).eval()
    with torch.no_grad():
        tc.b_enc.fill_(-100.0)
        tc.b_dec.zero_()
    qk = qk_attribution(ids, model, tc, layer=1, head=ind, query=q, key=k, dtype="float64")
    assert qk.pattern > 0.3
    terms = qk.terms
    assert abs(terms.sum() - qk.score) <= TOL * np.abs(terms).sum()
    key_side, query_side = qk.marginals("key"), qk.marginals("query")
    # Key side: the first copy's token (one position before the key), carried by the previous-token head.
    assert next(iter(key_side)) == f"T@{k - 1}"
    via = qk.key_loadings[f"T@{k - 1}"]
    assert next(iter(via)) == f"L0.H{prev}" and via[f"L0.H{prev}"] > 0.5 * key_side[f"T@{k - 1}"] > 0
    # Query side: the current token, directly.
    assert next(iter(query_side)) == f"T@{q}" and query_side[f"T@{q}"] > 0
    assert qk.query_loadings[f"T@{q}"]["direct"] > 0.5 * query_side[f"T@{q}"]
    # The strongest pair: the current token matched against the previous token at the key.
    assert qk.pairs(1)[0][:2] == (f"T@{q}", f"T@{k - 1}")
    print(qk.table(5))


def test_pairs_as_a_graph_render(tmp_path) -> None:
    from graphs.draw import render

    model = _model("llama", n_layers=2, n_heads=2, kv_ratio=1, d_head=4, seed=2)
    ids = torch.randint(1, 40, (1, 5), generator=torch.Generator().manual_seed(2))
    tc = _transcoder(model, ids, kind="plt", activation="jumprelu", skip=False, d_features=8,
                     output_site="mlp_out", seed=2)
    qk = qk_attribution(ids, model, tc, layer=1, head=0, key=2, dtype="float64", loadings=False)
    g = qk.to_networkx(top=4)
    assert g.number_of_edges() == 4
    assert sorted(d["weight"] for *_, d in g.edges(data=True)) == sorted(t for *_, t in qk.pairs(4))
    assert "| query source | key source | term |" in qk.table(4)
    assert "digraph" in render(g, tmp_path / "qk.dot").read_text()


def test_top_pairs_are_the_full_sort_ties_included() -> None:
    """``pairs(top)`` picks the top terms without sorting all n_q * n_k of them: the same pairs, in the
    same order, as a stable full sort, also when ties straddle the cut."""
    import dataclasses

    model = _model("llama", n_layers=2, n_heads=2, kv_ratio=1, d_head=4, seed=2)
    ids = torch.randint(1, 40, (1, 5), generator=torch.Generator().manual_seed(2))
    tc = _transcoder(model, ids, kind="plt", activation="jumprelu", skip=False, d_features=8,
                     output_site="mlp_out", seed=2)
    qk = qk_attribution(ids, model, tc, layer=1, head=0, key=2, dtype="float64", loadings=False)
    # Rows of q and k in {-1, 0, 1, 2}: many equal |terms|, so ties fall across every cut.
    rng = np.random.default_rng(0)
    tied = dataclasses.replace(qk, q=rng.integers(-1, 3, qk.q.shape).astype(float),
                               k=rng.integers(-1, 3, qk.k.shape).astype(float))
    for case in (qk, tied):
        terms = case.terms
        order = np.argsort(-np.abs(terms), axis=None, kind="stable")
        for top in (1, 3, 7, terms.size - 1, terms.size, terms.size + 5):
            i, j = np.unravel_index(order[:top], terms.shape)
            want = [(case.query_sources[a], case.key_sources[b], float(terms[a, b])) for a, b in zip(i, j)]
            assert case.pairs(top) == want
