"""Circuit.save / Circuit.load round-trip, and the errors for damaged or mismatched files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _threads import one_thread  # noqa: F401
from planted import PLANTED_EDGES, V, planted_induction_model

from circuits.discovery import Circuit, attribution_circuit
from circuits.discovery.heads.circuit import CircuitFileError, nan_matrix
from circuits.patching import HeadGraph, EdgePatcher
from circuits.tasks import induction


def _same(a: Circuit, b: Circuit) -> None:
    assert a.graph == b.graph
    assert torch.equal(a.kept, b.kept)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(a.effects, b.effects, rtol=0, atol=0, equal_nan=True)
    assert (a.faithfulness, a.metric_circuit, a.metric_full, a.metric_empty, a.method) == \
        (b.faithfulness, b.metric_circuit, b.metric_full, b.metric_empty, b.method)
    assert [e["name"] for e in a.edges] == [e["name"] for e in b.edges]


@pytest.fixture(scope="module")
def eap_circuit() -> Circuit:
    model = planted_induction_model()
    task = induction.dataset(model.tokenizer, n=4, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=0)
    return attribution_circuit(EdgePatcher(model, task), "eap", tau=0.05, progress=False)


def _hand_made() -> Circuit:
    g = HeadGraph(2, 2)
    kept = g.empty()
    effects = nan_matrix(g)
    for name, effect in [("a0.h1->a1.h0<k>", 0.25), ("a1.h0->logits", -1.5), ("input->m1", 1e-7)]:
        s, d = g.parse_edge(name)
        kept[s, d], effects[s, d] = True, effect
    return Circuit(g, kept, nan_matrix(g), effects, 0.9, 1.0, 1.1, 0.0, "acdc",
                   info={"tau": 0.1, "task": "induction", "nan": float("nan"), "nested": {"a": [1, 2.5]},
                         "tensor": torch.zeros(2)})


def test_eap_circuit_round_trips_with_every_score(eap_circuit: Circuit, tmp_path: Path) -> None:
    path = eap_circuit.save(tmp_path / "c.json")
    back = Circuit.load(path, eap_circuit.graph)
    _same(eap_circuit, back)
    assert {e["name"] for e in back.edges} == set(PLANTED_EDGES)
    assert back.info["tau"] == eap_circuit.info["tau"]
    # Scores of edges not kept travel too: comparisons (ROC AUC) rank every edge by them.
    assert not back.scores[back.graph.valid & ~back.kept].isnan().any()


def test_hand_made_circuit_round_trips(tmp_path: Path) -> None:
    c = _hand_made()
    back = Circuit.load(c.save(tmp_path / "sub" / "c.json"))
    _same(c, back)
    # info keeps JSON values; a NaN comes back as None and a tensor is left out.
    assert back.info == {"tau": 0.1, "task": "induction", "nan": None, "nested": {"a": [1, 2.5]}}
    assert "all_scores" not in json.loads((tmp_path / "sub" / "c.json").read_text())
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["c.json"]  # no temporary left behind


def test_head_level_view() -> None:
    c = _hand_made()
    assert c.components == {"a0.h1", "a1.h0", "m1"}
    assert c.heads == [(0, 1), (1, 0)] and c.mlps == [1]


def test_damaged_and_mismatched_files_are_refused(tmp_path: Path) -> None:
    path = _hand_made().save(tmp_path / "c.json")
    text = path.read_text()
    with pytest.raises(CircuitFileError, match="not a readable circuit file"):
        Circuit.load(_write(tmp_path / "cut.json", text[: len(text) // 2]))
    with pytest.raises(CircuitFileError, match="not a circuit file"):
        Circuit.load(_write(tmp_path / "other.json", json.dumps({"nodes": []})))
    with pytest.raises(CircuitFileError, match="2 layers x 2 heads.*load it for the model"):
        Circuit.load(path, HeadGraph(12, 12))
    doc = json.loads(text)
    doc["edges"][0]["name"] = "a1.h0->a0.h1<q>"
    with pytest.raises(CircuitFileError, match="not an edge of this graph"):
        Circuit.load(_write(tmp_path / "backwards.json", json.dumps(doc)))
    doc = json.loads(text)
    del doc["edges"][0]["effect"]
    with pytest.raises(CircuitFileError, match="damaged circuit file.*KeyError"):
        Circuit.load(_write(tmp_path / "nokey.json", json.dumps(doc)))
    doc = json.loads(text)
    doc["version"] = 99
    with pytest.raises(CircuitFileError, match="version 99"):
        Circuit.load(_write(tmp_path / "future.json", json.dumps(doc)))
    with pytest.raises(FileNotFoundError, match="Circuit.save"):
        Circuit.load(tmp_path / "missing.json")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
