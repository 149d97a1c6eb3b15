"""``intervene``: a clamp moves the logits by what the attribution graph predicts.

With frozen attention and no feature crossing its threshold the replacement model is linear, so a
clamp δ on feature s changes the (demeaned) logits by the total effect through the graph:
``Δact = (I − M)⁻¹ e_s δ`` over features, ``M = A_ff diag(1/act)`` (an edge is its source's
activation times a per-unit weight), then ``Δlogit = A_lf diag(1/act) Δact``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _threads import one_thread  # noqa: F401
from test_attribution_exact import _model, _transcoder

from circuits import intervene, trace
from circuits.intervention import InterventionError


def _setup(family: str, kind: str = "clt", seed: int = 2, init_scale: float | None = None):
    model = _model(family, n_layers=3, n_heads=4, kv_ratio=2, d_head=4, seed=seed)
    ids = torch.randint(1, 40, (1, 6), generator=torch.Generator().manual_seed(seed))
    tc = _transcoder(model, ids, kind=kind, activation="jumprelu", skip=True, d_features=16,
                     output_site="mlp_resid", seed=seed)
    graph = trace(ids, model, tc, dtype="float64", device="cpu", max_logits=5, logit_prob=0.999)
    return model, tc, ids, graph


def _predicted(graph, source: int, delta: float) -> np.ndarray:
    """``[n_logits]`` the graph's total effect of changing feature ``source``'s activation by ``delta``."""
    A = graph.adjacency.toarray()
    f, lg = graph.span("feature"), graph.span("logit")
    per_unit = 1.0 / graph.nodes["activation"][f]
    M = A[f, f] * per_unit[None, :]
    e = np.zeros(graph.n_features)
    e[source] = delta
    d_act = np.linalg.solve(np.eye(graph.n_features) - M, e)
    return A[lg, f] @ (per_unit * d_act)


def _demeaned(logits: torch.Tensor, graph) -> np.ndarray:
    last = logits[-1].double()
    return (last - last.mean()).numpy()[graph.nodes["token_id"][graph.span("logit")]]


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_frozen_clamp_moves_logits_as_the_graph_predicts(family: str, kind: str) -> None:
    model, tc, ids, graph = _setup(family, kind)
    n = graph.nodes
    # An early feature, so paths through downstream features count.
    source = int(np.argmin(n["layer"][graph.span("feature")]))
    layer, pos, feat, act = (n[k][source].item() for k in ("layer", "position", "feature", "activation"))
    delta = 1e-4 * abs(act)
    # Added rather than set: Llama's norms round in float32, so the frozen world's activations sit
    # ~1e-8 (relative) off the graph's; a set would add that offset to delta.
    result = intervene(ids, {(layer, pos, feat): delta}, model, tc, mode="add", freeze_attention=True)
    measured = _demeaned(result.logits, graph) - _demeaned(result.clean_logits, graph)
    predicted = _predicted(graph, source, delta)
    direct = graph.adjacency.toarray()[graph.span("logit"), source] / act * delta
    scale = np.abs(predicted).max()
    assert scale > 0
    np.testing.assert_allclose(measured, predicted, rtol=0, atol=1e-6 * scale)
    if layer < model.n_layers - 1:  # the check has teeth: paths through features matter
        assert np.abs(predicted - direct).max() > 1e-4 * scale


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_unfrozen_clamp_is_close_to_the_graph(family: str) -> None:
    """With attention and norms recomputed, a small clamp moves the logits about as the graph says.
    Only about: the graph leaves out how patterns and norm scales move (on these tiny random models
    with large weights, tens of percent), so this checks agreement in direction, not size."""
    model, tc, ids, graph = _setup(family, "plt")
    n = graph.nodes
    source = int(np.argmin(n["layer"][graph.span("feature")]))
    layer, pos, feat, act = (n[k][source].item() for k in ("layer", "position", "feature", "activation"))
    delta = 1e-4 * abs(act)
    result = intervene(ids, {(layer, pos, feat): act + delta}, model, tc)
    measured = _demeaned(result.logits, graph) - _demeaned(result.clean_logits, graph)
    predicted = _predicted(graph, source, delta)
    assert np.corrcoef(measured, predicted)[0, 1] > 0.9
    assert np.abs(measured - predicted).max() < np.abs(predicted).max()
    # Small enough to be in the linear regime: twice the clamp, twice the change.
    twice = intervene(ids, {(layer, pos, feat): act + 2 * delta}, model, tc)
    measured2 = _demeaned(twice.logits, graph) - _demeaned(twice.clean_logits, graph)
    np.testing.assert_allclose(measured2, 2 * measured, rtol=0, atol=5e-2 * np.abs(measured).max())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("freeze_attention", [True, False])
def test_clamp_to_current_value_changes_nothing(family: str, freeze_attention: bool) -> None:
    model, tc, ids, graph = _setup(family)
    # Llama's norms round in float32 even in float64 models: its frozen world sits ~1e-6 off the real one.
    atol = 1e-5 if freeze_attention and family == "llama" else 1e-10
    n = graph.nodes
    clamps = {(n["layer"][i].item(), n["position"][i].item(), n["feature"][i].item()): n["activation"][i].item()
              for i in range(graph.n_features)[::2]}
    result = intervene(ids, clamps, model, tc, freeze_attention=freeze_attention)
    torch.testing.assert_close(result.logits, result.clean_logits, rtol=0, atol=atol)
    # The clean logits are the model's own.
    torch.testing.assert_close(result.clean_logits, model.logits(ids), rtol=0, atol=1e-4 if freeze_attention else 1e-10)
    # Adding zero and scaling by one do nothing either.
    for mode, value in (("add", 0.0), ("scale", 1.0)):
        same = intervene(ids, {k: value for k in clamps}, model, tc, mode=mode, freeze_attention=freeze_attention)
        torch.testing.assert_close(same.logits, same.clean_logits, rtol=0, atol=1e-10)


def test_generation_holds_the_clamp() -> None:
    model, tc, ids, graph = _setup("gpt2")
    # No intervention: greedy generation in the replacement model is the model's own.
    plain = intervene(ids, {}, model, tc, generate=4)
    expected = ids[0]
    for _ in range(4):
        expected = torch.cat([expected, model.logits(expected)[-1].argmax()[None]])
    assert plain.generated.tolist() == expected[ids.shape[1]:].tolist()
    assert plain.text == model.tokenizer.decode(plain.generated.tolist())
    # A large clamp at every position, generated ones included, changes what is generated.
    n = graph.nodes
    last = graph.n_features - 1
    key = (n["layer"][last].item(), None, n["feature"][last].item())
    steered = intervene(ids, {key: 50.0}, model, tc, generate=4)
    assert steered.generated.shape == (4,)
    assert not torch.equal(steered.logits, plain.logits)
    with pytest.raises(InterventionError, match="freeze_attention=False"):
        intervene(ids, {key: 1.0}, model, tc, generate=2, freeze_attention=True)


def test_bad_indices_name_the_range() -> None:
    model, tc, ids, _ = _setup("llama")
    with pytest.raises(InterventionError, match=r"layers 0\.\.2"):
        intervene(ids, {(3, 0, 0): 1.0}, model, tc)
    with pytest.raises(InterventionError, match=r"features 0\.\.15"):
        intervene(ids, {(0, 0, 16): 1.0}, model, tc)
    with pytest.raises(InterventionError, match="outside the prompt's 6 tokens"):
        intervene(ids, {(0, 6, 0): 1.0}, model, tc)
    with pytest.raises(InterventionError, match="unknown mode"):
        intervene(ids, {(0, 0, 0): 1.0}, model, tc, mode="double")
