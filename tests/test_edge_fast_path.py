"""The fast path of edge patching (sources whose every edge is removed folded into the residual
stream; only destinations that need it get their own input) is the same intervention as the
general path, on tiny random models of every family, in float64."""

from __future__ import annotations

import pytest
import torch
from _threads import one_thread  # noqa: F401

from circuits.models.tiny import TINY_FAMILIES, tiny_model
from circuits.patching import HeadGraph, patched_forward

T = 6
POS = torch.arange(T)


def _edge_sets(g: HeadGraph, gen: torch.Generator, K: int, *, density: float = 0.03) -> torch.Tensor:
    """``[K, n_src, n_dst]``: each variant removes every edge of a third of the sources (the input
    among them sometimes; their inputs partly removed too) and single edges at ``density`` (sparse:
    corrections sum the removed sources; dense: the total minus the kept ones)."""
    removed = (torch.rand(K, g.n_src, g.n_dst, generator=gen) < density) & g.valid
    for k in range(K):
        whole = torch.randperm(g.n_src, generator=gen)[: g.n_src // 3]
        removed[k, whole] = g.valid[whole]
    return removed


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_model(request):
    model = tiny_model(request.param, dtype=torch.float64, n_layers=3, n_heads=4, n_kv_heads=2, init_scale=3.0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (2, T), generator=gen)
    corrupt = torch.randint(1, 60, (2, T), generator=gen)
    g = HeadGraph.for_model(model)
    abl = patched_forward(model, g, corrupt, None, None, POS, record=True).outputs
    return model, g, ids, abl


# Gemma's norms compute in float32 even for a float64 model; fast and general paths sum the
# same terms in another order, which those norms round differently.
def _tol(model) -> float:
    return 1e-6 if model.spec.family == "gemma" else 1e-10


@pytest.mark.parametrize("split_qkv", [True, False])
@pytest.mark.parametrize("seed,density", [(0, 0.03), (1, 0.03), (2, 0.9)])
def test_fast_path_is_the_general_path(family_model, split_qkv, seed, density):
    model, _, ids, abl = family_model
    g = HeadGraph.for_model(model, split_qkv)
    gen = torch.Generator().manual_seed(seed)
    removed = _edge_sets(g, gen, 3, density=density)
    fast = patched_forward(model, g, ids, abl, removed, POS).logits
    general = patched_forward(model, g, ids, abl, removed, POS, fast=False).logits
    tol = _tol(model)
    torch.testing.assert_close(fast, general, rtol=tol, atol=tol)
    # The edge sets do something: the whole-node removals alone move the logits.
    clean = patched_forward(model, g, ids, abl, g.empty(), POS).logits
    assert (fast - clean).abs().max() > 1e-3


def test_every_edge_removed_folds_every_source_and_is_the_corrupted_run(family_model):
    model, g, ids, abl = family_model
    fast = patched_forward(model, g, ids, abl, g.valid, POS).logits
    general = patched_forward(model, g, ids, abl, g.valid, POS, fast=False).logits
    tol = _tol(model)
    torch.testing.assert_close(fast, general, rtol=tol, atol=tol)


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_resuming_a_folded_base_is_exact(family_model, layer):
    """A base run recorded on the fast path (with sources folded below ``layer``), resumed by edge sets
    that remove more from ``layer`` on, some of them every remaining edge of a source below it."""
    model, g, ids, abl = family_model
    gen = torch.Generator().manual_seed(layer)
    base = _edge_sets(g, gen, 1)[0]
    prefix = patched_forward(model, g, ids, abl, base, POS, keep_prefix=True).prefix
    assert prefix is not None and prefix.folded.any()
    later = torch.tensor([g.dst_layer(d) >= layer for d in range(g.n_dst)])
    variants = base.repeat(3, 1, 1)
    variants[0, :, later] |= (torch.rand(g.n_src, int(later.sum()), generator=gen) < 0.3) & g.valid[:, later]
    below = g.layer_src(layer - 1).stop
    src = int(torch.randint(1, below, (1,), generator=gen))
    variants[1, src] = g.valid[src]  # folded in the variant, not in the base run
    variants[2, :, later] = g.valid[:, later]
    resumed = patched_forward(model, g, ids, abl, variants, POS, prefix=prefix, start_layer=layer).logits
    general = patched_forward(model, g, ids, abl, variants, POS, fast=False).logits
    tol = _tol(model)
    torch.testing.assert_close(resumed, general, rtol=tol, atol=tol)
    # Edge sets that keep edges of sources the base run folded (their weight is then −1).
    folded = prefix.folded[:below].nonzero().flatten()
    keeps = base.repeat(2, 1, 1)
    keeps[0, folded, g.logits_dst] = False
    keeps[1, :, later] = False
    resumed = patched_forward(model, g, ids, abl, keeps, POS, prefix=prefix, start_layer=layer).logits
    general = patched_forward(model, g, ids, abl, keeps, POS, fast=False).logits
    torch.testing.assert_close(resumed, general, rtol=tol, atol=tol)
    # The full model, resumed from a base run that folded the MLP below ``layer`` (all its edges are
    # into later layers, so the base run agrees with the full model below ``layer``).
    mlp = g.mlp_src(layer - 1)
    only = g.empty()
    only[mlp] = g.valid[mlp]
    prefix = patched_forward(model, g, ids, abl, only, POS, keep_prefix=True).prefix
    assert prefix.folded[mlp]
    full = patched_forward(model, g, ids, abl, None, POS, prefix=prefix, start_layer=layer).logits
    plain = patched_forward(model, g, ids, abl, None, POS).logits
    torch.testing.assert_close(full, plain, rtol=tol, atol=tol)
