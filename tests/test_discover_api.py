"""The discovery API: one entry point per kind of circuit, and ``discover`` dispatching to them.

- every (granularity, level) of ``discover`` finds what its entry point finds when called directly;
- every keyword that does not apply to a mode raises, naming the entry point that takes it (the
  list is derived from the entry points' signatures, so a new keyword is tested as it lands);
- within an entry point, a keyword the method does not read, or one that disagrees with a reused
  patcher, raises too.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from _threads import one_thread  # noqa: F401
from planted import PLANTED_EDGES, V, planted_induction_model
from test_discovery_features import PLANTED as PLANTED_FEATURES
from test_discovery_features import planted_model, planted_task

from circuits import Circuit, FeatureCircuit, NodeCircuit, discover, discover_edges, discover_features, discover_nodes
from circuits.discovery import ENTRY_POINTS, FeaturePatcher, keywords
from circuits.patching import EdgePatcher
from circuits.patching.nodes import NodePatcher
from circuits.tasks import induction

MODES = list(ENTRY_POINTS)
ALL_KEYWORDS = sorted({k for entry in ENTRY_POINTS.values() for k in keywords(entry)})
NOT_APPLYING = [(mode, k) for mode, entry in ENTRY_POINTS.items() for k in ALL_KEYWORDS if k not in keywords(entry)]


def _induction(model, n: int = 8, seed: int = 0):
    return induction.dataset(model.tokenizer, n=n, seq_len=6, bos=None, vocab=torch.arange(1, V), seed=seed)


@pytest.fixture(scope="module")
def heads():
    model = planted_induction_model()
    return model, _induction(model)


@pytest.fixture(scope="module")
def features():
    model, tc = planted_model()
    return model, planted_task(), tc


# --- the entry points and the table ----------------------------------------------------------


def test_every_mode_has_its_entry_point_and_one_return_type():
    assert ENTRY_POINTS == {("heads", "edges"): discover_edges, ("heads", "nodes"): discover_nodes,
                            ("features", "edges"): discover_features}
    returns = {entry.__name__: inspect.signature(entry).return_annotation for entry in ENTRY_POINTS.values()}
    assert returns == {"discover_edges": "Circuit", "discover_nodes": "NodeCircuit",
                       "discover_features": "FeatureCircuit"}
    for entry in ENTRY_POINTS.values():  # model and task first; every option is a keyword
        params = list(inspect.signature(entry).parameters.values())
        assert [p.name for p in params[:2]] == ["model", "task"]
        assert all(p.kind is p.KEYWORD_ONLY for p in params[2:] if p.name != "transcoders")
    for entry in ENTRY_POINTS.values():  # the docstring names each entry point
        assert entry.__name__ in discover.__doc__


def test_the_not_applying_list_covers_what_the_brief_named():
    # Keywords that used to be silently ignored in some modes: each is now in the list for it.
    named = {("heads", "nodes"): {"split_qkv", "order", "scores_method", "steps", "batch", "transcoders"},
             ("features", "edges"): {"split_qkv", "order", "scores_method", "metric", "include_mlps",
                                     "screen_layers", "precision"},
             ("heads", "edges"): {"include_mlps", "screen_layers", "precision", "transcoders", "labels"}}
    for mode, names in named.items():
        assert names <= {k for m, k in NOT_APPLYING if m == mode}


# --- dispatch: the same circuit as the entry point --------------------------------------------


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is b is None or torch.equal(a.nan_to_num(123.0), b.nan_to_num(123.0))  # type: ignore[union-attr]


def _same_heads(a: Circuit | NodeCircuit, b: Circuit | NodeCircuit) -> None:
    assert torch.equal(a.kept, b.kept)
    assert _same(a.scores, b.scores) and _same(a.effects, b.effects)
    assert (a.faithfulness, a.metric_circuit, a.method) == (b.faithfulness, b.metric_circuit, b.method)


@pytest.mark.parametrize(("method", "options"), [("acdc", {"tau": 0.05}), ("eap-ig", {"top_n": 4, "steps": 3}),
                                                 ("acdc", {"candidates": 6, "scores_method": "eap", "batch": 2})])
def test_heads_edges_dispatches_to_discover_edges(heads, method, options):
    model, task = heads
    via = discover(model, task, method=method, progress=False, **options)
    direct = discover_edges(model, task, method=method, progress=False, **options)
    assert isinstance(via, Circuit) and not isinstance(via, NodeCircuit)
    _same_heads(via, direct)
    assert {e["name"] for e in via.edges} == set(PLANTED_EDGES)


@pytest.mark.parametrize(("method", "options"), [("acdc", {"ablation": "mean"}), ("eap", {"top_n": 2})])
def test_heads_nodes_dispatches_to_discover_nodes(heads, method, options):
    model, task = heads
    options = {"ablation": "resample", "include_mlps": False, **options}
    via = discover(model, task, level="nodes", method=method, progress=False, **options)
    direct = discover_nodes(model, task, method=method, progress=False, **options)
    assert isinstance(via, NodeCircuit)
    _same_heads(via, direct)
    assert via.heads == direct.heads
    assert via.info["ablation"] == options["ablation"]


@pytest.mark.parametrize(("method", "options"), [("eap", {}), ("acdc", {"candidates": 20})])
def test_features_dispatches_to_discover_features(features, method, options):
    model, task, tc = features
    via = discover(model, task, granularity="features", transcoders=tc, method=method, progress=False, **options)
    direct = discover_features(model, task, tc, method=method, progress=False, **options)
    assert isinstance(via, FeatureCircuit)
    assert via.nodes == direct.nodes and via.edges == direct.edges
    assert (via.faithfulness, via.metric_circuit, via.method) == (direct.faithfulness, direct.metric_circuit, method)
    assert set(via.node_names) == PLANTED_FEATURES


def test_discover_keeps_its_historical_defaults(heads, features):
    # method="acdc" at every granularity; resample ablation at node level (discover_nodes: mean).
    model, task = heads
    nodes = discover(model, task, level="nodes", include_mlps=False, progress=False)
    assert nodes.method == "acdc" and nodes.info["ablation"] == "resample"
    _same_heads(nodes, discover_nodes(model, task, ablation="resample", include_mlps=False, progress=False))
    assert discover_nodes(model, task, include_mlps=False, progress=False).info["ablation"] == "mean"
    model, task, tc = features
    c = discover(model, task, granularity="features", transcoders=tc, candidates=20, progress=False)
    assert c.method == "acdc" and c.info["ablation"] == "resample"


# --- keywords that do not apply to a mode -----------------------------------------------------


@pytest.mark.parametrize(("mode", "keyword"), NOT_APPLYING, ids=[f"{g}-{lv}-{k}" for (g, lv), k in NOT_APPLYING])
def test_a_keyword_that_does_not_apply_to_the_mode_raises(mode, keyword):
    granularity, level = mode
    takers = [e.__name__ for e in ENTRY_POINTS.values() if keyword in keywords(e)]
    assert takers  # the keyword belongs to some other entry point
    # It raises before any work: no model or task is even looked at.
    with pytest.raises(ValueError, match=rf"{keyword}=") as err:
        discover(None, None, granularity=granularity, level=level, **{keyword: 1})  # type: ignore[arg-type]
    message = str(err.value)
    assert ENTRY_POINTS[mode].__name__ in message and all(t in message for t in takers)


@pytest.mark.parametrize("mode", MODES)
def test_every_keyword_of_the_entry_point_passes_the_check(mode):
    from circuits.discovery import _check_options

    entry = ENTRY_POINTS[mode]
    _check_options(entry, *mode, {k: 1 for k in keywords(entry)})  # no raise


def test_unknown_keyword_mode_and_level_raise():
    with pytest.raises(ValueError, match="taus= is no option of any discovery entry point"):
        discover(None, None, taus=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="granularity"):
        discover(None, None, granularity="layers")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        discover(None, None, level="layers")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="edges=False"):
        discover(None, None, granularity="features", level="nodes")  # type: ignore[arg-type]


# --- within an entry point: keywords the method does not read ---------------------------------

METHOD_MISUSE = [
    (discover_edges, {"method": "acdc", "top_n": 5}, "top_n="),
    (discover_edges, {"method": "acdc", "scores_method": "eap"}, "scores_method="),
    (discover_edges, {"method": "acdc", "steps": 3}, "steps="),
    (discover_edges, {"method": "acdc", "candidates": 5, "scores_method": "eap", "steps": 3}, "steps="),
    (discover_edges, {"method": "eap", "candidates": 5}, "candidates="),
    (discover_edges, {"method": "eap-ig", "order": "scores"}, "order="),
    (discover_edges, {"method": "eap-ig", "batch": 2}, "batch="),
    (discover_edges, {"method": "eap", "steps": 3}, "steps="),
    (discover_edges, {"method": "eap", "tau": 0.1, "top_n": 5}, "tau="),
    (discover_edges, {"method": "sae"}, "method"),
    (discover_edges, {"order": "random"}, "order"),
    (discover_nodes, {"method": "acdc", "top_n": 5}, "top_n="),
    (discover_nodes, {"method": "eap", "candidates": 5}, "candidates="),
    (discover_nodes, {"method": "eap", "screen_layers": True}, "screen_layers="),
    (discover_nodes, {"method": "eap", "max_sweeps": 2}, "max_sweeps="),
    (discover_nodes, {"method": "eap", "z": 2.0}, "z="),
    (discover_nodes, {"method": "eap", "tau": 0.1, "top_n": 5}, "tau="),
    (discover_nodes, {"method": "eap-ig"}, "EAP-IG"),
    (discover_features, {"method": "acdc", "top_n": 5}, "top_n="),
    (discover_features, {"method": "eap-ig", "candidates": 5}, "candidates="),
    (discover_features, {"method": "eap", "batch": 2}, "batch="),
    (discover_features, {"method": "eap", "steps": 3}, "steps="),
    (discover_features, {"method": "eap", "edges": False, "edge_tau": 0.1}, "edge_tau="),
    (discover_features, {"method": "sae"}, "method"),
]


@pytest.mark.parametrize(("entry", "options", "match"), METHOD_MISUSE,
                         ids=[f"{e.__name__}-{'-'.join(map(str, o.values()))}" for e, o, _ in METHOD_MISUSE])
def test_a_keyword_the_method_does_not_read_raises(entry, options, match):
    args = (None, None, None) if entry is discover_features else (None, None)
    with pytest.raises(ValueError, match=match):
        entry(*args, **options)  # raises before any work


def test_the_same_misuse_raises_through_discover():
    with pytest.raises(ValueError, match="top_n="):
        discover(None, None, method="acdc", top_n=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="candidates="):
        discover(None, None, level="nodes", method="eap", candidates=5)  # type: ignore[arg-type]


# --- a reused patcher fixes its own keywords --------------------------------------------------


def test_a_patcher_is_reused_only_where_it_agrees(heads, features):
    model, task = heads
    p = EdgePatcher(model, task)
    c = discover_edges(model, task, method="eap", tau=0.05, patcher=p, ablation="resample", progress=False)
    assert {e["name"] for e in c.edges} == set(PLANTED_EDGES)
    with pytest.raises(ValueError, match=r"ablation='mean' \(the patcher ablates with 'resample'\)"):
        discover_edges(model, task, method="eap", patcher=p, ablation="mean")
    with pytest.raises(ValueError, match="split_qkv=False"):
        discover_edges(model, task, method="eap", patcher=p, split_qkv=False)
    with pytest.raises(ValueError, match="batch_size=8"):
        discover_edges(model, task, method="eap", patcher=p, batch_size=8)
    with pytest.raises(ValueError, match="another model or task"):
        discover_edges(model, _induction(model, seed=1), method="eap", patcher=p)
    with pytest.raises(TypeError, match="instance of NodePatcher, got EdgePatcher"):
        discover_nodes(model, task, patcher=p)
    nodes = NodePatcher(model, task, ablation="resample")
    with pytest.raises(ValueError, match=r"ablation='mean' \(the patcher ablates with 'resample'\)"):
        discover_nodes(model, task, patcher=nodes, ablation="mean")
    with pytest.raises(ValueError, match=r"precision='bf16' \(the patcher's: 'fp32'\)"):
        discover_nodes(model, task, patcher=nodes, precision="bf16")
    with pytest.raises(TypeError, match="instance of EdgePatcher, got NodePatcher"):
        discover_edges(model, task, patcher=nodes)
    # Through discover, a node-level patcher keeps its own ablation (no resample default forced on it).
    c = discover(model, task, level="nodes", patcher=nodes, include_mlps=False, progress=False)
    assert c.info["ablation"] == "resample" and c.heads == [(0, 0), (1, 0)]
    model, task, tc = features
    fp = FeaturePatcher(model, task, tc, batch_size=4)
    with pytest.raises(ValueError, match="ablation='zero'"):
        discover_features(model, task, tc, patcher=fp, ablation="zero")
    with pytest.raises(ValueError, match="batch_size=16"):
        discover_features(model, task, tc, patcher=fp, batch_size=16)
    with pytest.raises(TypeError, match="instance of FeaturePatcher, got EdgePatcher"):
        discover(model, task, granularity="features", transcoders=tc, patcher=p)
    c = discover_features(model, task, tc, method="eap", patcher=fp, batch_size=4, progress=False)
    assert set(c.node_names) == PLANTED_FEATURES and not math.isnan(c.faithfulness)
