"""circuits.testing: assert_circuit and assert_matches_golden pass when they should, fail when they
should, and say what is missing or extra and by how much."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuits.discovery import Circuit
from circuits.discovery.heads.circuit import nan_matrix
from circuits.known import load as load_known
from circuits.patching import HeadGraph
from circuits.testing import UPDATE_GOLDEN_ENV, assert_circuit, assert_matches_golden

INDUCTION = ("input->a0.h0<v>", "a0.h0->a1.h0<k>", "input->a1.h0<v>", "a1.h0->logits")


def _circuit(edges: tuple[str, ...], faithfulness: float = 0.95, graph: HeadGraph | None = None) -> Circuit:
    g = graph or HeadGraph(2, 4)
    kept = g.empty()
    for name in edges:
        kept[g.parse_edge(name)] = True
    return Circuit(g, kept, nan_matrix(g), nan_matrix(g), faithfulness, faithfulness, 1.0, 0.0, "test")


def test_assert_circuit_passes_on_heads_edges_and_pairs() -> None:
    c = _circuit(INDUCTION + ("input->m1", "m1->logits"))
    r = assert_circuit(c, {"a0.h0", "a1.h0"}, min_recall=1.0, min_precision=1.0, min_faithfulness=0.9)
    assert r["level"] == "head" and r["recall"] == r["precision"] == 1.0  # MLPs not named, not counted
    assert assert_circuit(c, [(0, 0), (1, 0), "m1"], min_precision=1.0)["level"] == "head/MLP"
    assert assert_circuit(c, set(INDUCTION), min_recall=1.0)["precision"] == pytest.approx(4 / 6)
    assert assert_circuit(c, _circuit(INDUCTION))["level"] == "edge"


def test_assert_circuit_says_what_is_missing_and_by_how_much() -> None:
    c = _circuit(INDUCTION[:2] + ("a0.h3->a1.h0<q>", "a1.h0->logits"), faithfulness=0.4)
    with pytest.raises(AssertionError) as err:
        assert_circuit(c, {"a0.h0", "a1.h0", "a1.h2"}, min_recall=1.0, min_precision=0.9, min_faithfulness=0.8)
    msg = str(err.value)
    assert "recall 0.667 < 1.0 (short by 0.333): missing 1 of 3 expected heads: a1.h2" in msg
    assert "precision 0.667 < 0.9" in msg and "not expected: a0.h3" in msg
    assert "faithfulness 0.4000 < 0.8 (short by 0.4000" in msg
    with pytest.raises(AssertionError, match="missing 2 of 4 expected edges: a1.h0->logits, input->a1.h0<v>"):
        assert_circuit(_circuit(INDUCTION[:2]), set(INDUCTION))


def test_assert_circuit_against_a_known_circuit() -> None:
    known = load_known("gpt2-ioi")
    g = HeadGraph(12, 12)
    name_movers = tuple(f"a{l}.h{h}->logits" for l, h in known.heads_by_class["name mover"])
    c = _circuit(name_movers + ("a1.h1->logits",), graph=g)
    r = assert_circuit(c, "gpt2-ioi", min_recall=3 / 26, min_precision=0.75)
    assert r["recall"] == pytest.approx(3 / 26)
    with pytest.raises(AssertionError, match="missing 23 of 26 expected heads: a0.h1, a0.h10"):
        assert_circuit(c, known, min_recall=0.5)
    with pytest.raises(ValueError, match="12x12 model"):
        assert_circuit(_circuit(INDUCTION), "gpt2-ioi")


def test_assert_circuit_refuses_malformed_expectations() -> None:
    c = _circuit(INDUCTION)
    with pytest.raises(ValueError, match="not heads or MLPs of this 2-layer, 4-head model"):
        assert_circuit(c, {"a5.h0"})
    with pytest.raises(ValueError, match="not an edge of this graph"):
        assert_circuit(c, {"a0.h0->a9.h0<k>"})
    with pytest.raises(ValueError, match="mixes"):
        assert_circuit(c, {"a0.h0", "a0.h0->a1.h0<k>"})
    with pytest.raises(TypeError, match="one name"):
        assert_circuit(c, "a0.h0")


def test_golden_is_written_on_request_then_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    golden = tmp_path / "golden" / "induction.json"
    c = _circuit(INDUCTION)
    with pytest.raises(AssertionError, match=f"no golden circuit.*{UPDATE_GOLDEN_ENV}=1"):
        assert_matches_golden(c, golden)
    monkeypatch.setenv(UPDATE_GOLDEN_ENV, "1")
    assert assert_matches_golden(c, golden) == {"updated": str(golden)}
    assert golden.exists()
    monkeypatch.delenv(UPDATE_GOLDEN_ENV)
    r = assert_matches_golden(c, golden, tolerance=0.0)
    assert r["jaccard"] == 1.0 and r["edge_recall"] == 1.0 and r["faithfulness_delta"] == 0.0
    # An extra edge within the same heads, and a small drift in faithfulness, are tolerated.
    assert assert_matches_golden(_circuit(INDUCTION + ("input->a1.h0<q>",), 0.9), golden, tolerance=0.1)


def test_golden_mismatch_names_the_difference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    golden = tmp_path / "induction.json"
    _circuit(INDUCTION).save(golden)
    drifted = _circuit(("input->a0.h2<v>", "a0.h2->a1.h0<k>", "input->a1.h0<v>", "a1.h0->logits"), 0.6)
    with pytest.raises(AssertionError) as err:
        assert_matches_golden(drifted, golden, tolerance=0.1)
    msg = str(err.value)
    assert "Jaccard 0.333 < 0.900 (short by 0.567): missing a0.h0; extra a0.h2" in msg
    assert "golden edge recall 0.500 < 0.900" in msg and "a0.h0->a1.h0<k>, input->a0.h0<v>" in msg
    assert "faithfulness 0.6000 vs golden 0.9500: off by -0.3500" in msg
    assert f"{UPDATE_GOLDEN_ENV}=1" in msg
    with pytest.raises(Exception, match="layers x"):
        assert_matches_golden(_circuit((), graph=HeadGraph(3, 4)), golden)
    monkeypatch.setenv(UPDATE_GOLDEN_ENV, "0")  # "0" means compare, not update
    with pytest.raises(AssertionError):
        assert_matches_golden(drifted, golden)
