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

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from transcoders.writes import atomic_file, dumps, tag_floats, untag_floats

NODE_KINDS: tuple[str, ...] = ("feature", "error", "token", "logit")

# The node table's columns, their dtypes, and what a node of a kind that lacks them holds.
NODE_COLUMNS: dict[str, tuple[str, Any]] = {
    "kind": ("U7", ""),
    "layer": ("int32", -1),            # tokens: -1; logits: n_layers
    "position": ("int32", -1),
    "feature": ("int64", -1),          # features only
    "activation": ("float64", np.nan),  # features: activation; errors: norm of the error vector
    "token_id": ("int64", -1),         # tokens: input id; logits: vocabulary id
    "token": ("U64", ""),              # tokens and logits: the decoded text
    "prob": ("float64", np.nan),       # logits: next-token probability
    "pre_activation": ("float64", np.nan),  # targets: encoder pre-activation, or demeaned logit
    "bias": ("float64", np.nan),       # targets: the constant (bias) part of the pre-activation
    "excluded_input": ("float64", np.nan),  # targets: input from active features left out of the graph
}

_FORMAT = "circuit-engine attribution graph"
_VERSION = 1


class GraphFileError(ValueError):
    """A graph file that cannot be read: truncated, damaged, or not a graph file."""


def unreadable(path: str | Path, exc: BaseException) -> GraphFileError:
    """The error for a graph file a reader choked on (its exception chained by the caller)."""
    return GraphFileError(f"{path} is not a readable graph file ({type(exc).__name__}: {str(exc)[:200]}): it is "
                          "truncated, damaged, or was not written by graphs.save. Fix: write it again with "
                          "graphs.save(graph, path), or pass an intact copy.")


def empty_nodes(n: int) -> dict[str, np.ndarray]:
    """A node table of ``n`` rows holding each column's fill value."""
    return {name: np.full(n, fill, dtype=dtype) for name, (dtype, fill) in NODE_COLUMNS.items()}


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

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All edges as ``(targets, sources, weights)`` arrays."""
        coo = self.adjacency.tocoo()
        return coo.row, coo.col, coo.data

    # --- scores ---------------------------------------------------------------------------

    @cached_property
    def scores(self) -> tuple[float, float]:
        """``(replacement_score, completeness_score)``; see ``graphs.metrics``."""
        from graphs.metrics import graph_scores

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
        """Write the graph to ``path`` (``.npz``: arrays plus a JSON header); ``load`` reads it back.
        ``.graphml`` and ``.json`` (the viewer's schema) are written by ``graphs.files.save``."""
        path = Path(path)
        if path.suffix.lower() in (".graphml", ".json"):
            from graphs.files import save

            return save(self, path)
        if path.suffix != ".npz":
            raise ValueError(f"cannot save a graph as {path.suffix or 'a file without a suffix'!r}: "
                             "use a path ending in .npz, .graphml or .json")
        csr = self.adjacency.tocsr()
        header = {"format": _FORMAT, "version": _VERSION, "prompt": self.prompt,
                  "token_texts": list(self.token_texts), "metadata": self.metadata}
        arrays = {f"node.{k}": v for k, v in self.nodes.items()}
        with atomic_file(path) as tmp, tmp.open("wb") as f:
            np.savez(f, header=np.array(dumps(tag_floats(header))), tokens=np.asarray(self.tokens),
                     adj_data=csr.data, adj_indices=csr.indices, adj_indptr=csr.indptr,
                     adj_shape=np.array(csr.shape), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        """Read a graph written by ``save`` (any of its formats)."""
        path = Path(path)
        if path.suffix.lower() in (".graphml", ".json"):
            from graphs.files import load

            return load(path)
        if not path.is_file():
            raise FileNotFoundError(f"no graph file at {path}. Fix: check the path (graph.save(path) writes one).")
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
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            if isinstance(exc, GraphFileError):
                raise
            raise unreadable(path, exc) from exc
        return cls(prompt=header["prompt"], tokens=tokens, token_texts=header["token_texts"], nodes=nodes,
                   adjacency=adjacency, metadata=header["metadata"])

    def __repr__(self) -> str:
        counts = ", ".join(f"{self.count(k)} {k}s" for k in NODE_KINDS)
        return f"AttributionGraph({self.prompt!r}: {counts}, {self.adjacency.nnz} edges)"

    # --- exports (the logic lives in graphs.convert and graphs.draw) ---------------------

    def to_networkx(self):  # -> networkx.DiGraph
        """The graph as a ``networkx.DiGraph``: node and edge attributes as ``graphs.convert`` describes."""
        from graphs.convert import to_networkx

        return to_networkx(self)

    def render(self, path: str | Path, **kwargs: Any) -> Path:
        """Draw the pruned graph to ``.svg``/``.png``/``.pdf`` (needs graphviz's ``dot``) or ``.dot``;
        see ``graphs.draw.render`` for ``kwargs``."""
        from graphs.draw import render

        return render(self, path, **kwargs)

    def _repr_svg_(self) -> str | None:
        """Jupyter's rich display: the pruned graph as SVG (None without graphviz's ``dot``)."""
        from graphs.draw import repr_svg

        return repr_svg(self)
