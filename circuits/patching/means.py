"""Mean ablation within groups of prompts that share a template.

A per-position mean over prompts of different templates averages a name at one prompt's
position 3 with "and" at another's, a value no prompt ever sees. Wang et al. (2022) take the
ABC mean per template for that reason; a task that mixes templates says which prompt has which
in ``Task.groups``, and both patchers average within those groups.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_sums(x: Tensor, groups: Tensor | None, n_groups: int, dim: int = 0) -> Tensor:
    """Sum ``x`` over its prompt axis ``dim`` within each group: ``groups`` ``[B]`` ints in
    ``[0, n_groups)`` → the same shape with ``n_groups`` along ``dim`` (1 and a plain sum when
    ``groups`` is None)."""
    if groups is None:
        return x.sum(dim, keepdim=True)
    shape = list(x.shape)
    shape[dim] = n_groups
    return torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(dim, groups.to(x.device), x)


def group_counts(groups: Tensor | None, n: int) -> Tensor:
    """Prompts per group ``[n_groups]``, n_groups = the largest id + 1 (``[1]`` = ``n`` when
    ``groups`` is None). A group id no prompt has (a subset can drop a template) counts 1: its
    mean is never read."""
    counts = torch.tensor([n]) if groups is None else torch.bincount(groups)
    return counts.clamp(min=1)


def rows_of(means: Tensor, groups: Tensor | None, rows: slice, dim: int = 0) -> Tensor:
    """The mean each prompt of ``rows`` is ablated to: ``means`` has one entry per group along
    ``dim``; with no groups the single mean broadcasts over the prompts."""
    if groups is None:
        return means
    return means.index_select(dim, groups[rows].to(means.device))
