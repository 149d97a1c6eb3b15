"""The attribution graph: a node table, a sparse adjacency, the prompt, and metadata.

Nodes come in four kinds, always in this order (as in circuit-tracer):

1. ``feature`` — an active transcoder feature (layer, position, feature id, activation);
2. ``error``   — the transcoder's error at (layer, position), ``n_layers * n_pos`` of them,
   ordered layer-major (``error l, p`` is node ``n_features + l * n_pos + p``);
3. ``token``   — the residual stream entering layer 0 at each input position (the token
   embedding, scaled for Gemma, plus GPT-2's position embedding);
4. ``logit``   — the top next-token logits at the last position. A logit node's value is the
   logit minus the mean logit (before any final soft-capping), what its edges add up to.

``adjacency[t, s]`` is the direct effect of source ``s`` on target ``t``'s pre-activation in the
frozen replacement model (rows are targets, columns sources). Only features and logits have
incoming edges. For every target: ``sum(adjacency[t]) + bias[t] + excluded_input[t] ==
pre_activation[t]``.

The node table is a dict of equal-length numpy arrays, one per attribute, so every export can
read plain values (``graph.node(i)`` gives one node as a dict). Node ids (``graph.node_ids``)
differ by kind and never collide: ``F{layer}.{feature}@{pos}``, ``E{layer}@{pos}``, ``T@{pos}``,
``L{token_id}``.

This module never imports ``circuits``.
"""

# Where this module sits in ``graphs`` (tests/test_layering.py checks it), bottom up:
#
#   graphs.nodes                                     the node table's schema, the file error
#   graphs.metrics, effects, node_labels, paths,     what works on any graph: influence, pruning,
#     graphml                                        scores, measured effects, labels, GraphML
#   graphs.convert, viewer, draw, summary            networkx, the viewer's JSON, pictures, summaries
#   graphs.graph (this module)                       the type, its constructors and conveniences
#   graphs.files, graphs (the package)               the public functions
#
# Nothing below imports this module at run time (only under TYPE_CHECKING, for annotations): the
# functions there take a graph as an argument, and the readers among them (build_from_networkx,
# build_from_viewer_json) build one of the class they are given. So the methods here that export,
# score or draw (save, load, to_networkx, render, _repr_svg_, scores) are thin delegations downward,
# and there is no import cycle, not even through a function-level import.

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp

from graphs import convert, draw
from graphs.graphml import read_graphml, write_graphml
from graphs.heads import HeadLoadingTable, edge_loadings
from graphs.metrics import graph_scores
from graphs.nodes import NODE_COLUMNS, NODE_KINDS, GraphFileError, empty_nodes, unreadable
from graphs.viewer import build_from_viewer_json, read_viewer_data, write_viewer_json
from transcoders.writes import atomic_file, dumps, tag_floats, untag_floats

# The schema's names, where they were before graphs.nodes held them.
__all__ = ["NODE_COLUMNS", "NODE_KINDS", "SUFFIXES", "AttributionGraph", "GraphFileError", "empty_nodes",
           "from_networkx", "from_viewer_json", "read_viewer_json", "unreadable"]

_FORMAT = "circuit-engine attribution graph"
_VERSION = 1
SUFFIXES: tuple[str, ...] = (".npz", ".graphml", ".json")


@dataclass
class AttributionGraph:
    """An attribution graph for one prompt. See the module docstring for the node layout."""

    prompt: str
    tokens: np.ndarray
    """``[n_pos]`` input token ids."""
    token_texts: list[str]
    """``[n_pos]`` each input token decoded."""
    nodes: dict[str, np.ndarray]
    """The node table: attribute name -> ``[n_nodes]`` array (columns in ``NODE_COLUMNS``)."""
    adjacency: sp.csr_matrix
    """``[n_nodes, n_nodes]`` direct effects, rows = targets, columns = sources."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Plain JSON-able facts: model, transcoders, n_layers, dtype, timings, exactness check."""
    head_table: HeadLoadingTable | None = field(default=None, repr=False, compare=False)
    """Every head's loading of the loaded edges (``graphs.heads``): in memory and ``.npz`` files only."""

    def __post_init__(self) -> None:
        n = len(self.nodes["kind"])
        bad = [k for k, v in self.nodes.items() if len(v) != n]
        if bad or self.adjacency.shape != (n, n):
            raise ValueError(f"inconsistent graph: {n} nodes, adjacency {self.adjacency.shape}, ragged columns {bad}")
        kinds = self.nodes["kind"]
        rank = np.full(n, -1)
        for i, kind in enumerate(NODE_KINDS):
            rank[kinds == kind] = i
        if np.any(rank < 0) or np.any(np.diff(rank) < 0):
            raise ValueError(f"node kinds must be among {NODE_KINDS} and in that order")

    # --- shape --------------------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return len(self.nodes["kind"])

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_layers(self) -> int:
        return int(self.metadata["n_layers"])

    def count(self, kind: str) -> int:
        """How many nodes of ``kind`` (one of NODE_KINDS)."""
        if kind not in NODE_KINDS:
            raise KeyError(f"unknown node kind {kind!r}; kinds: {NODE_KINDS}")
        return int(np.count_nonzero(self.nodes["kind"] == kind))

    def span(self, kind: str) -> slice:
        """The node indices of ``kind``, a contiguous slice."""
        start = sum(self.count(k) for k in NODE_KINDS[:NODE_KINDS.index(kind)])
        return slice(start, start + self.count(kind))

    @property
    def n_features(self) -> int:
        return self.count("feature")

    # --- nodes ----------------------------------------------------------------------------

    def node(self, i: int) -> dict[str, Any]:
        """Node ``i``'s attributes as a plain dict, without the ones its kind lacks."""
        out: dict[str, Any] = {"id": self.node_ids[i]}
        for name, (_, fill) in NODE_COLUMNS.items():
            value = self.nodes[name][i].item()
            # NaN, or the fill value of a column this kind does not use (layer and kind always count).
            missing = bool(np.isnan(value)) if isinstance(fill, float) else (value == fill and name not in ("kind", "layer"))
            if not missing:
                out[name] = value
        return out

    @cached_property
    def node_ids(self) -> list[str]:
        """A unique string id per node; the kind is its first letter."""
        n = self.nodes
        ids = []
        for kind, layer, pos, feat, tok in zip(n["kind"], n["layer"], n["position"], n["feature"], n["token_id"]):
            if kind == "feature":
                ids.append(f"F{layer}.{feat}@{pos}")
            elif kind == "error":
                ids.append(f"E{layer}@{pos}")
            elif kind == "token":
                ids.append(f"T@{pos}")
            else:
                ids.append(f"L{tok}")
        return ids

    @property
    def logit_weights(self) -> np.ndarray:
        """``[n_nodes]``: each logit node's probability, zero elsewhere (what influence is measured against)."""
        w = np.zeros(self.n_nodes)
        s = self.span("logit")
        w[s] = self.nodes["prob"][s]
        return w

    @property
    def top_logits(self) -> list[tuple[str, float]]:
        """The logit nodes as (token text, probability), most likely first."""
        s = self.span("logit")
        return [(str(t), float(p)) for t, p in zip(self.nodes["token"][s], self.nodes["prob"][s])]

    def head_loadings(self, edge: tuple[int | str, int | str]) -> dict[str, float]:
        """How the attention heads carry ``edge = (source, target)`` (node ids or indices, networkx's order):
        ``{"L20.H3": loading, ..., "direct": v}``, strongest head first, adding up to the edge's weight.

        A loading is the part of the edge whose paths cross that head last before the target;
        ``direct`` the part crossing no attention (``circuits.attribution.heads``). Every head is there
        when the graph holds its full table (``head_table``: the traced graph and its ``.npz`` file);
        after pruning or a GraphML/JSON round trip only the stored strongest heads are, with ``other``
        (the rest, summed). ``trace`` loads the edges into the chosen targets, or into the top logit, by
        default; ``head_loadings="targets"`` into every logit node, ``"all"`` every edge. A KeyError names
        the fix for an edge without loadings.
        """
        return edge_loadings(self, edge)

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All edges as ``(targets, sources, weights)`` arrays."""
        coo = self.adjacency.tocoo()
        return coo.row, coo.col, coo.data

    # --- scores ---------------------------------------------------------------------------

    @cached_property
    def scores(self) -> tuple[float, float]:
        """``(replacement_score, completeness_score)``; see ``graphs.metrics``."""
        return graph_scores(self)

    @property
    def replacement_score(self) -> float:
        """Fraction of the tokens' and errors' influence on the logits that comes from tokens."""
        return self.scores[0]

    @property
    def completeness_score(self) -> float:
        """Influence-weighted fraction of node inputs that does not come from errors."""
        return self.scores[1]

    # --- files ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the graph to ``path`` in the format its suffix names; ``load`` reads each back into an
        equal graph. Every writer is atomic (``transcoders.writes``).

        ==============  ===============================================================
        ``.npz``        native: numpy arrays plus a JSON header
        ``.graphml``    GraphML of ``to_networkx(graph)``: for Gephi, Cytoscape, yEd, networkx
        ``.json``       circuit-tracer's and Neuronpedia's viewer schema (``graphs.viewer``)
        ==============  ===============================================================
        """
        path = Path(path)
        writer = _WRITERS.get(path.suffix.lower())
        if writer is None:
            raise ValueError(f"cannot save a graph as {path.suffix or 'a file without a suffix'!r}. Fix: use a path "
                             f"ending in one of {', '.join(SUFFIXES)} (or graphs.render(graph, 'x.svg') for a "
                             "picture).")
        writer(self, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        """Read a graph written by ``save`` (any of its formats), or a viewer JSON from circuit-tracer."""
        path = Path(path)
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise ValueError(f"cannot read a graph from {path.suffix or 'a file without a suffix'!r}. "
                             f"Fix: pass a file ending in one of {', '.join(SUFFIXES)}.")
        if not path.is_file():
            raise FileNotFoundError(f"no graph file at {path}. Fix: check the path (graph.save(path) writes one).")
        return reader(cls, path)

    @classmethod
    def from_networkx(cls, g: nx.DiGraph) -> AttributionGraph:
        """The graph that ``to_networkx`` (or a GraphML file of it) describes (``graphs.convert``)."""
        return convert.build_from_networkx(cls, g)

    @classmethod
    def from_viewer_json(cls, data: dict[str, Any]) -> AttributionGraph:
        """The graph a viewer JSON document describes: exactly, if we wrote it (``graphs.viewer``)."""
        return build_from_viewer_json(cls, data)

    def _save_npz(self, path: Path) -> None:
        csr = self.adjacency.tocsr()
        header = {"format": _FORMAT, "version": _VERSION, "prompt": self.prompt,
                  "token_texts": list(self.token_texts), "metadata": self.metadata}
        arrays = {f"node.{k}": v for k, v in self.nodes.items()}
        if self.head_table is not None:
            arrays |= self.head_table.arrays()
        with atomic_file(path) as tmp, tmp.open("wb") as f:
            np.savez(f, header=np.array(dumps(tag_floats(header))), tokens=np.asarray(self.tokens),
                     adj_data=csr.data, adj_indices=csr.indices, adj_indptr=csr.indptr,
                     adj_shape=np.array(csr.shape), **arrays)

    @classmethod
    def _load_npz(cls, path: Path) -> AttributionGraph:
        try:
            with np.load(path, allow_pickle=False) as z:
                header = untag_floats(json.loads(str(z["header"])))
                if not isinstance(header, dict) or header.get("format") != _FORMAT:
                    raise GraphFileError(f"{path} is not an attribution graph written by AttributionGraph.save. "
                                         "Fix: pass a file that graph.save(path) wrote.")
                nodes = {k.removeprefix("node."): z[k] for k in z.files if k.startswith("node.")}
                adjacency = sp.csr_matrix((z["adj_data"], z["adj_indices"], z["adj_indptr"]),
                                          shape=tuple(z["adj_shape"]))
                tokens = z["tokens"]
                table = HeadLoadingTable.from_arrays(z)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            if isinstance(exc, GraphFileError):
                raise
            raise unreadable(path, exc) from exc
        return cls(prompt=header["prompt"], tokens=tokens, token_texts=header["token_texts"], nodes=nodes,
                   adjacency=adjacency, metadata=header["metadata"], head_table=table)

    def __repr__(self) -> str:
        counts = ", ".join(f"{self.count(k)} {k}s" for k in NODE_KINDS)
        return f"AttributionGraph({self.prompt!r}: {counts}, {self.adjacency.nnz} edges)"

    # --- exports (the logic lives in graphs.convert and graphs.draw) ---------------------

    def to_networkx(self) -> nx.DiGraph:
        """The graph as a ``networkx.DiGraph``: node and edge attributes as ``graphs.convert`` describes."""
        return convert.to_networkx(self)

    def render(self, path: str | Path, **kwargs: Any) -> Path:
        """Draw the pruned graph to ``.svg``/``.png``/``.pdf`` (needs graphviz's ``dot``) or ``.dot``;
        see ``graphs.draw.render`` for ``kwargs``."""
        return draw.render(self, path, **kwargs)

    def _repr_svg_(self) -> str | None:
        """Jupyter's rich display: the pruned graph as SVG (None without graphviz's ``dot``)."""
        return draw.repr_svg(self)


_WRITERS: dict[str, Callable[[AttributionGraph, Path], object]] = {
    ".npz": AttributionGraph._save_npz,
    ".graphml": lambda graph, path: write_graphml(convert.to_networkx(graph), path),
    ".json": write_viewer_json,
}
_READERS: dict[str, Callable[[type[AttributionGraph], Path], AttributionGraph]] = {
    ".npz": lambda cls, path: cls._load_npz(path),
    ".graphml": lambda cls, path: convert.build_from_networkx(cls, read_graphml(path)),
    ".json": lambda cls, path: build_from_viewer_json(cls, read_viewer_data(path)),
}


def from_networkx(g: nx.DiGraph) -> AttributionGraph:
    """The ``AttributionGraph`` that ``to_networkx`` (or a GraphML file of it) describes."""
    return AttributionGraph.from_networkx(g)


def from_viewer_json(data: dict[str, Any]) -> AttributionGraph:
    """The graph a viewer JSON document describes (see ``read_viewer_json``)."""
    return AttributionGraph.from_viewer_json(data)


def read_viewer_json(path: str | Path) -> AttributionGraph:
    """Read a viewer JSON file: exactly, if we wrote it; else rebuilt from the viewer's fields."""
    return AttributionGraph.from_viewer_json(read_viewer_data(path))
