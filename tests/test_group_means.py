"""Tier 2: mean ablation within groups of prompts (Wang et al.'s per-template ABC mean).

With ``Task.groups`` each prompt is ablated to the mean over its own group's corrupted prompts.
Since the metric averages over prompts, the grouped result must equal the group-size-weighted
average of running each group as a task of its own with a plain mean — checked for the node
and the edge patcher on a random model, where the grouping also visibly changes the result.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _threads import one_thread  # noqa: F401

from circuits import tiny_model
from circuits.patching import EdgePatcher
from circuits.patching.nodes import NodePatcher
from circuits.tasks import induction


def _grouped_task():
    model = tiny_model("llama", dtype=torch.float64, n_layers=2, n_heads=4, n_kv_heads=2, init_scale=3.0, seed=1)
    task = induction.dataset(model.tokenizer, n=9, seq_len=4, bos=None, seed=0)
    groups = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1])
    return model, dataclasses.replace(task, groups=groups)


def _split(task):
    """Each group as a task of its own, without groups, and its share of the prompts."""
    out = []
    for g in task.groups.unique().tolist():
        idx = (task.groups == g).nonzero().flatten()
        out.append((dataclasses.replace(task.subset(idx), groups=None), len(idx) / task.n))
    return out


def test_node_mean_ablation_averages_within_each_group():
    model, task = _grouped_task()
    grouped = NodePatcher(model, task, ablation="mean", batch_size=4)
    plain = NodePatcher(model, dataclasses.replace(task, groups=None), ablation="mean", batch_size=4)
    parts = [(NodePatcher(model, t, ablation="mean"), w) for t, w in _split(task)]
    removed = torch.rand(5, grouped.graph.n_src, generator=torch.Generator().manual_seed(0)) < 0.5
    removed[:, 0] = False
    want = sum(w * p.evaluate(removed) for p, w in parts)
    torch.testing.assert_close(grouped.evaluate(removed), want, rtol=1e-9, atol=1e-9)
    assert grouped.m_empty == pytest.approx(sum(w * p.m_empty for p, w in parts), abs=1e-9)
    everything = torch.ones(grouped.graph.n_src, dtype=torch.bool)  # m(∅) runs one row per group: every prompt's
    assert grouped.m_empty == pytest.approx(float(grouped.evaluate(everything)[0]), abs=1e-9)
    assert (grouped.evaluate(removed) - plain.evaluate(removed)).abs().max() > 1e-3  # grouping matters here


def test_edge_mean_ablation_averages_within_each_group():
    model, task = _grouped_task()
    grouped = EdgePatcher(model, task, ablation="mean", batch_size=4)
    plain = EdgePatcher(model, dataclasses.replace(task, groups=None), ablation="mean", batch_size=4)
    parts = [(EdgePatcher(model, t, ablation="mean"), w) for t, w in _split(task)]
    g = grouped.graph
    removed = (torch.rand(4, g.n_src, g.n_dst, generator=torch.Generator().manual_seed(1)) < 0.3) & g.valid
    want = sum(w * p.evaluate(removed) for p, w in parts)
    torch.testing.assert_close(grouped.evaluate(removed), want, rtol=1e-9, atol=1e-9)
    assert (grouped.evaluate(removed) - plain.evaluate(removed)).abs().max() > 1e-3


def test_a_reference_set_is_one_mean_and_groups_are_checked():
    model, task = _grouped_task()
    ref = NodePatcher(model, task, ablation="mean", reference=task.corrupted)  # no labels for a caller's set
    plain = NodePatcher(model, dataclasses.replace(task, groups=None), ablation="mean")
    assert ref.m_empty == pytest.approx(plain.m_empty, abs=1e-12)
    with pytest.raises(ValueError, match="groups must be"):
        dataclasses.replace(task, groups=torch.zeros(3, dtype=torch.long))
    # A subset that drops a whole group still ablates the others to their own means.
    sub = task.subset(torch.tensor([0, 2, 3, 5]))  # groups 0 and 2 only
    assert sub.groups.tolist() == [0, 2, 0, 2]
    parts = _split(sub)
    assert NodePatcher(model, sub, ablation="mean").m_empty == pytest.approx(
        sum(w * NodePatcher(model, t, ablation="mean").m_empty for t, w in parts), abs=1e-9)
