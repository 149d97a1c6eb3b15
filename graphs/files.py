"""``save(graph, path)`` and ``load(path)``: one pair for every format, chosen by the suffix.

==============  ===============================================================
``.npz``        native: numpy arrays plus a JSON header (``AttributionGraph.save``)
``.graphml``    GraphML of ``to_networkx(graph)``: for Gephi, Cytoscape, yEd, networkx
``.json``       circuit-tracer's and Neuronpedia's viewer schema (``graphs.viewer``)
==============  ===============================================================

Each writer's file is read back into an equal graph. Every writer is atomic
(``transcoders.writes``): a temporary file beside the target is renamed over it only once complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from graphs.convert import from_networkx, to_networkx
from graphs.graph import AttributionGraph
from graphs.graphml import read_graphml, write_graphml
from graphs.viewer import read_viewer_json, write_viewer_json

SUFFIXES: tuple[str, ...] = (".npz", ".graphml", ".json")


def save(graph: AttributionGraph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` in the format its suffix names (see the module docstring)."""
    path = Path(path)
    writer = _WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"cannot save a graph as {path.suffix or 'a file without a suffix'!r}. Fix: use a path "
                         f"ending in one of {', '.join(SUFFIXES)} (or graphs.render(graph, 'x.svg') for a picture).")
    writer(graph, path)
    return path


def load(path: str | Path) -> AttributionGraph:
    """Read a graph written by ``save`` (or a viewer JSON from circuit-tracer)."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"cannot read a graph from {path.suffix or 'a file without a suffix'!r}. "
                         f"Fix: pass a file ending in one of {', '.join(SUFFIXES)}.")
    if not path.is_file():
        raise FileNotFoundError(f"no graph file at {path}. Fix: check the path (graph.save(path) writes one).")
    return reader(path)


def _save_native(graph: AttributionGraph, path: Path) -> None:
    # Call the class's own writer directly: graph.save dispatches here for other suffixes.
    AttributionGraph.save(graph, path)


_WRITERS: dict[str, Callable[[AttributionGraph, Path], object]] = {
    ".npz": _save_native,
    ".graphml": lambda graph, path: write_graphml(to_networkx(graph), path),
    ".json": write_viewer_json,
}
_READERS: dict[str, Callable[[Path], AttributionGraph]] = {
    ".npz": AttributionGraph.load,
    ".graphml": lambda path: from_networkx(read_graphml(path)),
    ".json": read_viewer_json,
}

