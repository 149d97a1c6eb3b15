"""The replacement model's forward with edits: ablations at every granularity, and its switches."""

from __future__ import annotations

import pytest
import torch
from _threads import one_thread  # noqa: F401
from test_attribution_exact import _model, _transcoder

from circuits.replacement import (
    CleanState,
    EditBuilder,
    PatchError,
    ablate,
    ablation_edits,
    ablation_values,
    forward,
)


def _setup(family: str, kind: str = "clt"):
    model = _model(family, n_layers=3, n_heads=4, kv_ratio=2, d_head=4, seed=7)
    gen = torch.Generator().manual_seed(7)
    ids, corrupted = torch.randint(1, 40, (1, 6), generator=gen), torch.randint(1, 40, (1, 6), generator=gen)
    tc = _transcoder(model, ids, kind=kind, activation="jumprelu", skip=True, d_features=16,
                     output_site="mlp_resid", seed=7)
    return model, tc, ids, corrupted


def _every_node(clean: CleanState) -> list[str]:
    L, P, F = clean.n_layers, clean.n_pos, clean.d_features
    return ([f"T@{p}" for p in range(P)] + [f"E{l}@{p}" for l in range(L) for p in range(P)]
            + [f"F{l}.{f}@{p}" for l in range(L) for p in range(clean.feature_start, P) for f in range(F)])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("features", ["recompute", "frozen"])
def test_resampling_every_node_is_the_corrupted_run(family: str, features: str) -> None:
    model, tc, ids, corrupted = _setup(family)
    clean = CleanState.of(model, tc, ids)
    values = ablation_values(clean, "resample", corrupted=corrupted)
    logits = ablate(clean, [[], _every_node(clean)], values, features=features)
    torch.testing.assert_close(logits[0], model.logits(ids)[-1], rtol=0, atol=1e-10)
    torch.testing.assert_close(logits[1], model.logits(corrupted)[-1], rtol=0, atol=1e-10)


def test_sets_batched_equal_sets_alone() -> None:
    model, tc, ids, corrupted = _setup("llama", "plt")
    clean = CleanState.of(model, tc, ids)
    on = clean.mlps.mask.nonzero().tolist()
    sets = [[f"F{l}.{f}@{p}" for p, l, f in on[:3]], ["E1@2", "T@0"], [f"F{on[-1][1]}.{on[-1][2]}@{on[-1][0]}", "E0@5"]]
    values = ablation_values(clean, "mean", reference=[ids, corrupted])
    together = ablate(clean, sets, values, batch_size=3)
    alone = torch.cat([ablate(clean, [s], values) for s in sets])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)
    assert not torch.allclose(together[0], together[1])


def test_mean_values_average_per_position_within_groups() -> None:
    model, tc, ids, corrupted = _setup("gpt2")
    clean = CleanState.of(model, tc, ids)
    other = CleanState.of(model, tc, corrupted)
    values = ablation_values(clean, "mean", reference=[ids, corrupted])
    torch.testing.assert_close(values.acts, (clean.mlps.acts + other.mlps.acts) / 2)
    torch.testing.assert_close(values.errors, (clean.mlps.errors + other.mlps.errors) / 2)
    # Within template groups: group 1 holds only the corrupted prompt, so its mean is that prompt.
    grouped = ablation_values(clean, "mean", reference=[ids, corrupted], groups=torch.tensor([0, 1]), group=1)
    torch.testing.assert_close(grouped.acts, other.mlps.acts)
    torch.testing.assert_close(grouped.embed, other.frozen.embed)
    with pytest.raises(PatchError, match="equal length"):
        ablation_values(clean, "mean", reference=[ids, corrupted[:, :3]])
    zero = ablation_values(clean)
    assert not zero.acts.any() and not zero.errors.any() and not zero.embed.any()


def test_bad_requests_say_how_to_fix_them() -> None:
    model, tc, ids, corrupted = _setup("llama", "plt")
    clean = CleanState.of(model, tc, ids)
    values = ablation_values(clean)
    with pytest.raises(PatchError, match="F\\{layer\\}"):
        ablation_edits(values, [["L12"]])
    with pytest.raises(PatchError, match="equal length"):
        ablation_values(clean, "resample", corrupted=corrupted[:, :4])
    with pytest.raises(PatchError, match="reference="):
        ablation_values(clean, "mean")
    with pytest.raises(PatchError, match="F0.99@0 is out of range"):
        ablation_edits(values, [["F0.99@0"]])
    with pytest.raises(PatchError, match="attention='live'"):
        forward(model, None, clean=clean, ids=torch.cat([ids[0], ids[0, :1]]), attention="frozen",
                features="recompute", errors="clean")
    with pytest.raises(PatchError, match="no features"):   # the first position keeps its true MLP output
        forward(model, None, clean=clean, edits=ablation_edits(values, [["F0.1@0"]]), attention="live",
                features="recompute", errors="clean")
    with pytest.raises(PatchError, match="clean="):
        forward(model, tc, ids=ids, attention="frozen", features="recompute", errors="live")
    with pytest.raises(PatchError, match="unknown errors"):
        forward(model, None, clean=clean, attention="live", features="recompute", errors="exact")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_unedited_forward_is_the_model_in_every_world(family: str) -> None:
    """With nothing edited, every switch setting that keeps errors reproduces the model: clean errors
    on the clean prompt, live errors on any text (rows of other prompts included)."""
    model, tc, ids, corrupted = _setup(family)
    clean = CleanState.of(model, tc, ids)
    for attention in ("frozen", "live"):
        for features in ("recompute", "linear", "frozen"):
            run = forward(model, None, clean=clean, attention=attention, features=features, errors="clean")
            # Frozen norms are fitted to the clean pass, whose Llama/Gemma norms compute in float32.
            tol = 1e-9 if attention == "live" else 1e-4
            torch.testing.assert_close(run.logits[0], model.logits(ids), rtol=0, atol=tol)
    rows = torch.cat([ids, corrupted])
    live = forward(model, tc, ids=rows, attention="live", features="recompute", errors="live")
    torch.testing.assert_close(live.logits[1], model.logits(corrupted), rtol=0, atol=1e-9)
    # No errors: the pure replacement model differs, except at the first position, whose MLP output is kept.
    none = forward(model, tc, ids=rows, attention="live", features="recompute", errors="none", keep_acts=True)
    torch.testing.assert_close(none.logits[:, 0], live.logits[:, 0], rtol=0, atol=1e-9)
    assert not torch.allclose(none.logits[:, -1], live.logits[:, -1])
    assert not none.acts[:, :clean.feature_start].any() and none.acts[:, clean.feature_start:].any()


def test_live_errors_do_not_leak_clean_values() -> None:
    """Ablating a token changes the kept errors downstream under errors='live', not under 'clean'."""
    model, tc, ids, _ = _setup("llama", "plt")
    clean = CleanState.of(model, tc, ids)
    b = EditBuilder(1, model.d_model)
    b.token(0, 2)
    edits = b.build(model.device, model.dtype)
    runs = {e: forward(model, None, clean=clean, edits=edits, attention="live", features="recompute", errors=e)
            for e in ("clean", "live")}
    real = ids.clone()
    # Under live errors, zeroing the embedding of token 2 is exactly the real model with that embedding zeroed.
    from circuits.hooks import hooked, write_hook

    def zero_at_2(x):
        x = x.clone()
        x[:, 2] = 0
        return x
    with hooked([write_hook(model.module("resid_pre", 0), model.spec.location("resid_pre", 0), zero_at_2)]):
        expected = model.hf(real).logits[0]
    torch.testing.assert_close(runs["live"].logits[0], expected, rtol=0, atol=1e-9)
    assert not torch.allclose(runs["clean"].logits[0, -1], expected[-1])
