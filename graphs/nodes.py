"""The node table's columns and kinds, and the error for an unreadable graph file.

What every module of ``graphs`` shares, so it sits at the bottom of the package: below the graph
type (``graphs.graph``) and below everything that reads, measures or draws a graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

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
