"""Tier 1: the pieces of the head-role probes — sink-free attention shares and the IOI role
rules — on synthetic inputs where the right answer is known by construction."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuits.probes import IOI_ROLE_THRESHOLDS, role_base_rate, roles_from_scores, without_sink


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), sink=st.floats(0.0, 0.999))
def test_without_sink_gives_shares_of_the_non_sink_attention(seed, sink):
    gen = torch.Generator().manual_seed(seed)
    rest = torch.rand(3, 7, generator=gen)  # [query, key≥1]
    rest = rest / rest.sum(-1, keepdim=True) * (1 - sink)
    pattern = torch.cat([torch.full((3, 1), sink), rest], -1)  # rows sum to 1, `sink` on key 0
    shares = without_sink(pattern, floor=0.05)
    assert torch.all(shares[:, 0] == 0)
    if 1 - sink >= 0.05:
        torch.testing.assert_close(shares.sum(-1), torch.ones(3))
        torch.testing.assert_close(shares[:, 1:], rest / (1 - sink))
    else:  # a query that reads next to nothing is not blown up from noise
        assert torch.all(shares.sum(-1) <= 1 + 1e-6)


def _scores(**values: float) -> dict[str, torch.Tensor]:
    keys = ["att_name_mover", "att_s_inhibition", "att_end_to_s", "att_end_to_end", "raw_duplicate_token",
            "raw_induction", "raw_previous_token", "rep_duplicate_token", "rep_induction", "rep_previous_token",
            "rep_current_token", "copies_io", "suppresses_io", "copies_s", "suppresses_s", "amplifies_io",
            "damps_io"]
    unknown = set(values) - set(keys)
    assert not unknown, unknown
    return {k: torch.tensor([[values.get(k, 0.0)]]) for k in keys}


@pytest.mark.parametrize(("reads", "writes", "role"), [
    ("att_name_mover", "copies_io", "name mover"),
    ("att_name_mover", "suppresses_io", "negative name mover"),
    ("att_end_to_s", "copies_s", "S mover"),
    ("att_end_to_s", "suppresses_s", "copy suppression"),
    ("att_end_to_end", "amplifies_io", "amplifier"),
    ("att_end_to_end", "damps_io", "negative amplifier"),
])
def test_mover_roles_need_both_the_attention_and_the_ov_sign(reads, writes, role):
    t = IOI_ROLE_THRESHOLDS
    assert roles_from_scores(_scores(**{reads: t["attention"], writes: t["ov"]}), (0, 0)) == [role]
    # Either half alone is not the role: attention without the write, or the write without the read.
    assert roles_from_scores(_scores(**{reads: t["attention"] - 0.01, writes: 1.0}), (0, 0)) == []
    assert roles_from_scores(_scores(**{reads: 1.0, writes: t["ov"] - 0.01}), (0, 0)) == []


def test_pattern_roles_pass_on_ioi_prompts_or_on_repeats():
    t = IOI_ROLE_THRESHOLDS["pattern"]
    assert roles_from_scores(_scores(raw_induction=t), (0, 0)) == ["induction"]
    assert roles_from_scores(_scores(rep_duplicate_token=t), (0, 0)) == ["duplicate-token"]
    assert roles_from_scores(_scores(rep_previous_token=t, rep_current_token=t), (0, 0)) == [
        "previous-token", "current-token"]
    assert roles_from_scores(_scores(att_s_inhibition=IOI_ROLE_THRESHOLDS["attention"]), (0, 0)) == ["S-inhibition"]
    # Stricter thresholds are the caller's to set.
    assert roles_from_scores(_scores(raw_induction=t), (0, 0), {"pattern": t + 0.1}) == []


def test_role_base_rate():
    rate = role_base_rate({(0, 0): ["induction"], (0, 1): [], (1, 0): ["induction", "name mover"], (1, 1): []})
    assert rate == {"induction": 0.5, "name mover": 0.25, "any": 0.5}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_copying_and_suppression_from_one_pass_match_the_single_sign_probes(family):
    from circuits import tiny_model
    from circuits.probes.ov import residual_copying, residual_copying_both

    model = tiny_model(family, dtype=torch.float64, n_layers=2, n_heads=4, n_kv_heads=2 if family != "gpt2" else None,
                       init_scale=3.0)
    gen = torch.Generator().manual_seed(0)
    final = model.norm("ln_final")
    if getattr(final, "bias", None) is not None:  # GPT-2's LayerNorm: a bias that does not flip with the sign
        with torch.no_grad():
            final.bias.copy_(torch.randn(final.bias.shape, generator=gen, dtype=torch.float64))
    resid = torch.randn(model.n_layers, 16, model.d_model, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, model.dims.d_vocab, (16,), generator=gen)
    copy, suppress = residual_copying_both(model, resid, targets, k=5)
    assert 0 < float(copy.mean()) < 1 and 0 < float(suppress.mean()) < 1  # hits and misses both
    assert torch.equal(copy, residual_copying(model, resid, targets, k=5, sign=1.0))
    assert torch.equal(suppress, residual_copying(model, resid, targets, k=5, sign=-1.0))
    assert copy.shape == suppress.shape == (model.n_layers, model.n_heads)
