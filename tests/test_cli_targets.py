"""``circuits trace --target/--minus/--direction``, and what the files say about attention: head loadings on
the edges of every export and the SVG, and the QK pairs of the strongest attention edge in summary.md."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import graphs
from circuits import cli
from graph_helpers import tiny_setup
from transcoders import save_transcoders

HAS_DOT = shutil.which("dot") is not None
PROMPT = "t1 t2 t3 t4 t5 t6"


def _saved(tmp_path: Path) -> tuple[list[str], object]:
    model, tc = tiny_setup()
    model_dir = tmp_path / "tiny-llama"
    model.hf.save_pretrained(model_dir)
    model.tokenizer.save_pretrained(model_dir)
    tc.cfg.model_name = "tiny-llama"
    try:
        tc_dir = save_transcoders(tc, tmp_path / "tc")
    finally:
        tc.cfg.model_name = model.name
    return ["--model", str(model_dir), "--transcoders", str(tc_dir), "--label-tokens", "0", "--full"] + (
        [] if HAS_DOT else ["--no-svg"]), model


def test_targets_from_the_command_line(tmp_path: Path) -> None:
    common, model = _saved(tmp_path)
    probe = tmp_path / "probe.npy"
    np.save(probe, np.random.default_rng(0).normal(size=model.d_model))
    out = tmp_path / "out"
    assert cli.main(["trace", PROMPT, "--out", str(out), "--target", "t3", "--minus", "t4", "--target", "t7",
                     "--minus", "t1", "--direction", f"probe={probe}", *common]) == 0
    full = graphs.load(out / "graph.npz")
    lg = full.span("logit")
    assert list(full.nodes["token"][lg]) == ["'t3' − 't4'", "'t7' − 't1'", "probe"]
    assert [t["kind"] for t in full.metadata["targets"]] == ["logit_diff", "logit_diff", "direction"]
    with pytest.raises(SystemExit, match="one --minus per --target"):
        cli.main(["trace", PROMPT, "--out", str(tmp_path / "x"), "--target", "t3", "--minus", "t4", "--minus",
                  "t5", *common])
    with pytest.raises(SystemExit, match="NAME=FILE.npy"):
        cli.main(["trace", PROMPT, "--out", str(tmp_path / "y"), "--direction", "probe", *common])


def test_files_show_heads_and_qk_pairs(tmp_path: Path) -> None:
    common, _ = _saved(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["trace", PROMPT, "--out", str(out), *common]) == 0
    summary = (out / "summary.md").read_text()
    assert "## Attention into the top logit" in summary and "| query source | key source | term |" in summary
    assert "heads" in (out / "graph.graphml").read_text()
    assert '"heads"' in (out / "graph.json").read_text()
    if HAS_DOT:
        assert ".H" in (out / "graph.svg").read_text()  # an attention edge labelled with its heads
