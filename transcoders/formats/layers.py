"""Per-layer files into stacked tensors: one allocation per tensor, each layer copied into its slice.

A format reader describes each layer as named ``Part``s (a tensor, and whether it is stored
transposed relative to our layout); ``stack_layers`` opens the layers one at a time, so a set
of per-layer files never has two layers' worth of file pages resident besides the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from transcoders.formats.common import Target, TranscoderLoadError, fill
from transcoders.formats.mapped import MappedFile


class Part(NamedTuple):
    tensor: Tensor
    """As stored in the file."""
    transposed: bool = False
    """Stored as the transpose of our layout (``[d_features, d_model]`` for our ``[d_model, d_features]``)."""
    key: str = ""
    """Its name in the file, for messages."""

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape in our layout."""
        return tuple(self.tensor.T.shape if self.transposed else self.tensor.shape)


@dataclass
class Layer:
    """One layer's tensors by our names (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``, ``W_skip``)."""

    file: Path
    parts: dict[str, Part]
    source: MappedFile | None = None
    """The mapped file the parts view, whose pages are handed back once copied."""
    k: int | None = None
    """A TopK k stored in the file, if any."""


def stack_layers(n_layers: int, open_layer: Callable[[int], Layer],
                 target: Target) -> tuple[dict[str, Tensor], list[Layer]]:
    """``{name: [n_layers, *shape]}`` from ``open_layer(0 … n_layers-1)``; also each layer's record
    (its parts dropped once copied). Every layer must hold the same names with the same shapes."""
    out: dict[str, Tensor] = {}
    seen: list[Layer] = []
    for i in range(n_layers):
        layer = open_layer(i)
        if i == 0:
            out = {name: target.empty(n_layers, *part.shape) for name, part in layer.parts.items()}
        elif set(layer.parts) != set(out):
            raise TranscoderLoadError(
                f"{layer.file} holds {sorted(layer.parts)} but layer 0 holds {sorted(out)}: some layers have "
                "tensors the others lack. Fix: re-save the set so every layer has the same tensors.")
        for name, part in layer.parts.items():
            fill(out[name][i], part.tensor, source=layer.source, where=layer.file, key=part.key or name,
                 transposed=part.transposed)
        seen.append(Layer(layer.file, {}, None, layer.k))
    return out, seen
