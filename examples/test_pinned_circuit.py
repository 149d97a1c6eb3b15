"""Pin a circuit in your own pytest suite: a change to the model, the data or the code that moves the
circuit fails a test that says what moved.

    pytest examples/test_pinned_circuit.py                              # SmolLM2 (about a minute)
    CIRCUITS_UPDATE_GOLDEN=1 pytest examples/test_pinned_circuit.py     # (re)write the golden file
    CIRCUITS_EXAMPLE_TINY=1 PINNED_GOLDEN=/tmp/g.json pytest examples/test_pinned_circuit.py   # tiny, seconds

Two kinds of pin (``circuits.testing``):

- ``assert_circuit``: the heads you know must be there (here SmolLM2's five strongest IOI heads), with a
  floor on recall and faithfulness;
- ``assert_matches_golden``: the circuit found last time, stored in a golden file, within a tolerance
  (head/MLP Jaccard index, edge recall and faithfulness). The first run with ``CIRCUITS_UPDATE_GOLDEN=1``
  writes it; commit it beside your tests.

``PINNED_GOLDEN`` moves the golden file (default: ``golden/smollm2_ioi_heads.json`` beside this file).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for _common, however pytest was started
from _common import TINY_ENV, tiny_setup  # noqa: E402

from circuits import NodeCircuit, discover_nodes, load_model  # noqa: E402
from circuits.patching.nodes import NodePatcher  # noqa: E402
from circuits.tasks import ioi  # noqa: E402
from circuits.testing import assert_circuit, assert_matches_golden  # noqa: E402

TINY = os.environ.get(TINY_ENV, "") not in ("", "0")
GOLDEN = Path(os.environ.get("PINNED_GOLDEN", Path(__file__).parent / "golden" / "smollm2_ioi_heads.json"))
# SmolLM2-135M-Instruct's strongest IOI heads: a name mover (a23.h3) and the heads that feed it.
EXPECTED_HEADS = {"a23.h3", "a8.h1", "a29.h1", "a20.h0", "a17.h4"}


@pytest.fixture(scope="module")
def circuit() -> NodeCircuit:
    model = tiny_setup()[0] if TINY else load_model()
    task = ioi.dataset(model.tokenizer, n=16 if TINY else 64, seed=0)
    # Pin the settings the golden file was made with: another tau or ablation finds another circuit.
    patcher = NodePatcher(model, task, ablation="mean", precision="auto")
    return discover_nodes(model, task, patcher=patcher, method="acdc", candidates=100, include_mlps=False,
                          precision="auto", tau=0.02 * abs(patcher.m_full - patcher.m_empty), progress=False)


@pytest.mark.skipif(TINY, reason="EXPECTED_HEADS are SmolLM2's; a tiny random model has no IOI circuit to expect")
def test_the_known_ioi_heads_are_in_the_circuit(circuit: NodeCircuit) -> None:
    assert_circuit(circuit, EXPECTED_HEADS, min_recall=0.8, min_faithfulness=0.8)


def test_the_circuit_matches_the_golden_one(circuit: NodeCircuit) -> None:
    assert_matches_golden(circuit, GOLDEN, tolerance=0.1)
