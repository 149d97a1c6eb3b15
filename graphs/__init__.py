"""Attribution graphs: the graph object, its metrics and every export. Never imports `circuits`."""

from graphs.convert import to_networkx
from graphs.draw import GraphvizMissingError, render, svg
from graphs.effects import effect_flags, measured_effects, set_effect_flags, set_measured_effect
from graphs.files import load, save
from graphs.graph import AttributionGraph, from_networkx, from_viewer_json, read_viewer_json
from graphs.graphml import read_graphml, write_graphml
from graphs.metrics import (
    PruneResult,
    completeness_score,
    edge_influence,
    error_share_by_layer,
    graph_scores,
    influence,
    node_influence,
    normalized,
    prune,
    replacement_score,
    subgraph,
)
from graphs.node_labels import node_labels, set_feature_contexts, set_feature_labels
from graphs.nodes import NODE_COLUMNS, NODE_KINDS, GraphFileError
from graphs.paths import TokenPath, strongest_paths
from graphs.summary import summary
from graphs.html import to_html, write_html
from graphs.viewer import to_viewer_json, viewer_schema, write_viewer_json

__all__ = [
    # exports, drawing and summaries
    "GraphvizMissingError", "TokenPath", "effect_flags", "from_networkx", "from_viewer_json", "load",
    "measured_effects", "node_labels", "read_graphml", "read_viewer_json", "render", "save", "set_effect_flags",
    "set_feature_contexts", "set_feature_labels", "set_measured_effect", "strongest_paths", "summary", "svg", "to_networkx",
    "to_html", "to_viewer_json", "viewer_schema", "write_graphml", "write_html", "write_viewer_json",
    # the graph and its metrics
    "NODE_COLUMNS", "NODE_KINDS", "AttributionGraph", "GraphFileError", "PruneResult", "completeness_score",
    "edge_influence", "error_share_by_layer", "graph_scores", "influence", "node_influence", "normalized", "prune", "replacement_score", "subgraph",
]
