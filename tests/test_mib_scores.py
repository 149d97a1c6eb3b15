"""MIB's scores of discovery results (CPR, CMD) on the planted induction circuit, known by construction."""

from __future__ import annotations

import pytest
import torch
from _threads import one_thread  # noqa: F401
from planted import PLANTED_EDGES, V, planted_induction_model

from circuits.discovery import acdc
from circuits.discovery.heads.mib import edge_ranking, mib_scores
from circuits.patching import MIB_BUDGETS, EdgePatcher, area_under_curve
from circuits.tasks import induction


@pytest.fixture(scope="module")
def planted():
    model = planted_induction_model()
    task = induction.dataset(model.tokenizer, n=8, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    return EdgePatcher(model, task)


def test_acdc_ranking_puts_the_planted_circuit_first_and_scores_it(planted):
    p = planted
    c = acdc(p, tau=0.05, progress=False)
    assert {e["name"] for e in c.edges} == set(PLANTED_EDGES)
    key = edge_ranking(c)
    top = torch.topk(key.flatten(), len(PLANTED_EDGES)).indices
    assert set(top.tolist()) == set(c.kept.flatten().nonzero().flatten().tolist())
    budgets = (len(PLANTED_EDGES) / p.graph.n_edges, 0.5, 1.0)
    s = mib_scores(p, c, budgets)
    # The top of the ranking is the planted circuit itself, then more edges on top of it: f = 1 throughout.
    assert s.faithfulness[0] == pytest.approx(c.faithfulness, abs=1e-9) == pytest.approx(1.0, abs=1e-6)
    assert s.faithfulness[-1] == pytest.approx(1.0, abs=1e-9) and s.n_edges[0] == len(PLANTED_EDGES)
    assert (s.cpr, s.cmd) == pytest.approx(area_under_curve(budgets, s.faithfulness))
    assert s.cpr == pytest.approx(1.0 - budgets[0], abs=1e-5) and s.cmd == pytest.approx(0.0, abs=1e-5)


def test_a_worse_ranking_scores_worse(planted):
    p = planted
    c = acdc(p, tau=0.05, progress=False)
    good = mib_scores(p, c)
    worst = mib_scores(p, torch.where(c.kept, 0.0, 1.0) * p.graph.valid)  # every other edge first
    assert good.budgets == MIB_BUDGETS and len(good.faithfulness) == len(MIB_BUDGETS)
    assert good.cpr > worst.cpr and good.cmd < worst.cmd
    with pytest.raises(ValueError, match="split_qkv alike"):
        mib_scores(p, torch.zeros(2, 2))
