"""The architecture map says where each tensor lives; rebuilding the residual stream proves it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from circuits.models import SITE_ORDER, TINY_FAMILIES, Model, tiny_model
from circuits.models.arch import GEMMA, Location

ALL_SITES = [s for s in SITE_ORDER]


def _record_all(model: Model, n_pos: int = 9, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, model.dims.d_vocab, (n_pos,), generator=g)
    _, rec = model.record(ids, [(s, l) for l in range(model.n_layers) for s in ALL_SITES])
    return rec


def _max_rebuild_error(model: Model, rec: dict) -> float:
    """max over layers of |embedding + Σ attn_out + Σ mlp_resid − resid_post| / max|resid_post|."""
    resid = rec[("resid_pre", 0)].double()
    worst = 0.0
    for layer in range(model.n_layers):
        resid = resid + rec[("attn_out", layer)].double() + rec[("mlp_resid", layer)].double()
        target = rec[("resid_post", layer)].double()
        worst = max(worst, float((resid - target).abs().max() / target.abs().max()))
    return worst


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_residual_stream_rebuilds_from_recorded_parts(family: str) -> None:
    model = tiny_model(family, n_layers=3, init_scale=10.0)
    rec = _record_all(model)
    assert _max_rebuild_error(model, rec) < 1e-5
    # Each layer's input is the previous layer's output: the sites are read at the right places.
    for layer in range(1, model.n_layers):
        torch.testing.assert_close(rec[("resid_pre", layer)], rec[("resid_post", layer - 1)])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_site_shapes_and_patterns(family: str) -> None:
    model = tiny_model(family, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2)
    d = model.dims
    rec = _record_all(model, n_pos=7)
    assert rec[("attn_z", 0)].shape == (7, d.n_heads * d.d_head)
    assert rec[("mlp_in", 1)].shape == (7, d.d_model)
    pattern = rec[("attn_pattern", 1)]
    assert pattern.shape == (d.n_heads, 7, 7)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(d.n_heads, 7))
    assert torch.all(pattern.triu(1) == 0), "causal: no query attends to a later key"
    # attn_z really is the input of the output projection: projecting it gives attn_out
    # (for Gemma, before the post-attention norm).
    o_proj = model.module("attn_z", 0)
    projected = o_proj(rec[("attn_z", 0)])
    if model.spec.family == "gemma":
        projected = model.norm("ln_attn_post", 0)(projected)
    torch.testing.assert_close(projected, rec[("attn_out", 0)], rtol=1e-5, atol=1e-5)


def test_a_wrong_map_fails_the_rebuild() -> None:
    """The rebuild check has teeth: Gemma's MLP write without its post-norm does not add up."""
    model = tiny_model("gemma3", n_layers=2, init_scale=10.0)
    wrong = dict(GEMMA.sites, mlp_resid=Location("model.layers.{layer}.mlp", "output"))
    model.spec = dataclasses.replace(GEMMA, sites=wrong)
    assert _max_rebuild_error(model, _record_all(model)) > 1e-2


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_dims_match_the_config(family: str) -> None:
    model = tiny_model(family, n_layers=3, d_model=48, n_heads=6, n_kv_heads=2, d_mlp=80, d_vocab=50)
    d = model.dims
    assert (d.n_layers, d.d_model, d.n_heads, d.d_head, d.d_mlp, d.d_vocab) == (3, 48, 6, 8, 80, 50)
    assert d.n_kv_heads == (6 if family == "gpt2" else 2)
    assert model.W_U.shape == (50, 48) and model.W_E.shape == (50, 48)


def test_no_module_path_outside_the_architecture_map() -> None:
    """Module paths are spelled once, in circuits/models/arch.py."""
    root = Path(__file__).resolve().parents[1]
    path_like = re.compile(r"""["'](model\.layers|transformer\.h|model\.embed_tokens|model\.norm|lm_head|"""
                           r"""self_attn|o_proj|c_proj|post_attention_layernorm|input_layernorm)""")
    offenders = []
    for package in ("circuits", "transcoders", "graphs"):
        for file in (root / package).rglob("*.py"):
            if file.name == "arch.py":
                continue
            offenders += [f"{file.relative_to(root)}:{i}" for i, line in enumerate(file.read_text().splitlines(), 1)
                          if path_like.search(line)]
    assert not offenders, f"module paths spelled outside the architecture map: {offenders}"
