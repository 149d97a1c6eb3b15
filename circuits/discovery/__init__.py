"""Circuit discovery: ACDC, EAP and EAP-IG over the ``HeadGraph`` of a model (heads), or over the
features, errors and token embeddings of its replacement model (features).

One entry point per kind of circuit, each taking only the keywords that apply to it:

- ``discover_edges(model, task, ...) -> Circuit``: edges between heads, MLPs, the input and the logits;
- ``discover_nodes(model, task, ...) -> NodeCircuit``: which heads and MLPs run;
- ``discover_features(model, task, transcoders, ...) -> FeatureCircuit``: transcoder features, errors
  and token embeddings of the replacement model, with the edges among them.

``discover`` dispatches to them by ``granularity`` and ``level``. The head-level modules live in
``circuits.discovery.heads``, the feature-level ones in ``circuits.discovery.features``, and the
keyword checks they share in ``circuits.discovery.options``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from circuits.discovery.features import FeatureCircuit, FeatureEdge, FeatureNode, FeaturePatcher, discover_features
from circuits.discovery.heads import (
    Circuit,
    EdgeMethod,
    NodeCircuit,
    acdc,
    attribution_circuit,
    discover_edges,
    discover_nodes,
    measure_effects,
    prune_dead,
    reaches_logits,
    top_edges,
)
from circuits.models.adapter import Model
from circuits.tasks.task import Task

Method = EdgeMethod

# (granularity, level) -> the entry point ``discover`` calls.
ENTRY_POINTS: dict[tuple[str, str], Callable[..., Any]] = {
    ("heads", "edges"): discover_edges,
    ("heads", "nodes"): discover_nodes,
    ("features", "edges"): discover_features,
}


def keywords(entry: Callable[..., Any]) -> tuple[str, ...]:
    """The keywords ``discover`` may forward to ``entry``: its parameters after ``model`` and ``task``."""
    return tuple(inspect.signature(entry).parameters)[2:]


def discover(model: Model, task: Task, *, granularity: Literal["heads", "features"] = "heads",
             level: Literal["edges", "nodes"] = "edges", **options: Any) -> Circuit | NodeCircuit | FeatureCircuit:
    """Find the circuit of ``model`` for ``task`` by calling the entry point for its kind:

    - ``granularity="heads", level="edges"`` (the default): ``discover_edges(model, task, **options)``,
      a ``Circuit``;
    - ``granularity="heads", level="nodes"``: ``discover_nodes(model, task, **options)``, a ``NodeCircuit``;
    - ``granularity="features"`` (level ``"edges"``, the default):
      ``discover_features(model, task, transcoders, **options)``, a ``FeatureCircuit``.

    Prefer calling the entry point: it says which keywords it takes, and its return type is one.
    ``options`` are that entry point's keywords (see its docstring); one that does not apply to the
    granularity and level (say ``split_qkv=`` at node level, or ``precision=`` at edge level) raises
    ``ValueError`` naming the entry point that takes it. A feature circuit holds nodes and the edges
    among them: ``level="nodes"`` has no meaning there (``discover_features(..., edges=False)`` keeps
    the nodes only).

    Defaults are the entry point's, except three kept from before the entry points were split, so
    that existing calls find the same circuit: ``method="acdc"`` at every granularity
    (``discover_features`` defaults to ``"eap-ig"``), ``ablation="resample"`` at node level when no
    ``patcher=`` is given (``discover_nodes`` defaults to ``"mean"``), and at feature granularity
    ``transcoders=`` defaults to the model's default set (``transcoders.load_transcoders``).
    """
    if granularity not in ("heads", "features"):
        raise ValueError(f"unknown granularity {granularity!r}: use 'heads' or 'features'")
    if level not in ("edges", "nodes"):
        raise ValueError(f"unknown level {level!r}: use 'edges' or 'nodes'")
    entry = ENTRY_POINTS.get((granularity, level))
    if entry is None:
        raise ValueError("level='nodes' does not apply to granularity='features': a feature circuit holds nodes "
                         "and the edges among them. Fix: leave level out, or call "
                         "discover_features(model, task, transcoders, edges=False) for its nodes only.")
    _check_options(entry, granularity, level, options)
    options.setdefault("method", "acdc")
    if entry is discover_nodes and options.get("patcher") is None:
        options.setdefault("ablation", "resample")
    if entry is discover_features:
        transcoders = options.pop("transcoders", None)
        if transcoders is None:
            from circuits.attribution.checks import default_transcoders

            transcoders = default_transcoders(model)
        return discover_features(model, task, transcoders, **options)
    return entry(model, task, **options)


def _check_options(entry: Callable[..., Any], granularity: str, level: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every keyword of ``options`` that ``entry`` does not take."""
    takes = set(keywords(entry))
    wrong = sorted(set(options) - takes)
    if not wrong:
        return
    lines = []
    for name in wrong:
        elsewhere = [(mode, e.__name__) for mode, e in ENTRY_POINTS.items() if name in keywords(e)]
        if elsewhere:
            where = "; ".join(f"{e} (granularity={g!r}, level={lv!r})" for (g, lv), e in elsewhere)
            lines.append(f"{name}= is an option of {where}")
        else:
            lines.append(f"{name}= is no option of any discovery entry point")
    raise ValueError(f"discover(granularity={granularity!r}, level={level!r}) calls {entry.__name__}, which does not "
                     f"take {', '.join(n + '=' for n in wrong)}: " + "; ".join(lines)
                     + f". Fix: leave {'it' if len(wrong) == 1 else 'them'} out, or call the entry point named.")


__all__ = ["ENTRY_POINTS", "NodeCircuit", "discover_nodes", "Circuit", "FeatureCircuit", "FeatureEdge", "FeatureNode",
           "FeaturePatcher", "Method", "acdc", "attribution_circuit", "discover", "discover_edges", "discover_features",
           "keywords", "measure_effects", "prune_dead", "reaches_logits", "top_edges"]
