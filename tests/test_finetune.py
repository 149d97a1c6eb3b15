"""End-to-end fine-tuning lowers the replacement model's KL on held-out text, and leaves the model alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuits.replacement.evaluate import evaluate
from circuits.replacement.finetune import finetune_kl
from test_transcoder_evaluate import _model, _rows, trained_set


@pytest.mark.parametrize(("kind", "params", "precision"), [("plt", "decoders", "fp32"), ("plt", "all", "fp32"),
                                                            ("clt", "decoders", "fp32"), ("clt", "decoders", "bf16")])
def test_finetuning_lowers_held_out_kl(tmp_path: Path, kind: str, params: str, precision: str) -> None:
    model = _model()
    tc, pool = trained_set(tmp_path, model, 20, kind)
    held_out = _rows(model, n=6, seed=7)

    def kl() -> float:
        return evaluate(model, tc, token_batches=iter(held_out), precision="fp32", progress=False).kl

    before = kl()
    weights = {k: v.clone() for k, v in model.hf.state_dict().items()}
    encoder = [p.detach().clone() for p in (tc.W_enc, tc.b_enc)]
    kls = finetune_kl(model, tc, token_batches=pool.split(4), lr=3e-3, params=params, precision=precision,
                      progress=False)
    after = kl()
    assert len(kls) == 24 and all(k >= 0 for k in kls)
    assert after < 0.8 * before, (before, after)
    for k, v in model.hf.state_dict().items():  # only the transcoders learn
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)
    # "decoders" leaves which features fire as trained, and hands the encoders back still trainable.
    moved = [not torch.equal(p, e) for p, e in zip((tc.W_enc, tc.b_enc), encoder, strict=True)]
    assert moved == ([True, True] if params == "all" else [False, False])
    assert tc.W_enc.requires_grad and tc.b_enc.requires_grad


def test_finetuning_refuses_an_unknown_choice_of_parameters(tmp_path: Path) -> None:
    model = _model()
    tc, pool = trained_set(tmp_path, model, 2)
    with pytest.raises(ValueError, match="'decoders' or 'all'"):
        finetune_kl(model, tc, token_batches=pool.split(4), params="encoders", progress=False)  # type: ignore[arg-type]


def test_finetuning_is_deterministic(tmp_path: Path) -> None:
    model = _model()
    tc, pool = trained_set(tmp_path, model, 20)
    other = type(tc)(tc.cfg)
    other.load_state_dict(tc.state_dict())
    batches = list(pool.split(4))[:2]
    finetune_kl(model, tc, token_batches=iter(batches), precision="fp32", progress=False)
    finetune_kl(model, other, token_batches=iter(batches), precision="fp32", progress=False)
    for a, b in zip(tc.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "skip"), [("plt", True), ("clt", False)])
def test_the_reconstruction_term_is_each_layers_normalised_error(kind: str, skip: bool) -> None:
    """The term a TopK set computes through the active-entry kernels is the dense one, value and gradient."""
    from circuits.replacement.finetune import _reconstruction
    from transcoders import TranscoderConfig, build_transcoder
    from transcoders.sparse import can_encode_active

    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=3, d_model=8, d_features=32, activation="topk", k=4,
                                           skip=skip))
    with torch.no_grad():
        tc.output_scale.copy_(torch.tensor([1.0, 3.0, 0.5]))
        tc.input_scale.copy_(torch.tensor([2.0, 1.0, 0.7]))
        tc.b_dec.normal_()
        if skip:
            tc.W_skip.normal_(std=0.1)
    assert can_encode_active(tc)
    x, y = torch.randn(20, 3, 8), torch.randn(20, 3, 8) * torch.tensor([1.0, 5.0, 0.2])[:, None]

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        tc.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in tc.parameters() if p.grad is not None]

    ours = _reconstruction(tc, x, y)
    ours_grads = grads(ours)
    dense = (((tc(x).recon - y).square().mean((0, 2))) / y.square().mean((0, 2))).mean()
    torch.testing.assert_close(ours, dense)
    for a, b in zip(ours_grads, grads(dense), strict=True):
        torch.testing.assert_close(a, b)
