"""graph.html in a real browser: Debian's Chromium, driven by selenium, on a graph traced from a tiny model.

The page is loaded from ``circuits view``'s local server (``graphs.html_server.ViewerServer``). The test
checks that every node renders; hovers a feature (its label and a context, firing token marked, show);
pins it (the pinned subgraph's scores change, to what ``graphs.html_data.pinned_scores`` says, and its
panel shows a verified edge's measured effect); pins a node whose strongest input carries head
loadings (the heads show); shift-clicks a token and a logit (the strongest path between them is
pinned); groups two pinned nodes into a named supernode; drags the pruning slider to its bottom;
and finds no console errors. It skips, saying what to install, where the system Chromium,
chromedriver or selenium is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from browser_helpers import chromium, console_errors, load_viewer, screenshot_viewer, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

PROMPT = "t1 t2 t3 t4 t5 t6"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace's --out folder (graph.html with labels, contexts and verified edges) of a tiny model."""
    from circuits import cli
    from circuits.labels import compute_labels
    from graph_helpers import tiny_setup
    from transcoders.corpus import Corpus

    root = tmp_path_factory.mktemp("viewer")
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        files.append(root / f"doc{i}.txt")
        files[-1].write_text(" ".join(f"t{w}" for w in rng.integers(1, 39, size=400)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIRCUITS_CACHE", str(root / "cache"))  # the corpus's token cache, not ~/.cache
        corpus = Corpus.from_files(files, heldout_fraction=0.0)
        model, tc = tiny_setup()
        labels = compute_labels(model, tc, corpus, n_tokens=512, seq_len=32, batch_size=4, precision="fp32",
                                progress=False)
        return cli.trace_to_dir(PROMPT, root / "out", model=model, transcoders=tc, labels=labels, svg=False,
                                verify=True, transcoder_set="tiny-set")


def _graph_doc(out: Path) -> dict:
    return json.loads((out / "graph.json").read_text())


def test_viewer_in_chromium(traced: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    import graphs
    from graphs.html_data import pinned_scores
    from graphs.html_server import ViewerServer
    from graphs.viewer import used_nodes

    graph = graphs.load(traced / "graph.json")
    doc = _graph_doc(traced)
    contexts = graph.metadata["feature_contexts"]
    assert contexts, "the trace stored no feature contexts"
    with ViewerServer(traced) as server, chromium() as driver:
        ready = load_viewer(driver, server.url)
        # Nodes render: every node the viewer file lists, at the slider's top.
        nodes = driver.find_elements(By.CSS_SELECTOR, "#nodes .node")
        assert len(nodes) == ready["nodes"] == len(doc["nodes"])
        assert ready["edges"] == len(doc["links"])
        assert len(driver.find_elements(By.CSS_SELECTOR, "#nodes .node.f")) == graph.n_features > 0

        # Hover a feature that has contexts: the tooltip shows its label and a context, firing token marked.
        i = next(i for i, node_id in enumerate(graph.node_ids)
                 if node_id.startswith("F") and f"{graph.nodes['layer'][i]}.{graph.nodes['feature'][i]}" in contexts)
        key = f"{graph.nodes['layer'][i]}.{graph.nodes['feature'][i]}"
        node = driver.find_element(By.CSS_SELECTOR, f'#nodes .node[data-id="{graph.node_ids[i]}"]')
        ActionChains(driver).move_to_element(node).perform()
        tip = driver.find_element(By.ID, "tip")
        assert tip.is_displayed()
        label = graph.metadata["feature_labels"][key]
        assert tip.find_element(By.CLASS_NAME, "label").text == label
        act, tokens, at = contexts[key][0]
        first = tip.find_elements(By.CSS_SELECTOR, ".ctx")[0]
        assert first.find_element(By.TAG_NAME, "mark").text == tokens[at].strip()
        assert "".join(tokens).strip() in first.text

        # Pin it: the pinned subgraph's scores change, to the Python definition's values.
        before = driver.find_element(By.ID, "sub-replacement").text, driver.find_element(By.ID, "sub-completeness").text
        none = pinned_scores(graph, np.zeros(graph.n_nodes, dtype=bool))
        assert before == (f"{none[0]:.3f}", f"{none[1]:.3f}")
        node.click()
        after = driver.find_element(By.ID, "sub-replacement").text, driver.find_element(By.ID, "sub-completeness").text
        assert after != before
        pinned = np.zeros(graph.n_nodes, dtype=bool)
        pinned[i] = True
        want = pinned_scores(graph, pinned)
        assert after == (f"{want[0]:.3f}", f"{want[1]:.3f}")
        assert driver.find_element(By.ID, "sub-features").text == "1"

        # The node panel lists its edges; a verified edge shows its measured effect.
        detail = driver.find_element(By.ID, "detail")
        assert label in detail.text and "measured" in detail.text
        measured = [c.text for c in detail.find_elements(By.CSS_SELECTOR, "tr td.num:last-child") if c.text]
        assert measured, "no measured effect shown for a verified graph"

        # Head loadings: a node whose strongest input runs through attention lists that edge's heads.
        ours = dict(zip((n["node_id"] for n in doc["nodes"]), np.array(graph.node_ids)[used_nodes(graph)]))
        strongest: dict[str, dict] = {}
        for link in doc["links"]:
            if abs(link["weight"]) > abs(strongest.get(link["target"], {"weight": 0.0})["weight"]):
                strongest[link["target"]] = link
        with_heads = [t for t, link in strongest.items() if link.get("heads") and ours[t] != graph.node_ids[i]]
        assert with_heads, "the trace recorded no head loadings"
        driver.find_element(By.CSS_SELECTOR, f'#nodes .node[data-id="{ours[with_heads[0]]}"]').click()
        head = strongest[with_heads[0]]["heads"][0][0]
        assert f"heads {head}:" in driver.find_element(By.ID, "detail").text

        # Shift-click a token and the top logit: the strongest path between them is pinned.
        # (Each click redraws the nodes, so each is found afresh.)
        for selector in ("#nodes .node.t", "#nodes .node.l"):
            end = driver.find_element(By.CSS_SELECTOR, selector)
            ActionChains(driver).key_down(Keys.SHIFT).click(end).key_up(Keys.SHIFT).perform()
        note = driver.find_element(By.ID, "path-note").text
        assert note.startswith("pinned a path of ")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#pinned .row")) >= 3

        # Supernode: select two pinned nodes, name the group, group them.
        for k in range(2):
            driver.find_elements(By.CSS_SELECTOR, "#pinned input.select")[k].click()
        driver.find_element(By.ID, "supernode-name").send_keys("name movers")
        driver.find_element(By.ID, "group").click()
        assert driver.find_element(By.CSS_SELECTOR, "#supers text").text == "name movers"
        assert driver.find_element(By.CSS_SELECTOR, "#supernodes input.sn-name").get_attribute("value") == "name movers"

        # The slider at its bottom keeps tokens, logits and what is pinned.
        slider = driver.find_element(By.ID, "threshold")
        slider.send_keys(Keys.HOME)
        driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        n_pinned = len(driver.find_elements(By.CSS_SELECTOR, "#pinned .row"))
        kept = len(driver.find_elements(By.CSS_SELECTOR, "#nodes .node"))
        n_tok_logit = graph.count("token") + graph.count("logit")
        pinned_other = len(driver.find_elements(By.CSS_SELECTOR, "#nodes .node.pinned:not(.t):not(.l)"))
        assert kept == n_tok_logit + pinned_other < len(nodes)
        assert pinned_other <= n_pinned

        assert console_errors(driver) == []


def test_screenshot_helper_writes_a_png(traced: Path, tmp_path: Path) -> None:
    from graphs.html_server import ViewerServer

    with ViewerServer(traced) as server:
        path = screenshot_viewer(server.url, tmp_path / "viewer.png", width=900, height=600)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
