"""Every script in examples/ runs, on the tiny model (``--tiny``), and does what its docstring says.

The scripts run in this process (``runpy``; a fresh interpreter per script would spend ~20 s each
importing torch and transformers): each is loaded as a module and its ``main(argv)`` called with the
arguments a user would type. ``CIRCUITS_CACHE`` points into the test's temp folder, so training's
checkpoints and the corpus's token cache never touch the user's cache.
"""

from __future__ import annotations

import ast
import json
import math
import re
import runpy
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _threads import one_thread  # noqa: F401

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Any]:
    """``example("name.py", *args)``: run that script's ``main`` with ``--tiny`` and ``args``; its return value."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIRCUITS_EXAMPLE_TINY", raising=False)  # --tiny says it, as a user would

    def run(name: str, *args: str) -> Any:
        return runpy.run_path(str(EXAMPLES / name), run_name=name.removesuffix(".py"))["main"](["--tiny", *args])

    return run


def test_every_example_is_tested_and_documented() -> None:
    tests = [name for name in globals() if name.startswith("test_")]
    for script in SCRIPTS:
        stem = script.removesuffix(".py").removeprefix("test_")  # test_pinned_circuit.py: test_pinned_circuit
        assert any(t.startswith(f"test_{stem}") for t in tests), f"examples/{script} has no test here"
    readme = (EXAMPLES.parent / "README.md").read_text()
    for script in SCRIPTS:
        assert f"examples/{script}" in readme, f"README.md's Examples list does not name examples/{script}"
        doc = ast.get_docstring(ast.parse((EXAMPLES / script).read_text())) or ""
        assert len(doc.strip()) > 40, f"examples/{script} needs a docstring saying what it shows"


def test_ioi_prediction(example, capsys) -> None:
    top = example("ioi_prediction.py")
    out = capsys.readouterr().out
    assert "top next tokens:" in out
    assert len(top) == 5 and all(0.0 <= score <= 1.0 for score, _, _ in top)
    assert [s for s, _, _ in top] == sorted((s for s, _, _ in top), reverse=True)
    layer, head = top[0][1:]
    assert f"L{layer}H{head}: attention END -> Mary = {top[0][0]:.2f}" in out


def test_trace_render_view(example, capsys, tmp_path: Path) -> None:
    import graphs

    out = example("trace_render_view.py", "--out", str(tmp_path / "trace"))
    assert out == tmp_path / "trace"
    assert {f.name for f in out.iterdir()} >= {"graph.html", "graph.json", "graph.graphml", "graph.svg", "summary.md"}
    assert "<svg" in (out / "graph.svg").read_text()
    doc = json.loads((out / "graph.json").read_text())
    assert doc["nodes"] and doc["links"] and doc["metadata"]["node_threshold"] == 0.8  # the viewer's slider
    pruned = graphs.load(out / "graph.graphml")
    assert pruned.n_nodes == len(doc["nodes"]) and pruned.n_features > 0
    assert "Mary" in (out / "summary.md").read_text()
    printed = capsys.readouterr().out
    assert "replacement score" in printed and "completeness score" in printed
    assert f"pruned graph: {pruned.n_nodes} nodes" in printed
    assert printed.splitlines()[-1] == f"to explore it in the browser: circuits view {out}"
    # What --view (and `circuits view`) does: serve the folder on localhost; the page is self-contained.
    from graphs.html_server import ViewerServer

    with ViewerServer(out) as server, urllib.request.urlopen(server.url, timeout=30) as page:
        html = page.read().decode()
    assert html == (out / "graph.html").read_text() and "graph-data" in html
    assert not re.search(r"<script[^>]+src=|<link[^>]+stylesheet", html), "the page must load nothing from outside"


def test_trace_render_view_never_writes_among_a_users_files(example, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "graph.json").write_text("my own file")
    with pytest.raises(SystemExit, match="not an empty folder"):
        example("trace_render_view.py", "--out", str(mine))
    assert (mine / "graph.json").read_text() == "my own file" and len(list(mine.iterdir())) == 1


def test_logit_difference(example, capsys) -> None:
    graph = example("logit_difference.py")
    out = capsys.readouterr().out
    assert graph.count("logit") == 1 and graph.metadata["targets"], "one target: the logit difference"
    target = graph.span("logit").start
    assert graph.nodes["token"][target] == "'Mary' − 'John'"
    # What the example shows: the graph's value is the model's own logit difference, and the edges add up to it.
    shown = re.search(r"'Mary' − 'John': ([-+]\d+\.\d+) in the graph, ([-+]\d+\.\d+) from the model itself", out)
    assert shown and shown.group(1) == shown.group(2), out
    total = re.search(r"incoming edges ([-+]\d+\.\d+) \+ constant terms ([-+]\d+\.\d+) = ([-+]\d+\.\d+)", out)
    assert total and total.group(3) == shown.group(1)
    rows = out.split("and the rest)\n")[1].strip().splitlines()
    assert len(rows) == 8 and all("direct" in r for r in rows)


def test_trace_verify(example, capsys) -> None:
    v = example("trace_verify.py")
    out = capsys.readouterr().out
    assert v["n_edges"] > 0 and 0 <= v["n_flagged"] == v["n_sign"] + v["n_size"] <= v["n_edges"]
    assert f"verified {v['n_edges']} edges" in out
    rows = out.split("attribution weight, measured effect, flag\n")[1].strip().splitlines()
    assert len(rows) == min(5, v["n_edges"]) and all(" -> " in r for r in rows)


def test_discover_ioi_heads(example, capsys) -> None:
    from circuits import NodeCircuit
    from circuits.testing import assert_circuit

    heads = example("discover_ioi_heads.py", "--n", "8")
    out = capsys.readouterr().out
    assert isinstance(heads, NodeCircuit) and heads.heads and math.isfinite(heads.faithfulness)
    assert f"{len(heads.heads)} heads, faithfulness {heads.faithfulness:.3f}" in out
    for layer, head in heads.heads:
        assert f"L{layer}H{head}: " in out
    # A NodeCircuit can be pinned by its heads (assert_circuit raised AttributeError on one).
    assert assert_circuit(heads, set(heads.heads), min_recall=1.0, min_precision=1.0)["level"] == "head"


def test_intervene_steer(example, capsys) -> None:
    r = example("intervene_steer.py", "--tokens", "4")
    out = capsys.readouterr().out
    off = r["off"]
    assert not torch.allclose(off.logits, off.clean_logits), "switching the feature off changed nothing"
    assert torch.allclose(r["plain"].clean_logits, off.clean_logits)
    for key in ("plain", "steered"):
        assert r[key].generated.shape == (4,) and f"{r[key].text!r}" in out
    assert not torch.equal(r["plain"].generated, r["steered"].generated), "steering changed nothing"


def test_train_transcoders(example, capsys, tmp_path: Path) -> None:
    out = example("train_transcoders.py", "--out", str(tmp_path / "train"))
    files = {f.name for f in (out / "set").iterdir()}
    assert {"config.yaml", "layer_0.safetensors", "layer_1.safetensors", "layer_2.safetensors"} <= files
    ev = json.loads((out / "evaluation.json").read_text())
    assert 0.0 < ev["fvu"] < 1.0 and ev["l0"] == pytest.approx(4.0)  # learned something; TopK k=4
    printed = capsys.readouterr().out
    assert "traced with the saved set" in printed and "FVU" in printed


def test_load_circuit_tracer_set_writes_one_and_loads_it(example, capsys) -> None:
    folder = example("load_circuit_tracer_set.py")
    assert (folder / "config.yaml").is_file() and (folder / "layer_2.safetensors").is_file()
    out = capsys.readouterr().out
    assert "PLT, 3 layers x 64 features, jumprelu, reads mlp_in, writes mlp_resid" in out
    assert "replacement score" in out


def test_load_circuit_tracer_set_from_a_folder(example, capsys, tmp_path: Path) -> None:
    import sys

    from transcoders import save_transcoders

    sys.path.insert(0, str(EXAMPLES))
    from _common import tiny_setup

    model, tc = tiny_setup()
    save_transcoders(tc, tmp_path / "saved")  # circuit-tracer's format: a TopK set with k at the top level
    assert example("load_circuit_tracer_set.py", str(tmp_path / "saved")) == tmp_path / "saved"
    assert f"PLT, 3 layers x {tc.cfg.d_features} features, topk" in capsys.readouterr().out


def test_pinned_circuit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    """The pytest example: the first run writes the golden file, the next passes, a moved circuit fails."""
    golden = tmp_path / "golden.json"
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("CIRCUITS_EXAMPLE_TINY", "1")
    monkeypatch.setenv("PINNED_GOLDEN", str(golden))

    def pytest_run() -> tuple[int, str]:
        code = pytest.main([str(EXAMPLES / "test_pinned_circuit.py"), "-q", "-p", "no:cacheprovider",
                            "--rootdir", str(tmp_path)])
        return int(code), capsys.readouterr().out

    monkeypatch.setenv("CIRCUITS_UPDATE_GOLDEN", "1")
    code, out = pytest_run()
    assert code == 0 and golden.is_file(), out
    assert "1 passed, 1 skipped" in out  # the SmolLM2 heads are skipped on the tiny model, with the reason
    monkeypatch.delenv("CIRCUITS_UPDATE_GOLDEN")
    code, out = pytest_run()
    assert code == 0 and "1 passed, 1 skipped" in out, out

    stored = json.loads(golden.read_text())
    stored["faithfulness"] += 0.5  # as if the circuit had lost half its faithfulness since
    stored["nodes"] = stored["nodes"][: len(stored["nodes"]) // 2]
    golden.write_text(json.dumps(stored))
    code, out = pytest_run()
    assert code == 1 and "1 failed" in out
    assert "does not match the golden circuit" in out and "heads/MLPs Jaccard" in out and "faithfulness" in out
