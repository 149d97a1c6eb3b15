"""Bad input to trace() gets an error that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from _threads import one_thread  # noqa: F401  (small tensors: one torch thread is faster on a shared CPU)

import transcoders
from circuits import DeviceError, PromptError, tiny_model, trace
from circuits.attribution import TranscoderMismatchError, TranscodersMissingError
from transcoders import TranscoderConfig, build_transcoder


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2, d_model=32, n_ctx=16)


def _tc(model, **overrides):
    cfg = {"kind": "plt", "n_layers": model.n_layers, "d_model": model.d_model, "d_features": 8,
           "activation": "topk", "k": 2, "model_name": model.name}
    cfg.update(overrides)
    return build_transcoder(TranscoderConfig(**cfg))


@pytest.mark.parametrize("prompt", ["", "  \n "])
def test_empty_prompt(model, prompt: str) -> None:
    with pytest.raises(PromptError, match="prompt is empty: pass some text"):
        trace(prompt, model, _tc(model))


def test_empty_token_list(model) -> None:
    with pytest.raises(PromptError, match="no tokens"):
        trace([], model, _tc(model))


def test_prompt_longer_than_the_context(model) -> None:
    with pytest.raises(PromptError, match="17 tokens but .* context of 16: shorten it"):
        trace(" ".join(["t1"] * 17), model, _tc(model))


def test_transcoders_with_too_few_layers(model) -> None:
    with pytest.raises(TranscoderMismatchError, match="have 3 layers but tiny-llama has 2.*Fix: pass transcoders"):
        trace("t1 t2", model, _tc(model, n_layers=3))


def test_transcoders_of_another_width(model) -> None:
    with pytest.raises(TranscoderMismatchError, match="d_model=48 but tiny-llama has d_model=32"):
        trace("t1 t2", model, _tc(model, d_model=48))


def test_transcoders_trained_on_another_model(model) -> None:
    with pytest.raises(TranscoderMismatchError, match="trained on 'gpt2', not 'tiny-llama'.*load_transcoders"):
        trace("t1 t2", model, _tc(model, model_name="gpt2"))


def test_transcoders_named_by_hub_id_are_accepted() -> None:
    """A hub id and a short load name of the same model match (last path part, any case)."""
    from circuits.attribution.checks import same_model

    model = tiny_model("llama", n_layers=1)
    model.name = "smollm2-135m-instruct"
    assert same_model("HuggingFaceTB/SmolLM2-135M-Instruct", model)
    assert not same_model("openai-community/gpt2", model)


def test_transcoders_on_other_sites(model) -> None:
    with pytest.raises(TranscoderMismatchError, match="read .*mlp_in.*these read 'resid_pre'"):
        trace("t1 t2", model, _tc(model, input_site="resid_pre"))


def test_not_a_transcoder(model) -> None:
    with pytest.raises(TypeError, match="must be a transcoders.Transcoder.*got dict"):
        trace("t1 t2", model, {"W_enc": torch.zeros(1)})


def test_no_default_transcoders(model, monkeypatch) -> None:
    monkeypatch.delattr(transcoders, "load_transcoders", raising=False)
    with pytest.raises(TranscodersMissingError, match="Fix: pass transcoders="):
        trace("t1 t2", model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so 'cuda' is a valid device")
def test_device_that_is_not_there(model) -> None:
    with pytest.raises(DeviceError, match="not present.*device='cpu'"):
        trace("t1 t2", model, _tc(model), device="cuda")


def test_device_that_is_not_a_device(model) -> None:
    with pytest.raises(DeviceError, match="not a device name"):
        trace("t1 t2", model, _tc(model), device="gpu-please")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("max_logits", 0, "max_logits must be at least 1"),
    ("logit_prob", 0.0, "logit_prob must be in"),
    ("max_feature_nodes", -1, "max_feature_nodes must be None"),
    ("batch_size", 0, "batch_size must be None"),
    ("dtype", "int8", "not a float dtype"),
])
def test_bad_options(model, option: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trace("t1 t2", model, _tc(model), **{option: value})


def test_a_good_call_still_works(model) -> None:
    """The same fixtures with nothing wrong trace fine, and leave the transcoders untouched."""
    tc = _tc(model)
    before = {k: v.clone() for k, v in tc.state_dict().items()}
    graph = trace("t1 t2 t3", model, tc, dtype="float64")
    assert graph.n_features > 0 and graph.count("logit") >= 1
    assert all(v.dtype == torch.float32 for v in tc.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in tc.state_dict().items())


def test_attention_without_patterns() -> None:
    """Patterns are frozen from the forward pass; fused attention kernels do not return them."""
    from circuits.attribution import FreezeError

    model = tiny_model("llama", n_layers=2)
    model.hf.set_attn_implementation("sdpa")
    with pytest.raises(FreezeError, match="attn_implementation='eager'"):
        trace("t1 t2", model, _tc(model))


def test_attention_probes_without_patterns() -> None:
    """The probes read patterns from the same forward; a fused kernel gets the same advice."""
    from circuits.probes import attention_patterns

    model = tiny_model("llama", n_layers=2)
    model.hf.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="no attn_pattern at layer 0.*attn_implementation='eager'"):
        attention_patterns(model, torch.tensor([[1, 2, 3]]))


def test_a_wrong_norm_kind_in_the_map() -> None:
    """If the architecture map says LayerNorm for an RMSNorm model, freezing notices."""
    import dataclasses

    from circuits.attribution import FreezeError

    model = tiny_model("llama", n_layers=2)
    model.spec = dataclasses.replace(model.spec, norm_kind="layer")
    with pytest.raises(FreezeError, match="does not compute as a 'layer' norm.*norm_kind.*arch.py"):
        trace("t1 t2 t3", model, _tc(model))


def test_memory_budget_too_small(model) -> None:
    """Refused before the forward pass, with the estimate, the budget and what to change."""
    from circuits.attribution import MemoryBudgetError

    with pytest.raises(MemoryBudgetError, match=r"(?s)does not fit in memory: it needs at least .* over the budget "
                                                r"of 1.00 KiB.*Fix: .*max_feature_nodes=.*a larger budget"):
        trace("t1 t2 t3", model, _tc(model), memory_budget="1KiB")


def test_memory_budget_that_is_not_a_size(model) -> None:
    with pytest.raises(ValueError, match="cannot read 'lots' as a memory size. Fix: pass bytes, or e.g. '8GiB'"):
        trace("t1 t2", model, _tc(model), memory_budget="lots")


def test_position_policy_and_circuit_tracers_bos() -> None:
    """No features at the first position (its MLP output is the error node there); prepend_bos puts a
    BOS first (circuit-tracer's convention), so the prompt's first word gets features."""
    model = tiny_model("llama", n_layers=2, d_model=32, n_ctx=16)
    model.tokenizer.bos_token_id = 9   # the tiny tokenizer has none of its own
    tc = _tc(model)
    graph = trace("t1 t2 t3 t4", model, tc)
    feats = graph.nodes["kind"] == "feature"
    assert graph.n_features > 0 and (graph.nodes["position"][feats] >= 1).all()
    assert graph.metadata["feature_start"] == 1
    everywhere = trace("t1 t2 t3 t4", model, tc, feature_start=0)
    assert (everywhere.nodes["position"][everywhere.nodes["kind"] == "feature"] == 0).any()
    bos = trace("t1 t2 t3 t4", model, tc, prepend_bos=True)
    assert list(bos.tokens) == [model.tokenizer.bos_token_id] + list(graph.tokens)
    # The prompt's first word now sits at position 1, where it has features; position 0 (the BOS) has none.
    bos_feats = bos.nodes["position"][bos.nodes["kind"] == "feature"]
    assert (bos_feats >= 1).all() and (bos_feats == 1).any()
    with pytest.raises(ValueError, match="feature_start must be a whole number"):
        trace("t1 t2", model, tc, feature_start=-1)


def test_prepend_bos_without_a_bos_token(model) -> None:
    assert model.tokenizer.bos_token_id is None   # the tiny tokenizer has no BOS
    with pytest.raises(PromptError, match="no BOS token to prepend"):
        trace("t1 t2", model, _tc(model), prepend_bos=True)
