"""End-to-end fine-tuning lowers the replacement model's KL on held-out text, and leaves the model alone."""

from __future__ import annotations

from pathlib import Path

import torch

from circuits.replacement.evaluate import evaluate
from circuits.replacement.finetune import finetune_kl
from test_transcoder_evaluate import _model, _rows, trained_set


def test_finetuning_lowers_held_out_kl(tmp_path: Path) -> None:
    model = _model()
    tc, pool = trained_set(tmp_path, model, 20)
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
    tc, pool = trained_set(tmp_path, model, 20)
    other = type(tc)(tc.cfg)
    other.load_state_dict(tc.state_dict())
    batches = list(pool.split(4))[:2]
    finetune_kl(model, tc, token_batches=iter(batches), progress=False)
    finetune_kl(model, other, token_batches=iter(batches), progress=False)
    for a, b in zip(tc.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
