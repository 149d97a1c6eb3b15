"""What every format reader shares: the error, where tensors go, and the block-wise copy into them.

A reader never builds a whole set in one dtype and then converts or stacks it: it allocates each
final tensor once (on the target device, in the target dtype) and copies every file's tensor into
its slice block by block, so a set is held once, plus one block, while it loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from transcoders.harvest import NonFiniteError

if TYPE_CHECKING:
    from transcoders.formats.mapped import MappedFile

# Copy and check this many bytes of a file at a time: enough to stream at disk speed, small
# enough that a 4 GB decoder never has all its pages resident at once.
BLOCK_BYTES = 64 << 20


class TranscoderLoadError(ValueError):
    """A transcoder set is missing, incomplete or malformed."""


@dataclass(frozen=True)
class Target:
    """Where a loaded set's tensors live."""

    device: torch.device
    dtype: torch.dtype

    def empty(self, *shape: int) -> Tensor:
        return torch.empty(shape, device=self.device, dtype=self.dtype)

    def zeros(self, *shape: int) -> Tensor:
        return torch.zeros(shape, device=self.device, dtype=self.dtype)


@dataclass
class LoadedSet:
    """A set in our layout (``transcoders.model``), with the normalisation folded in."""

    kind: str  # "plt" or "clt"
    W_enc: Tensor
    """``[n_layers, d_model, d_features]``."""
    b_enc: Tensor
    """``[n_layers, d_features]``."""
    b_dec: Tensor
    """``[n_layers, d_model]``."""
    W_dec: Tensor | list[Tensor]
    """PLT ``[n_layers, d_features, d_model]``; CLT per source layer s ``[d_features, n_layers - s, d_model]``."""
    activation: str  # "jumprelu", "topk", "batchtopk" or "relu"
    k: int | None = None
    threshold: Tensor | None = None
    """JumpReLU thresholds ``[n_layers, d_features]``."""
    W_skip: Tensor | None = None
    """``[n_layers, d_model(in), d_model(out)]``: the skip is ``x @ W_skip[l]``."""
    input_site: str = "mlp_in"
    output_site: str = "mlp_resid"
    model_name: str | None = None
    extra: dict = field(default_factory=dict)
    """Our own settings that no published format holds (``jumprelu_bandwidth``)."""


def fill(dst: Tensor, src: Tensor, *, source: MappedFile | None, where: Path | str, key: str,
         transposed: bool = False) -> None:
    """Copy ``src`` (``[rows, ...]``) into ``dst`` (``dst.T`` when ``transposed``) block by block.

    Checks that every value is finite, converts dtype and device in the copy, and hands each
    block's file pages back to the kernel once copied (``source``), so the process never holds
    a second copy of a large tensor.
    """
    view = dst.T if transposed else dst
    if tuple(view.shape) != tuple(src.shape):
        raise TranscoderLoadError(
            f"{where}: {key} is {list(src.shape)}{' (transposed)' if transposed else ''}, expected "
            f"{list(view.shape)} like the other layers. Fix: every layer of a set must have the same widths; "
            "the file may belong to another set.")
    for a, b in blocks(src):
        check_finite(src[a:b], where, key)
        view[a:b].copy_(src[a:b])
        if source is not None:
            source.release(src[a:b])


def keep(src: Tensor, *, source: MappedFile, where: Path | str, key: str) -> Tensor:
    """``src`` itself, a view of the mapped file (read from disk on first use), after checking it."""
    for a, b in blocks(src):
        check_finite(src[a:b], where, key)
        source.release(src[a:b])
    return src


def blocks(t: Tensor) -> list[tuple[int, int]]:
    """Row ranges of ``t`` of about ``BLOCK_BYTES`` each."""
    n = t.shape[0] if t.ndim else 1
    row = max(1, t[0].numel() * t.element_size()) if t.ndim and n else 1
    step = max(1, BLOCK_BYTES // row)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def check_finite(t: Tensor, where: Path | str, key: str) -> None:
    """Raise if ``t`` holds NaN or infinity. One pass, no temporary the size of ``t`` (``torch.isfinite``
    makes three): NaN makes min and max NaN, and an infinity is the min or the max."""
    if not t.is_floating_point() or t.numel() == 0:
        return
    lo, hi = torch.aminmax(t)
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise NonFiniteError(f"{where} holds NaN or infinity in {key!r} ({int((~torch.isfinite(t)).sum())} values"
                             f"{' in one block of rows' if t.ndim else ''}). Fix: the file is damaged or training "
                             "diverged; download or train it again.")


def require(keys: list[str] | set[str], have: MappedFile | dict, where: Path | str, fix: str) -> None:
    """Raise naming the keys of ``keys`` that ``have`` lacks (and what it has)."""
    missing = [k for k in keys if k not in have]
    if missing:
        raise TranscoderLoadError(f"{where} lacks {missing} (it has {sorted(have.keys())}). Fix: {fix}")
