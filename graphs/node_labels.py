"""The text each node shows: a feature's label (its top-activating tokens), a token, a logit.

Feature labels are computed elsewhere (``circuits.labels``, from the training text) and kept in
``graph.metadata["feature_labels"]`` as ``{"layer.feature": text}`` for the features in the graph,
so every export carries them and this package needs no tokenizer or model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphs.graph import AttributionGraph

LABELS_KEY = "feature_labels"
CONTEXTS_KEY = "feature_contexts"
"""``graph.metadata`` key: ``{"layer.feature": [[activation, [token texts], index of the firing token], ...]}``,
each feature's top-activating contexts, strongest first (what ``graph.html`` shows on hover)."""


def feature_key(layer: int, feature: int) -> str:
    return f"{int(layer)}.{int(feature)}"


def set_feature_labels(graph: AttributionGraph, labels: Mapping[tuple[int, int], str] | Mapping[str, str]) -> int:
    """Store the labels of the graph's features (keys ``(layer, feature)`` or ``"layer.feature"``).

    Labels of features not in the graph are left out, so the metadata stays small.
    Returns how many of the graph's features got a label.
    """
    lookup = {feature_key(*k) if isinstance(k, tuple) else str(k): str(v) for k, v in labels.items()}
    s = graph.span("feature")
    wanted = {feature_key(layer, f) for layer, f in zip(graph.nodes["layer"][s], graph.nodes["feature"][s])}
    found = {k: lookup[k] for k in sorted(wanted) if k in lookup}
    graph.metadata[LABELS_KEY] = found
    return len(found)


def set_feature_contexts(graph: AttributionGraph,
                         contexts: Mapping[tuple[int, int], list] | Mapping[str, list]) -> int:
    """Store the top-activating contexts of the graph's features (``CONTEXTS_KEY`` describes a value;
    ``circuits.labels.FeatureLabels.context_windows`` makes them). Others are left out, as for labels.
    Returns how many of the graph's features got contexts."""
    lookup = {feature_key(*k) if isinstance(k, tuple) else str(k): v for k, v in contexts.items()}
    s = graph.span("feature")
    wanted = {feature_key(layer, f) for layer, f in zip(graph.nodes["layer"][s], graph.nodes["feature"][s])}
    found = {k: [[float(act), [str(t) for t in tokens], int(at)] for act, tokens, at in lookup[k]]
             for k in sorted(wanted) if lookup.get(k)}
    graph.metadata[CONTEXTS_KEY] = found
    return len(found)


def node_labels(graph: AttributionGraph) -> list[str]:
    """``[n_nodes]`` the text to show for each node."""
    labels: dict[str, str] = graph.metadata.get(LABELS_KEY) or {}
    n = graph.nodes
    out = []
    for kind, layer, feat, token in zip(n["kind"], n["layer"], n["feature"], n["token"]):
        if kind == "feature":
            out.append(labels.get(feature_key(layer, feat)) or f"L{layer} #{feat}")
        elif kind == "error":
            out.append(f"error L{layer}")
        else:
            out.append(str(token))
    return out


def show_token(text: str) -> str:
    """A token as people read it: a leading space as ``␣``, newlines and tabs escaped, never empty."""
    shown = str(text).replace("\n", "\\n").replace("\t", "\\t")
    if shown.startswith(" "):
        shown = "␣" + shown[1:]
    return shown or "∅"

