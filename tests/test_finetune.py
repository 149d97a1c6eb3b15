"""End-to-end fine-tuning lowers the replacement model's KL on held-out text, and leaves the model alone."""

from __future__ import annotations

from pathlib import Path

import torch

from circuits.replacement.evaluate import evaluate
from circuits.replacement.finetune import finetune_kl
from test_transcoder_evaluate import _model, _rows, _sampled
from transcoders import TrainConfig, train


def _trained(tmp_path: Path, model):
    pool = _sampled(model, 96, seed=0)

    def rows():
        while True:
            yield from pool.split(4)

    cfg = TrainConfig(kind="plt", d_features=32, activation="topk", k=4, skip=True, n_tokens=44 * 20, seq_len=12,
                      model_batch=4, chunk_batches=3, batch_tokens=44, lr=1e-2, warmup_steps=3, precision="fp32")
    return train(model, cfg, run_dir=tmp_path, token_batches=rows, progress=False), pool


def test_finetuning_lowers_held_out_kl(tmp_path: Path) -> None:
    model = _model()
    tc, pool = _trained(tmp_path, model)
    held_out = _rows(model, n=6, seed=7)

    def kl() -> float:
        return evaluate(model, tc, token_batches=iter(held_out), precision="fp32", progress=False).kl

    before = kl()
    weights = {k: v.clone() for k, v in model.hf.state_dict().items()}
    kls = finetune_kl(model, tc, token_batches=pool.split(4), lr=3e-3, progress=False)
    after = kl()
    assert len(kls) == 24 and all(k >= 0 for k in kls)
    assert after < 0.8 * before, (before, after)
    for k, v in model.hf.state_dict().items():  # only the transcoders learn
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)


def test_finetuning_is_deterministic(tmp_path: Path) -> None:
    model = _model()
    tc, pool = _trained(tmp_path, model)
    other = type(tc)(tc.cfg)
    other.load_state_dict(tc.state_dict())
    batches = list(pool.split(4))[:2]
    finetune_kl(model, tc, token_batches=iter(batches), progress=False)
    finetune_kl(model, other, token_batches=iter(batches), progress=False)
    for a, b in zip(tc.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
