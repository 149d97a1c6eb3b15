"""Evaluation: the replacement hooks really replace every MLP, and the figures mean what they say."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuits import tiny_model
from circuits.replacement.evaluate import evaluate
from transcoders import TrainConfig, Transcoder, TranscoderConfig, TranscoderShapeError, build_transcoder, train

D_VOCAB = 64


def _model():
    """A tiny model whose MLPs matter: larger MLP writes and sharper logits than a random init gives."""
    model = tiny_model("llama", n_layers=3, d_model=16, d_mlp=32, d_vocab=D_VOCAB, n_ctx=32, init_scale=4.0)
    with torch.no_grad():
        for layer in model.hf.model.layers:
            layer.mlp.down_proj.weight.mul_(4)
        model.hf.lm_head.weight.mul_(4)
    return model


@torch.no_grad()
def _sampled(model, n_rows: int, seed: int, n_pos: int = 12) -> torch.Tensor:
    """Text the model itself writes (sampled at temperature 1), so it predicts it better than any ablation."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, D_VOCAB, (n_rows, 1), generator=g)
    for _ in range(n_pos - 1):
        probs = model.hf(ids).logits[:, -1].float().softmax(-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], 1)
    return ids


def _rows(model=None, n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    return list(_sampled(model or _model(), 4 * n, seed).split(4))


def _zero_transcoder(kind: str = "plt"):
    tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=3, d_model=16, d_features=8, activation="topk", k=2))
    with torch.no_grad():
        for p in tc.parameters():
            p.zero_()
    return tc


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_a_zero_transcoder_is_zero_ablation(kind: str) -> None:
    model = _model()
    ev = evaluate(model, _zero_transcoder(kind), token_batches=iter(_rows(model)), precision="fp32", progress=False)
    assert ev.ce_replaced == pytest.approx(ev.ce_zero_ablated, rel=1e-6)
    assert ev.ce_recovered == pytest.approx(0.0, abs=1e-6)
    assert ev.kl > 0 and ev.ce_zero_ablated > ev.ce_model
    assert list(ev.layers.columns) == ["fvu", "l0", "dead_fraction"] and len(ev.layers) == 3
    assert (ev.layers.fvu >= 1).all()  # predicting zero misses the mean as well as the variance
    assert ev.layers.dead_fraction.tolist() == [1.0] * 3
    assert ev.n_tokens == 4 * 4 * (12 - 2)  # positions after the skipped first one, each predicting the next


def test_the_replacement_uses_the_transcoders_output() -> None:
    """A transcoder whose bias alone reproduces a constant write changes CE, and exactly as a hook would."""
    model = _model()
    tc = _zero_transcoder()
    with torch.no_grad():
        tc.b_dec.normal_(0, 3.0)
    ids = _rows(model, 1)[0]
    ev = evaluate(model, tc, token_batches=iter([ids]), precision="fp32", progress=False)
    handles = [model.module("mlp_resid", layer).register_forward_hook(
        lambda _m, _a, out, layer=layer: torch.cat([out[:, :1], tc.b_dec[layer].expand_as(out)[:, 1:]], 1))
        for layer in range(3)]
    try:
        logits = model.hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    lp = torch.log_softmax(logits[:, 1:-1].detach().float(), -1)
    ce = float(-lp.gather(-1, ids[:, 2:, None]).mean())
    assert ev.ce_replaced == pytest.approx(ce, rel=1e-5)


def trained_set(tmp_path: Path, model, steps: int, kind: str = "plt") -> tuple[Transcoder, torch.Tensor]:
    """A set of ``kind`` trained for ``steps`` steps on the model's own text, and that text ``[96, 12]``."""
    pool = _sampled(model, 96, seed=0)

    def rows():
        while True:
            yield from pool.split(4)

    cfg = TrainConfig(kind=kind, d_features=32, activation="topk", k=4, skip=True, n_tokens=44 * steps, seq_len=12,
                      model_batch=4, chunk_batches=3, batch_tokens=44, lr=1e-2, warmup_steps=3, precision="fp32")
    return train(model, cfg, run_dir=tmp_path, token_batches=rows, progress=False), pool


def test_a_trained_set_recovers_loss(tmp_path: Path) -> None:
    model = _model()
    tc, _ = trained_set(tmp_path, model, 60)
    held_out = _rows(model)
    ev = evaluate(model, tc, token_batches=iter(held_out), precision="fp32", progress=False)
    assert 0.3 < ev.ce_recovered <= 1.05
    assert (ev.layers.l0 <= 4).all() and (ev.layers.fvu < 1).all()
    assert 0 <= ev.kl < evaluate(model, _zero_transcoder(), token_batches=iter(held_out), precision="fp32",
                                 progress=False).kl
    assert "recovered" in str(ev) and set(ev.summary()) >= {"fvu", "l0", "ce_recovered", "kl"}


def test_a_set_for_another_shape_is_refused() -> None:
    model = tiny_model("llama", n_layers=2, d_model=16)
    with pytest.raises(TranscoderShapeError, match="Fix"):
        evaluate(model, _zero_transcoder(), token_batches=iter([torch.ones(1, 4, dtype=torch.long)]), progress=False)


def _spliced_kl(model, tc, ids: torch.Tensor, replaced: set[int]) -> float:
    """KL(model ‖ the model with the MLPs of ``replaced`` swapped for ``tc``), by plain hooks on the MLPs:
    each layer's features from that pass's own MLP input (a CLT's layer reads every layer below it)."""
    acts: dict[int, torch.Tensor] = {}

    def hook(module, args, out, layer):
        x = args[0]
        a = tc.activate(tc.pre_acts(x, layer), layer)
        acts[layer] = torch.cat([torch.zeros_like(a[:, :1]), a[:, 1:]], 1)  # no features at the first token
        if layer not in replaced:
            return out
        return torch.cat([out[:, :1], tc.output_at(x, acts, layer)[:, 1:]], 1)

    handles = [model.module("mlp_resid", layer).register_forward_hook(
        lambda m, a, o, layer=layer: hook(m, a, o, layer)) for layer in range(model.n_layers)]
    with torch.no_grad():
        try:
            lp = torch.log_softmax(model.hf(ids).logits[:, 1:-1].float(), -1)
        finally:
            for h in handles:
                h.remove()
        lp_model = torch.log_softmax(model.hf(ids).logits[:, 1:-1].float(), -1)
    return float((lp_model.exp() * (lp_model - lp)).sum() / lp[..., 0].numel())


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_per_layer_kl_is_each_layer_spliced_in_alone_and_left_out(kind: str) -> None:
    """``kl_alone`` and ``kl_restored`` equal the KL of the model with hooks that swap in the transcoders at
    one layer, or at every layer but one; and the all-replaced KL is the hooks at every layer."""
    model = _model()
    torch.manual_seed(0)
    tc = build_transcoder(TranscoderConfig(kind=kind, n_layers=3, d_model=16, d_features=8, activation="topk", k=2))
    ids = _rows(model, 1)[0]
    ev = evaluate(model, tc, token_batches=iter([ids]), precision="fp32", progress=False, per_layer=True)
    assert list(ev.layers.columns) == ["fvu", "l0", "dead_fraction", "kl_alone", "kl_restored"]
    assert ev.kl == pytest.approx(_spliced_kl(model, tc, ids, {0, 1, 2}), rel=1e-4)
    for layer in range(3):
        alone = _spliced_kl(model, tc, ids, {layer})
        restored = _spliced_kl(model, tc, ids, {0, 1, 2} - {layer})
        assert alone > 1e-3 and restored > 1e-3  # the random set changes the model at every layer
        assert ev.layers.kl_alone[layer] == pytest.approx(alone, rel=1e-4)
        assert ev.layers.kl_restored[layer] == pytest.approx(restored, rel=1e-4)
    # Variants split over several passes give the same figures as one pass.
    from circuits.replacement.evaluate import _layer_kl_sums, next_token_logprobs

    lp_model = next_token_logprobs(model.hf(ids).logits.detach(), 1)
    one = _layer_kl_sums(model, tc, ids, lp_model, 1)
    split = _layer_kl_sums(model, tc, ids, lp_model, 1, max_tokens=ids.numel())
    torch.testing.assert_close(split, one, rtol=1e-5, atol=1e-7)
