"""``circuits trace PROMPT --out DIR`` on tiny models: the files it writes, and nothing half-written on failure."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import graphs
from circuits import cli
from graph_helpers import assert_same_graph, tiny_setup
from graphs import prune
from transcoders import save_transcoders
from transcoders.writes import MARKER, OutputFolderError, owned_files

HAS_DOT = shutil.which("dot") is not None
PROMPT = "t1 t2 t3 t4 t5 t6"
FILES = {"graph.html", "graph.json", "graph.graphml", "summary.md"} | ({"graph.svg"} if HAS_DOT else set())


def _run(out: Path, **kwargs) -> Path:
    model, tc = tiny_setup()
    return cli.trace_to_dir(PROMPT, out, model=model, transcoders=tc, svg=HAS_DOT, **kwargs)


def test_trace_writes_every_file(tmp_path: Path) -> None:
    out = _run(tmp_path / "run", max_nodes=12, full=True)
    assert {p.name for p in out.iterdir()} == FILES | {"graph.npz", MARKER}
    full = graphs.load(out / "graph.npz")
    assert full.prompt == PROMPT and full.n_features > 0
    pruned = prune(full).graph
    # The GraphML and the JSON hold the pruned graph, exactly.
    assert_same_graph(pruned, graphs.load(out / "graph.graphml"))
    assert_same_graph(pruned, graphs.load(out / "graph.json"))
    doc = json.loads((out / "graph.json").read_text())
    jsonschema.validate(doc, graphs.viewer_schema())
    assert doc["metadata"]["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    # Influence in the JSON is the full graph's cumulative share, as circuit-tracer writes it.
    result = prune(full)
    expected = result.cumulative_scores[result.node_mask]
    got = [n["influence"] for n in doc["nodes"]]
    for kind, e, g in zip(pruned.nodes["kind"], expected, got):
        assert g is None if kind == "logit" else g == pytest.approx(e)
    summary = (out / "summary.md").read_text()
    for heading in ("## Top logits", "## Scores", "## Nodes", "## Strongest paths"):
        assert heading in summary
    assert f"replacement score: {full.replacement_score:.3f}" in summary
    for kind in ("feature", "error", "token", "logit"):  # the pruned column counts the whole pruned graph
        assert f"| {kind}s | {full.count(kind)} | {pruned.count(kind)} |" in summary
    if HAS_DOT:
        svg = (out / "graph.svg").read_text()
        drawn = sum('class="node feature' in line or 'class="node error' in line for line in svg.splitlines())
        assert 0 < drawn <= 12


def test_strongest_paths_in_summary_start_at_tokens(tmp_path: Path) -> None:
    out = _run(tmp_path / "run")
    numbered = {f"{i}." for i in range(1, 6)}
    lines = [line for line in (out / "summary.md").read_text().splitlines() if line[:2] in numbered]
    assert lines
    for line in lines:
        steps = line.split("  ", 1)[1].split(" → ")
        assert "@" in steps[0] and steps[-1].startswith("logit ")


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too: a left-over temporary file shows up here)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failure_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = _run(tmp_path / "previous")  # an earlier run's output
    before = _contents(previous)

    def boom(*args, **kwargs):
        raise RuntimeError("forced failure after the graph files were written")

    monkeypatch.setattr(graphs, "summary", boom)  # written after graph.json and graph.graphml
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="forced failure"):
        _run(fresh)
    assert not fresh.exists()
    with pytest.raises(RuntimeError, match="forced failure"):
        _run(previous)
    assert _contents(previous) == before  # every file as it was, and no temporary file beside them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]


def test_a_users_folder_is_refused_untouched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "thesis.tex").write_text("four years of work")
    (home / "notes.txt").write_text("mine")
    before = _contents(home)
    with pytest.raises(OutputFolderError, match=r"did not write \(Documents, notes.txt\).*Fix: pass a new or empty"):
        _run(home)
    assert _contents(home) == before
    assert (home / "Documents" / "thesis.tex").read_text() == "four years of work"
    # The command line says so in a line, before loading any model.
    assert cli.main(["trace", PROMPT, "--out", str(home), "--model", str(tmp_path / "no-such-model")]) == 2
    assert _contents(home) == before


def test_rerun_replaces_only_its_own_files(tmp_path: Path) -> None:
    out = _run(tmp_path / "run", full=True)
    (out / "my-notes.md").write_text("a user's file beside the output")
    _run(out)  # without --full: the earlier run's graph.npz is stale and goes
    assert {p.name for p in out.iterdir()} == FILES | {MARKER, "my-notes.md"}
    assert (out / "my-notes.md").read_text() == "a user's file beside the output"
    assert owned_files(out) == sorted(FILES)
    # A file of ours the user has since edited is theirs now: refused, not replaced.
    (out / "summary.md").write_text("my edited summary")
    with pytest.raises(OutputFolderError, match="summary.md has changed"):
        _run(out)
    assert (out / "summary.md").read_text() == "my edited summary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_out_that_is_a_file_fails_fast(tmp_path: Path) -> None:
    target = tmp_path / "graph.json"
    target.write_text("{}")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        _run(target)
    assert target.read_text() == "{}"


def test_ctrl_c_during_a_trace_leaves_no_partial_file(tmp_path: Path) -> None:
    """A real SIGINT to a real process, while it writes its files."""
    previous = _run(tmp_path / "out")
    before = _contents(previous)
    started = tmp_path / "writing"
    script = f"""
import signal, time, graphs
from pathlib import Path
# A process started in the background inherits SIGINT ignored; this one must take Ctrl-C as a user's does.
signal.signal(signal.SIGINT, signal.default_int_handler)
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
from graph_helpers import tiny_setup
from circuits import cli

def slow_summary(*args, **kwargs):
    Path({str(started)!r}).write_text("")
    time.sleep(60)

graphs.summary = slow_summary
model, tc = tiny_setup()
cli.trace_to_dir({PROMPT!r}, {str(previous)!r}, model=model, transcoders=tc, svg=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the traced process never reached its writes"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    started.unlink()
    assert _contents(previous) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_command_line_on_a_saved_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real argument path: --model and --transcoders name directories on disk."""
    model, tc = tiny_setup()
    model_dir = tmp_path / "tiny-llama"
    model.hf.save_pretrained(model_dir)
    model.tokenizer.save_pretrained(model_dir)
    tc.cfg.model_name = "tiny-llama"  # the name load_model gives a model loaded from that directory
    try:
        tc_dir = save_transcoders(tc, tmp_path / "tc")
    finally:
        tc.cfg.model_name = model.name
    out = tmp_path / "out"
    args = ["trace", PROMPT, "--out", str(out), "--model", str(model_dir), "--transcoders", str(tc_dir),
            "--label-tokens", "0", "--max-nodes", "8", "--full"] + ([] if HAS_DOT else ["--no-svg"])
    assert cli.main(args) == 0
    assert {p.name for p in out.iterdir()} == FILES | {"graph.npz", MARKER}
    err = capsys.readouterr().err
    assert "[trace] traced 6 tokens" in err and f"wrote {out}/" in err
    full = graphs.load(out / "graph.npz")
    np.testing.assert_array_equal(full.tokens, model.tokenize(PROMPT).cpu().numpy().ravel())


def test_missing_dot_fails_before_tracing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    model, tc = tiny_setup()
    with pytest.raises(graphs.GraphvizMissingError, match="apt-get install graphviz"):
        cli.trace_to_dir(PROMPT, tmp_path / "out", model=model, transcoders=tc)
    assert not (tmp_path / "out").exists()
    out = cli.trace_to_dir(PROMPT, tmp_path / "out", model=model, transcoders=tc, svg=False)
    assert "graph.svg" not in {p.name for p in out.iterdir()}


def test_verify_writes_measured_effects(tmp_path: Path) -> None:
    out = _run(tmp_path / "run", verify=True)
    g = graphs.load(out / "graph.graphml")
    v = g.metadata["verification"]
    assert v["n_edges"] == g.adjacency.nnz > 0
    effects = graphs.measured_effects(g)
    assert len(effects) == g.adjacency.nnz  # every kept edge carries its measured effect
    doc = json.loads((out / "graph.json").read_text())
    jsonschema.validate(doc, graphs.viewer_schema())


def test_a_trace_that_cannot_fit_is_refused_before_it_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model, tc = tiny_setup()
    monkeypatch.setattr(cli, "_load_transcoders", lambda *args, **kwargs: tc)
    monkeypatch.setattr("circuits.load_model", lambda *args, **kwargs: model)
    out = tmp_path / "out"
    assert cli.main(["trace", PROMPT, "--out", str(out), "--no-svg", "--label-tokens", "0",
                     "--memory-budget", "1KiB"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Fix:" in err and "Traceback" not in err
    assert not out.exists()
