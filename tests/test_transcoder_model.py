"""PLT and CLT shapes, decoding, and normalisation folding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transcoders import TranscoderConfig, build_transcoder

ACTIVATIONS = ["jumprelu", "topk", "batchtopk", "relu"]


def _random_transcoder(kind: str, activation: str, n_layers: int, d_model: int, d_features: int, seed: int):
    torch.manual_seed(seed)
    cfg = TranscoderConfig(kind=kind, n_layers=n_layers, d_model=d_model, d_features=d_features,
                           activation=activation, k=3, skip=True)
    tc = build_transcoder(cfg).double().eval()
    with torch.no_grad():
        for p in (tc.b_enc, tc.b_dec, tc.W_skip):
            p.normal_()
        tc.input_scale.uniform_(0.5, 2.0)
        tc.output_scale.uniform_(0.5, 2.0)
    return tc


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["plt", "clt"]), activation=st.sampled_from(ACTIVATIONS),
       n_layers=st.integers(1, 4), d_model=st.integers(2, 8), d_features=st.integers(3, 12), seed=st.integers(0, 99))
def test_decode_is_the_sum_of_decoder_vectors(kind, activation, n_layers, d_model, d_features, seed) -> None:
    """recon = Σ_sources act · decoder vector + b_dec + skip: the identity attribution relies on."""
    tc = _random_transcoder(kind, activation, n_layers, d_model, d_features, seed)
    x = torch.randn(4, n_layers, d_model, dtype=torch.float64)
    out = tc(x)
    rebuilt = tc.b_dec / tc.output_scale[:, None] + tc.skip(x)
    for s in range(n_layers):
        vecs = tc.decoder_vectors(s)
        assert vecs.shape[1] == (1 if kind == "plt" else n_layers - s)
        rebuilt = rebuilt.clone()
        rebuilt[:, s:s + vecs.shape[1]] += torch.einsum("nf,ftd->ntd", out.acts[:, s], vecs)
    torch.testing.assert_close(rebuilt, out.recon, rtol=1e-10, atol=1e-10)
    # Encoding one layer at a time agrees with encoding the stack.
    for layer in range(n_layers):
        torch.testing.assert_close(tc.encode(x[:, layer], layer).pre_acts, out.pre_acts[:, layer])


@pytest.mark.parametrize("kind", ["plt", "clt"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_folding_normalisation_keeps_outputs(kind: str, activation: str) -> None:
    tc = _random_transcoder(kind, activation, 3, 6, 10, seed=1)
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    before = tc(x)
    tc.fold_normalisation()
    after = tc(x)
    assert torch.all(tc.input_scale == 1) and torch.all(tc.output_scale == 1)
    torch.testing.assert_close(after.recon, before.recon)
    torch.testing.assert_close(after.acts, before.acts)


def test_topk_keeps_k_and_jumprelu_threshold_learns() -> None:
    tc = _random_transcoder("plt", "topk", 2, 6, 10, seed=2)
    acts = tc(torch.randn(7, 2, 6, dtype=torch.float64)).acts
    assert torch.all((acts != 0).sum(-1) <= 3)
    jr = _random_transcoder("clt", "jumprelu", 2, 6, 10, seed=3).train()
    out = jr(torch.randn(64, 2, 6, dtype=torch.float64) * 3)
    (out.recon.square().sum() + out.acts.sum()).backward()
    assert jr.log_threshold.grad is not None and jr.log_threshold.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_one_layer_at_a_time_matches_the_stack(kind: str) -> None:
    """decode_layer / skip_layer (what a replacement hook calls, layer by layer) agree with forward."""
    tc = _random_transcoder(kind, "jumprelu", 4, 6, 10, seed=4)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    out = tc(x)
    for layer in range(4):
        one = tc.decode_layer(out.acts[:, : layer + 1], layer) + tc.skip_layer(x[:, layer], layer)
        torch.testing.assert_close(one, out.recon[:, layer])
        # The same write from per-layer activations, through only the decoder rows that reach the layer.
        acts = {s: out.acts[:, s] for s in tc.sources(layer)}
        torch.testing.assert_close(tc.output_at(x[:, layer], acts, layer), out.recon[:, layer])
        assert list(tc.sources(layer)) == ([layer] if kind == "plt" else list(range(layer + 1)))
        for s in tc.sources(layer):
            assert torch.equal(tc.decoder_at(s, layer), tc.decoder_vectors(s)[:, layer - s])
    with pytest.raises(ValueError, match="write"):
        tc.decoder_at(2, 1)  # features never write to an earlier layer
    assert tc.writes_across_layers == (kind == "clt")


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_a_pass_inside_decoding_gives_the_same_outputs_and_gradients(kind: str) -> None:
    """``decoding()`` reads each decoder block once per pass (a view); what a pass computes through
    ``output_at``, and the decoders' gradient, are what they are without it."""
    tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=4, d_model=6, d_features=5, activation="relu"))
    with torch.no_grad():
        tc.output_scale.copy_(torch.tensor([1.0, 2.0, 0.5, 3.0]))  # unfolded: blocks are scaled per target
    g = torch.Generator().manual_seed(0)
    x, acts = torch.randn(3, 4, 6, generator=g), torch.rand(3, 4, 5, generator=g)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        tc.zero_grad(set_to_none=True)
        out = torch.stack([tc.output_at(x[:, l], acts.unbind(1), l) for l in range(4)], 1)
        (out * torch.arange(1.0, 7.0)).sum().backward()
        decoders = list(tc.W_dec) if kind == "clt" else [tc.W_dec]
        return out.detach(), [w.grad.clone() for w in decoders]

    plain = run()
    with tc.decoding():
        inside = run()
    torch.testing.assert_close(inside[0], plain[0])
    for a, b in zip(inside[1], plain[1], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(plain[0], tc.decode(acts) + tc.skip(x))  # and both are the decode
