"""Assertions for a user's own test suite: is the circuit the one expected, or the one found last time?

```python
from circuits.testing import assert_circuit, assert_matches_golden

assert_circuit(circuit, {"a0.h0", "a1.h0"}, min_recall=1.0, min_faithfulness=0.8)
assert_circuit(circuit, "gpt2-ioi", min_recall=0.5)               # a known circuit (circuits.known)
assert_matches_golden(circuit, "tests/golden/induction.json", tolerance=0.1)
```

Run with ``CIRCUITS_UPDATE_GOLDEN=1`` to (re)write golden files instead of comparing against them.
Failures raise ``AssertionError`` (so they work without pytest's rewriting, and under ``python -O``)
with what is missing, what is extra and by how much the threshold was missed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from circuits.discovery.heads.circuit import Circuit
from circuits.discovery.heads.node_circuit import NodeCircuit
from circuits.known import KnownCircuit
from circuits.known import load as load_known

UPDATE_GOLDEN_ENV = "CIRCUITS_UPDATE_GOLDEN"

Expected = KnownCircuit | str | Circuit | Iterable[str | tuple[int, int]]


def assert_circuit(circuit: Circuit | NodeCircuit, expected: Expected, *, min_recall: float = 1.0,
                   min_precision: float | None = None, min_faithfulness: float | None = None) -> dict[str, Any]:
    """Check ``circuit`` against what it should contain.

    ``expected`` is one of: head/MLP names (``"a1.h0"``, ``"m3"``) or (layer, head) pairs — compared
    with ``circuit.components``; edge names (``"a0.h0->a1.h0<k>"``) — compared with the kept edges;
    a known circuit (``KnownCircuit`` or its name, e.g. ``"gpt2-ioi"``) — compared by heads; another
    ``Circuit`` — compared by edges. At node level, MLPs count only when ``expected`` names one
    (known circuits from the literature are lists of heads).

    A ``NodeCircuit`` (``discover_nodes``) is checked as the same circuit of edges (``as_edge_circuit``).

    Returns the figures (recall, precision, faithfulness, missing, extra) when every check passes.
    """
    if isinstance(circuit, NodeCircuit):
        circuit = circuit.as_edge_circuit()
    level, want, have = _sets(circuit, expected)
    result = _overlap(want, have)
    result.update(level=level, faithfulness=circuit.faithfulness)
    failures = []
    if result["recall"] < min_recall:
        failures.append(f"recall {result['recall']:.3f} < {min_recall} (short by {min_recall - result['recall']:.3f}): "
                        f"missing {len(result['missing'])} of {len(want)} expected {level}s: "
                        f"{_list(result['missing'])}")
    if min_precision is not None and result["precision"] < min_precision:
        failures.append(f"precision {result['precision']:.3f} < {min_precision} (short by "
                        f"{min_precision - result['precision']:.3f}): {len(result['extra'])} of {len(have)} "
                        f"{level}s in the circuit are not expected: {_list(result['extra'])}")
    if min_faithfulness is not None and not circuit.faithfulness >= min_faithfulness:
        failures.append(_faithfulness_failure(circuit, min_faithfulness))
    if failures:
        raise AssertionError(f"{circuit!r} does not match the expected circuit:\n  " + "\n  ".join(failures))
    return result


def assert_matches_golden(circuit: Circuit | NodeCircuit, golden_path: str | Path, *,
                          tolerance: float = 0.1) -> dict[str, Any]:
    """Compare ``circuit`` with the circuit stored at ``golden_path`` (written by ``Circuit.save``).

    A ``NodeCircuit`` (``discover(..., level="nodes")``) is compared by its heads and MLPs
    (Jaccard index) and its faithfulness.

    Passes when the Jaccard index of their head/MLP sets and the recall of the golden edges are
    both at least ``1 - tolerance`` and their faithfulness differs by at most ``tolerance``. With
    the environment variable ``CIRCUITS_UPDATE_GOLDEN=1`` the golden file is (re)written from
    ``circuit`` instead, and the check passes.
    """
    path = Path(golden_path)
    if os.environ.get(UPDATE_GOLDEN_ENV, "") not in ("", "0"):
        circuit.save(path)
        return {"updated": str(path)}
    if not path.exists():
        raise AssertionError(f"no golden circuit at {path}: run once with {UPDATE_GOLDEN_ENV}=1 to write it")
    # A node circuit is compared by its nodes and faithfulness; an edge circuit by its edges too.
    edges: dict[str, Any] | None = None
    if isinstance(circuit, NodeCircuit):
        record = NodeCircuit.read(path)
        nodes = _overlap({r["node"] for r in record["nodes"]}, set(circuit.nodes))
        golden_f, label = record["faithfulness"], ""
    else:
        golden = Circuit.load(path, circuit.graph)
        nodes = _overlap(golden.components, circuit.components)
        golden_f, label = golden.faithfulness, f" ({golden!r})"
        edges = _overlap(_edge_names(golden), _edge_names(circuit))
        n_golden_edges = golden.n_edges
    union = nodes["found"] + len(nodes["missing"]) + len(nodes["extra"])
    jaccard = nodes["found"] / union if union else 1.0
    delta = circuit.faithfulness - golden_f
    floor = 1.0 - tolerance
    failures = []
    if jaccard < floor:
        failures.append(f"heads/MLPs Jaccard {jaccard:.3f} < {floor:.3f} (short by {floor - jaccard:.3f}): "
                        f"missing {_list(nodes['missing'])}; extra {_list(nodes['extra'])}")
    if edges is not None and edges["recall"] < floor:
        failures.append(f"golden edge recall {edges['recall']:.3f} < {floor:.3f} (short by "
                        f"{floor - edges['recall']:.3f}): missing {len(edges['missing'])} of "
                        f"{n_golden_edges} golden edges: {_list(edges['missing'])}")
    if not abs(delta) <= tolerance:
        failures.append(f"faithfulness {circuit.faithfulness:.4f} vs golden {golden_f:.4f}: "
                        f"off by {delta:+.4f}, more than the tolerance {tolerance}")
    if failures:
        raise AssertionError(f"{circuit!r} does not match the golden circuit {path}{label}:\n  "
                             + "\n  ".join(failures)
                             + f"\n(if the change is intended, rerun with {UPDATE_GOLDEN_ENV}=1 to rewrite it)")
    result: dict[str, Any] = {"jaccard": jaccard, "faithfulness_delta": delta, "missing_nodes": nodes["missing"],
                              "extra_nodes": nodes["extra"]}
    if edges is not None:
        result.update(edge_recall=edges["recall"], missing_edges=edges["missing"], extra_edges=edges["extra"])
    return result


def _sets(circuit: Circuit, expected: Expected) -> tuple[str, set[str], set[str]]:
    """(level, expected names, the circuit's names at that level)."""
    if isinstance(expected, Circuit):
        return "edge", _edge_names(expected), _edge_names(circuit)
    if isinstance(expected, str):
        if "->" in expected or expected.startswith(("a", "m")) and expected[1:2].isdigit():
            raise TypeError(f"expected={expected!r} is one name; pass a set of names, e.g. {{{expected!r}}}")
        expected = load_known(expected)
    if isinstance(expected, KnownCircuit):
        g = circuit.graph
        if (g.n_layers, g.n_heads) != (expected.n_layers, expected.n_heads):
            raise ValueError(f"{expected.name} is a circuit of a {expected.n_layers}x{expected.n_heads} model; "
                             f"this circuit's model is {g.n_layers}x{g.n_heads}")
        want = {f"a{layer}.h{head}" for layer, head in expected.heads}
        return "head", want, {f"a{layer}.h{head}" for layer, head in circuit.heads}
    names = {f"a{x[0]}.h{x[1]}" if isinstance(x, tuple) else str(x) for x in expected}
    if not names:
        raise ValueError("expected is empty: name at least one head, MLP or edge")
    if all("->" in n for n in names):
        for n in names:
            circuit.graph.parse_edge(n)  # raises, naming the format, for an edge this graph does not have
        return "edge", names, _edge_names(circuit)
    if any("->" in n for n in names):
        raise ValueError("expected mixes edge names and node names: pass one kind")
    unknown = sorted(names - set(circuit.graph.src_names[1:]))
    if unknown:
        raise ValueError(f"{_list(unknown)} are not heads or MLPs of this {circuit.graph.n_layers}-layer, "
                         f"{circuit.graph.n_heads}-head model; names look like 'a1.h0' and 'm3'")
    have = circuit.components
    if not any(n.startswith("m") for n in names):
        return "head", names, {n for n in have if n.startswith("a")}
    return "head/MLP", names, have


def _overlap(want: set[str], have: set[str]) -> dict[str, Any]:
    found = len(want & have)
    return {"recall": found / len(want) if want else 1.0, "precision": found / len(have) if have else 1.0,
            "found": found, "missing": sorted(want - have), "extra": sorted(have - want)}


def _edge_names(circuit: Circuit) -> set[str]:
    g = circuit.graph
    return {g.edge_name(s, d) for s, d in circuit.kept.nonzero().tolist()}


def _faithfulness_failure(circuit: Circuit, minimum: float) -> str:
    return (f"faithfulness {circuit.faithfulness:.4f} < {minimum} (short by {minimum - circuit.faithfulness:.4f}; "
            f"m(circuit) = {circuit.metric_circuit:.4g}, m(model) = {circuit.metric_full:.4g}, "
            f"m(empty) = {circuit.metric_empty:.4g})")


def _list(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
