"""Tier 3: IOI on the offline default model (SmolLM2-135M): the dataset, the behaviour, head-role
probes, and a head-level circuit whose heads pass independent functional checks."""

from __future__ import annotations

import pytest
import torch
from _threads import one_thread  # noqa: F401

from circuits.discovery import attribution_circuit
from circuits.discovery.heads.prune import prune_dead
from circuits.patching import EdgePatcher
from circuits.probes import ioi_attention_scores, ioi_copying_scores, top_heads
from circuits.tasks import ioi

pytestmark = pytest.mark.real_model

# The heads with the strongest END → Mary attention on the canonical prompt.
NAME_MOVER_CANDIDATES = {(24, 4), (23, 0), (23, 1), (23, 7), (22, 7)}


@pytest.fixture(scope="module")
def task(default_model):
    return ioi.dataset(default_model.tokenizer, n=16, seed=0)


@pytest.fixture(scope="module")
def patcher(default_model, task):
    return EdgePatcher(default_model, task, ablation="resample")


@pytest.fixture(scope="module")
def roles(default_model, task):
    scores = ioi_attention_scores(default_model, task)
    scores["copies_io"] = ioi_copying_scores(default_model, task)
    scores["suppresses_io"] = ioi_copying_scores(default_model, task, sign=-1)
    return scores


def test_dataset_on_the_real_tokenizer(default_model, task):
    for name in task.info["names"]:
        default_model.token_id(" " + name)  # raises unless one token
    assert task.clean.shape == task.corrupted.shape
    for i in range(task.n):
        diff = set((task.clean[i] != task.corrupted[i]).nonzero().flatten().tolist())
        assert diff == {int(task.info[k][i]) for k in ("io_pos", "s1_pos", "s2_pos")}
    with torch.no_grad():
        ids = default_model.tokenize(task.clean_prompts[0])[0]
    assert torch.equal(ids.cpu(), task.clean[0])


def test_the_model_does_ioi(patcher):
    assert patcher.m_full > 3.0  # mean logit difference IO − S on clean prompts
    assert abs(patcher.m_empty) < 1.5  # ABC prompts: neither name is preferred


def test_probes_find_the_name_movers(roles):
    top = {(l, h) for l, h, _ in top_heads(roles["name_mover"], 5)}
    assert len(top & NAME_MOVER_CANDIDATES) >= 4
    for head in top & NAME_MOVER_CANDIDATES:
        assert roles["name_mover"][head] > 2 * roles["end_to_s"][head]  # IO, not S
    # Name movers that copy the name they attend to, and one that suppresses it (a negative name mover).
    copiers = [h for h in NAME_MOVER_CANDIDATES if roles["copies_io"][h] >= 0.5]
    suppressors = [h for h in NAME_MOVER_CANDIDATES if roles["suppresses_io"][h] >= 0.5]
    assert len(copiers) >= 2 and len(suppressors) >= 1


def test_eap_circuit_heads_pass_functional_checks(patcher, roles):
    circuit = attribution_circuit(patcher, "eap", top_n=100, progress=False)
    heads = set(circuit.heads)

    def passing(role: str, threshold: float) -> set[tuple[int, int]]:
        return {h for h in heads if roles[role][h] > threshold}

    name_movers = {h for h in passing("name_mover", 0.4) if roles["copies_io"][h] >= 0.5}
    assert len(name_movers) >= 2, "name movers: attend END → IO and copy IO"
    assert passing("s_inhibition", 0.5), "an S-inhibition head: END → S2"
    assert passing("duplicate_token", 0.5), "a duplicate-token head: S2 → S1"
    assert passing("induction", 0.5), "an induction head: S2 → S1+1"
    assert passing("previous_token", 0.5), "a previous-token head: S1+1 → S1"
    # Faithfulness: far above a random circuit of the same size (exactly 0 is the empty circuit).
    g = patcher.graph
    gen = torch.Generator().manual_seed(0)
    flat = g.valid.flatten().nonzero().flatten()
    pick = flat[torch.randperm(len(flat), generator=gen)[: circuit.n_edges]]
    random = torch.zeros(g.n_src * g.n_dst, dtype=torch.bool)
    random[pick] = True
    f_random = patcher.faithfulness(prune_dead(g, random.reshape(g.n_src, g.n_dst)))
    print(f"EAP top-100 circuit: {circuit.n_edges} edges, {len(heads)} heads, faithfulness {circuit.faithfulness:.3f} "
          f"(random circuit of that size: {f_random:.3f})")
    assert circuit.faithfulness > f_random + 0.1
