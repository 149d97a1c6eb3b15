"""Tier 2: patching unembeds only the vocabulary columns a logit-difference metric reads
(``circuits.patching.columns``), and measures exactly what the full unembedding gives.

Each patcher is built twice on the same prompts: with ``logit_diff`` (marked: answer columns only)
and with an unmarked wrapper of it (every column). Gemma-2 soft-caps its logits, per element.
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
from circuits.tasks.task import logit_diff


def _pair(family: str):
    model = tiny_model(family, dtype=torch.float64, n_layers=2, n_heads=4,
                       n_kv_heads=2 if family != "gpt2" else None, init_scale=3.0)
    base = induction.dataset(model.tokenizer, n=8, seq_len=4, bos=None, seed=0)
    wrong = torch.randint(0, model.dims.d_vocab, (base.n, 1), generator=torch.Generator().manual_seed(1))
    task = dataclasses.replace(base, metric_fn=logit_diff, wrong=wrong)
    full = dataclasses.replace(task, metric_fn=lambda l, a, w: logit_diff(l, a, w))  # unmarked: every column
    return model, task, full


def _check_columns(patcher, task, model) -> None:
    ids = torch.cat([task.answers.flatten(), task.wrong.flatten()])
    assert patcher.vocab.tolist() == sorted(set(ids[ids >= 0].tolist()))
    assert len(patcher.vocab) < model.dims.d_vocab
    assert patcher.chunks[0].clean_logits.shape[-1] == len(patcher.vocab)


def _random_nodes(n_src: int, seed: int) -> torch.Tensor:
    nodes = torch.rand(n_src, generator=torch.Generator().manual_seed(seed)) < 0.5
    nodes[0] = False
    return nodes


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_node_patching_on_answer_columns_is_the_full_unembedding(family):
    model, task, full_task = _pair(family)
    cols, full = NodePatcher(model, task, batch_size=3), NodePatcher(model, full_task, batch_size=3)
    assert full.vocab is None and cols.vocab is not None
    _check_columns(cols, task, model)
    assert cols.m_full == pytest.approx(full.m_full, abs=1e-10)
    assert cols.m_empty == pytest.approx(full.m_empty, abs=1e-10)
    sets = torch.stack([_random_nodes(cols.graph.n_src, s) for s in range(3)])
    torch.testing.assert_close(cols.evaluate(sets), full.evaluate(sets), rtol=1e-10, atol=1e-10)
    for i in range(len(cols.chunks)):
        torch.testing.assert_close(cols.chunk_metrics(i, sets)[0], full.chunk_metrics(i, sets)[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cols.node_scores(), full.node_scores(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_edge_patching_on_answer_columns_is_the_full_unembedding(family):
    model, task, full_task = _pair(family)
    kw = dict(ablation="mean", batch_size=3)
    cols, full = EdgePatcher(model, task, **kw), EdgePatcher(model, full_task, **kw)
    assert full.vocab is None and cols.vocab is not None
    _check_columns(cols, task, model)
    assert cols.m_full == pytest.approx(full.m_full, abs=1e-10)
    assert cols.m_empty == pytest.approx(full.m_empty, abs=1e-10)
    g = cols.graph
    gen = torch.Generator().manual_seed(0)
    sets = torch.stack([g.valid & (torch.rand(g.n_src, g.n_dst, generator=gen) < p) for p in (0.1, 0.5, 0.9)])
    torch.testing.assert_close(cols.evaluate(sets), full.evaluate(sets), rtol=1e-10, atol=1e-10)
    for method in ("eap", "eap-ig"):
        torch.testing.assert_close(cols.edge_scores(method), full.edge_scores(method), rtol=1e-5, atol=1e-7)


def test_a_softmax_metric_keeps_every_column():
    model = tiny_model("llama", dtype=torch.float64, n_layers=1, n_heads=2, n_kv_heads=1)
    task = induction.dataset(model.tokenizer, n=4, seq_len=4, bos=None, seed=0)  # log-probability: a softmax
    assert NodePatcher(model, task).vocab is None
    assert EdgePatcher(model, task).vocab is None
    assert NodePatcher(model, dataclasses.replace(task, metric_fn=logit_diff), metric="kl").vocab is None
