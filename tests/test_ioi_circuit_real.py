"""Tier 3 regression: the head-level IOI circuit of the default model (SmolLM2-135M-Instruct).

Discovered the way Wang et al. define the circuit — the kept heads run, every other head is
mean-ablated over the ABC prompts of its prompt's template, MLPs always run — by node-level ACDC over the 100 heads
of largest EAP score (tau = 2% of m(M) − m(∅), swept until stable; search in bf16,
faithfulness re-measured in float32), on 64 prompt pairs. It must:

- reach faithfulness ≥ 0.8;
- contain heads that the probes (no circuit needed) recognise as each of Wang et al.'s
  classes: name movers, a negative name mover, S-inhibition, induction, duplicate-token and
  previous-token heads;
- have heads that pass a role probe (``circuits.probes.ioi_head_roles``), carrying ≥ 90% of
  the circuit's |effect|, at a rate well above the rate among all the model's heads;
- stay within tolerance of the stored golden circuit (tests/golden/smollm2_ioi_heads.json;
  ``CIRCUITS_UPDATE_GOLDEN=1`` rewrites it after an intended change);
- reach the same faithfulness and share of |effect| recognised on a fresh draw of 64 pairs
  (seed 3), on which nothing was tuned.

Not every head passes a probe: the circuit keeps a few small heads (|effect| ≤ 0.35 logits
of the 4.69 logit difference) that no role probe recognises. The test prints every head's
roles next to its effect in the circuit and in the whole model (Wang et al.'s completeness,
one head at a time): a head whose effect differs between the two, or flips sign, does its
part only while the rest of the model is ablated.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _threads import one_thread  # noqa: F401

from circuits.discovery import NodeCircuit, discover_nodes
from circuits.patching.nodes import NodePatcher
from circuits.probes import ioi_head_roles, role_base_rate
from circuits.tasks import ioi
from circuits.testing import assert_matches_golden

pytestmark = pytest.mark.real_model

GOLDEN = Path(__file__).parent / "golden" / "smollm2_ioi_heads.json"
WANG_CLASSES = ("name mover", "negative name mover", "S-inhibition", "induction", "duplicate-token", "previous-token")


@pytest.fixture(scope="module")
def task(default_model):
    return ioi.dataset(default_model.tokenizer, n=64, seed=0)


def discover(model, task) -> NodeCircuit:
    # Chunks of 8 prompts, as discover_nodes builds its own: a test stops once its effects decide it (z = 3), a
    # close call reads every prompt, so the circuit is ACDC's on all 64 (BENCHMARKS.md) at a third of the passes.
    patcher = NodePatcher(model, task, ablation="mean", precision="auto", batch_size=8)
    c = discover_nodes(model, task, patcher=patcher, method="acdc", candidates=100, include_mlps=False,
                       precision="auto", tau=0.02 * abs(patcher.m_full - patcher.m_empty), progress=False)
    print(f"\nIOI node circuit: {len(c.heads)} heads, faithfulness {c.faithfulness:.3f} "
          f"(search in {c.info['searched_in']}), {c.info['seconds_total']:.0f} s")
    return c


def recognised_share(effects: dict[tuple[int, int], float], all_roles) -> float:
    """The share of the circuit's |effect| carried by heads that pass a role probe."""
    return sum(abs(e) for h, e in effects.items() if all_roles[h]) / sum(abs(e) for e in effects.values())


@pytest.fixture(scope="module")
def circuit(default_model, task):
    return discover(default_model, task)


@pytest.fixture(scope="module")
def all_roles(default_model, task):
    return ioi_head_roles(default_model, task)


@pytest.fixture(scope="module")
def roles(circuit, all_roles):
    return {head: all_roles[head] for head in circuit.heads}


def test_circuit_is_faithful(circuit):
    assert circuit.faithfulness >= 0.8


def test_every_wang_class_is_present(circuit, roles):
    present = {role for found in roles.values() for role in found}
    missing = [c for c in WANG_CLASSES if c not in present]
    assert not missing, f"no head of the circuit passes the probe for: {missing}"
    # The head with the largest effect is one the probes recognise.
    strongest = next(iter(circuit.head_effects()))
    assert roles[strongest], f"{strongest}, the circuit's strongest head, passes no role probe"


def test_heads_pass_their_role_probes(circuit, roles, all_roles):
    effects = circuit.head_effects()
    share = recognised_share(effects, all_roles)
    rate = sum(1 for h in effects if roles[h]) / len(effects)
    base = role_base_rate(all_roles)["any"]
    in_model = {c["removed"][0]: c["effect_model"] for c in circuit.completeness([[f"a{l}.h{h}"] for l, h in effects])}
    table = "\n".join(f"  a{l}.h{h:<3} {e:+.3f} {in_model[f'a{l}.h{h}']:+.3f}  {', '.join(roles[(l, h)]) or '—'}"
                      for (l, h), e in effects.items())
    print(f"\nheads passing a role probe: {rate:.0%} of the circuit ({share:.0%} of |effect|), "
          f"{base:.0%} of all {len(all_roles)} heads\n     head  effect (circuit, model)  roles\n{table}")
    assert share >= 0.9, table
    assert rate >= 2 * base, f"the probes pass {base:.0%} of all heads: they do not single out the circuit's"


def test_holds_on_another_draw_of_the_dataset(default_model, all_roles):
    # Tau, the candidates and the golden circuit were all looked at on seed 0's prompts; a fresh
    # draw of 64 pairs checks that faithfulness and the probes' share do not hang on that draw.
    # (benchmarks/node_stability.py: seeds 0–3 give f 0.84–0.91 and 94–97% recognised.)
    circuit = discover(default_model, ioi.dataset(default_model.tokenizer, n=64, seed=3))
    assert circuit.faithfulness >= 0.8
    effects = circuit.head_effects()
    unknown = {f"{l}.{h}": round(e, 2) for (l, h), e in effects.items() if not all_roles[(l, h)]}
    print(f"seed 3: {len(effects)} heads, {recognised_share(effects, all_roles):.0%} of |effect| recognised; "
          f"no probe recognises {unknown}")
    assert recognised_share(effects, all_roles) >= 0.9, unknown


def test_matches_the_golden_circuit(circuit):
    # Jaccard over heads and MLPs (the 30 MLPs always run): 0.15 allows ~8 heads to change.
    assert_matches_golden(circuit, GOLDEN, tolerance=0.15)
