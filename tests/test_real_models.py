"""Real-model tier: the offline default model (and Gemma-3 from its packages) behave as published.

The hub test runs only where huggingface.co answers.
"""

from __future__ import annotations

import pytest
import torch

from circuits import Model, load_model
from circuits.models import hub_reachable

IOI = "When Mary and John went to the store, John gave a drink to"

pytestmark = pytest.mark.real_model


def _ioi(model: Model) -> tuple[str, float]:
    logits = model.logits(IOI)[-1]
    top = model.tokenizer.decode([int(logits.argmax())])
    return top, float(logits[model.token_id(" Mary")] - logits[model.token_id(" John")])


def test_default_model_is_smollm2(default_model: Model) -> None:
    d = default_model.dims
    assert default_model.spec.family == "llama"
    assert (d.n_layers, d.d_model, d.n_heads, d.n_kv_heads, d.d_mlp, d.d_vocab) == (30, 576, 9, 3, 1536, 49152)


def test_default_model_solves_ioi(default_model: Model) -> None:
    top, logit_diff = _ioi(default_model)
    assert top == " Mary"
    assert logit_diff > 3.0


def test_default_model_residual_stream_rebuilds(default_model: Model) -> None:
    sites = [(s, l) for l in range(default_model.n_layers) for s in ("attn_out", "mlp_resid", "resid_post")]
    _, rec = default_model.record(IOI, sites + [("resid_pre", 0)])
    resid = rec[("resid_pre", 0)].double()
    for layer in range(default_model.n_layers):
        resid = resid + rec[("attn_out", layer)] + rec[("mlp_resid", layer)]
        target = rec[("resid_post", layer)].double()
        assert float((resid - target).abs().max() / target.abs().max()) < 1e-5


def test_gemma3_short_name_loads_from_its_packages() -> None:
    model = load_model("gemma3-270m")
    assert model.spec.family == "gemma" and model.dims.n_layers == 18 and model.dims.d_model == 640
    ids = model.tokenize(IOI)
    assert int(ids[0, 0]) == model.tokenizer.bos_token_id, "Gemma needs <bos> first"
    top, logit_diff = _ioi(model)
    assert top == " Mary" and logit_diff > 3.0


@pytest.mark.hub
@pytest.mark.skipif(not hub_reachable(), reason="huggingface.co cannot be reached from this machine; "
                                                "GPT-2 weights ship in no package, so this needs the hub")
def test_gpt2_from_the_hub() -> None:
    model = load_model("gpt2")
    assert model.spec.family == "gpt2" and model.dims.n_layers == 12
    top, logit_diff = _ioi(model)
    assert top == " Mary" and logit_diff > 0
    assert torch.isfinite(model.logits("Hello")).all()
