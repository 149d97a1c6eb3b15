"""``save(graph, path)`` and ``load(path)``: one pair for every format, chosen by the suffix.

==============  ===============================================================
``.npz``        native: numpy arrays plus a JSON header
``.graphml``    GraphML of ``to_networkx(graph)``: for Gephi, Cytoscape, yEd, networkx
``.json``       circuit-tracer's and Neuronpedia's viewer schema (``graphs.viewer``)
==============  ===============================================================

Each writer's file is read back into an equal graph. Every writer is atomic
(``transcoders.writes``): a temporary file beside the target is renamed over it only once complete.
The suffixes are dispatched by ``AttributionGraph.save`` and ``AttributionGraph.load``
(``graphs.graph``); these are the same calls as functions.
"""

from __future__ import annotations

from pathlib import Path

from graphs.graph import SUFFIXES, AttributionGraph

__all__ = ["SUFFIXES", "load", "save"]


def save(graph: AttributionGraph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` in the format its suffix names (see the module docstring)."""
    return AttributionGraph.save(graph, path)


def load(path: str | Path) -> AttributionGraph:
    """Read a graph written by ``save`` (or a viewer JSON from circuit-tracer)."""
    return AttributionGraph.load(path)
