"""The one definition of each ablation, for every engine (heads, MLPs, features, errors, tokens).

- ``zero``: the node's output (or activation) becomes zero.
- ``mean``: the node's mean **per position** over reference prompts, **within template groups**
  where the task has them (``Task.groups``). A mean over prompts of different templates averages
  a name at one prompt's position 3 with "and" at another's, a value no prompt ever sees; Wang
  et al. (2022) take the ABC mean per template for that reason. Reference prompts therefore have
  the clean prompt's length.
- ``resample``: the node's value on the paired corrupted prompt, at the same position.

The head and node patchers (``circuits.patching``) and the replacement model's edits
(``circuits.replacement.edits``) all build their ablated values with these helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuits.hooks import write_hook

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from circuits.models.adapter import Model


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


def position_means(x: Tensor, groups: Tensor | None = None, dim: int = 0) -> Tensor:
    """The per-position mean of ``x`` over its prompt axis ``dim`` (positions are a later axis), within
    each group of ``groups`` ``[n]``: ``n_groups`` (1 without groups) along ``dim``."""
    counts = group_counts(groups, x.shape[dim]).to(x)
    shape = [1] * x.ndim
    shape[dim] = -1
    return group_sums(x, groups, len(counts), dim) / counts.view(shape)


def rows_of(means: Tensor, groups: Tensor | None, rows: slice, dim: int = 0) -> Tensor:
    """The mean each prompt of ``rows`` is ablated to: ``means`` has one entry per group along
    ``dim``; with no groups the single mean broadcasts over the prompts."""
    if groups is None:
        return means
    return means.index_select(dim, groups[rows].to(means.device))


def zero_mlp_hooks(model: Model, output_site: str, start: int = 0) -> list[RemovableHandle]:
    """Hooks that zero-ablate every MLP's write at ``output_site`` from position ``start`` on (earlier
    positions keep theirs, as the replacement model keeps the first token's MLP output)."""
    def zero(out: Tensor) -> Tensor:
        new = torch.zeros_like(out)
        new[:, :start] = out[:, :start]
        return new

    return [write_hook(model.module(output_site, layer), model.spec.location(output_site, layer), zero)
            for layer in range(model.n_layers)]
