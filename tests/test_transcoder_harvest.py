"""Harvesting (MLP input, output) pairs: one batched forward, the same tensors as a traced forward."""

from __future__ import annotations

import pytest
import torch

from circuits import tiny_model
from circuits.models import PromptError
from transcoders import NonFiniteError, harvest
from transcoders.harvest import harvest_with_logits


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_record_batch_matches_record(family: str) -> None:
    model = tiny_model(family, n_layers=3, init_scale=3.0)
    ids = torch.randint(1, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    sites = [(s, layer) for layer in range(3) for s in ("mlp_in", "mlp_resid", "resid_pre")]
    batched = model.record_batch(ids, sites)
    for b in range(2):
        _, single = model.record(ids[b], sites)
        for key in sites:
            torch.testing.assert_close(batched[key][b], single[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_harvest_with_logits_is_harvest_and_the_models_logits(family: str) -> None:
    """One forward gives what harvest and the model's own call give (Gemma-2's logits softcapped, as the
    model returns them, not the unembedding's raw output)."""
    model = tiny_model(family, n_layers=3, init_scale=3.0)
    if family == "gemma2":
        assert model.hf.config.final_logit_softcapping  # the case where the unembedding's output differs
    ids = torch.randint(1, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    x, y, logits = harvest_with_logits(model, ids, precision="fp32")
    x2, y2 = harvest(model, ids, precision="fp32")
    torch.testing.assert_close(x, x2, rtol=0, atol=0)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(logits, model.hf(ids).logits, rtol=1e-6, atol=1e-6)


def test_record_batch_stops_after_the_last_site() -> None:
    model = tiny_model("llama", n_layers=3)
    calls: list[int] = []
    h = model.module("mlp_in", 2).register_forward_hook(lambda *_: calls.append(2))
    try:
        model.record_batch(torch.ones(1, 4, dtype=torch.long), [("mlp_resid", 1)])
        assert calls == [], "layer 2 ran although only layer 1 was asked for"
        model.record_batch(torch.ones(1, 4, dtype=torch.long), [("mlp_resid", 1)], stop_early=False)
        assert calls == [2]
    finally:
        h.remove()


def test_record_batch_bad_shapes() -> None:
    model = tiny_model("llama", n_ctx=16)
    with pytest.raises(PromptError, match=r"\[batch, n_pos\]"):
        model.record_batch(torch.ones(4, dtype=torch.long), [("mlp_in", 0)])
    with pytest.raises(PromptError, match="context of 16"):
        model.record_batch(torch.ones(1, 17, dtype=torch.long), [("mlp_in", 0)])


def test_harvest_stacks_layers_and_drops_the_first_position() -> None:
    model = tiny_model("llama", n_layers=3, d_model=16)
    ids = torch.randint(1, 60, (2, 5))
    x, y = harvest(model, ids, precision="fp32")
    assert x.shape == y.shape == (2 * 4, 3, 16)
    rec = model.record_batch(ids, [("mlp_in", 2), ("mlp_resid", 0)])
    torch.testing.assert_close(x.reshape(2, 4, 3, 16)[:, :, 2], rec[("mlp_in", 2)][:, 1:])
    torch.testing.assert_close(y.reshape(2, 4, 3, 16)[:, :, 0], rec[("mlp_resid", 0)][:, 1:])
    xb, _ = harvest(model, ids, precision="bf16")
    torch.testing.assert_close(xb.float(), x, rtol=0.05, atol=0.05)  # bf16 autocast: close, not equal


def test_nan_activations_name_the_layer() -> None:
    model = tiny_model("llama", n_layers=3)
    with torch.no_grad():
        model.hf.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"mlp_resid activations in harvest contain NaN.*first at layer 1.*Fix"):
        harvest(model, torch.randint(1, 60, (1, 6)), precision="fp32")


class _Recorded:
    """A stand-in model whose every site holds the same given tensor ``[B, T, D]``."""

    def __init__(self, value: torch.Tensor, n_layers: int = 2) -> None:
        self.value, self.device = value, torch.device("cpu")
        self.dims = type("Dims", (), {"n_layers": n_layers, "d_model": value.shape[-1]})()

    def record_batch(self, ids, sites, *, stop_early=True):
        return {key: self.value.clone() for key in sites}


def test_huge_finite_activations_are_not_called_non_finite() -> None:
    # Their sum overflows to infinity, which only sends harvest to the full check; nothing is wrong.
    value = torch.full((1, 5, 4), 3e38)
    x, y = harvest(_Recorded(value), torch.ones(1, 5, dtype=torch.long), precision="fp32")
    assert torch.isinf(x.sum()) and torch.isfinite(x).all() and x.shape == (4, 2, 4)


def test_an_infinity_is_named_whatever_the_sum() -> None:
    value = torch.ones(1, 5, 4)
    value[0, 3, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="first at layer 0"):
        harvest(_Recorded(value), torch.ones(1, 5, dtype=torch.long), precision="fp32")
