"""The computational graph at head granularity: which node outputs feed which node inputs.

Sources (things that write into the residual stream), in topological order:
``input`` (the embeddings), then per layer ``a{l}.h{h}`` for every query head and ``m{l}``.
Destinations (things that read the residual stream through their own pre-norm):
per layer ``a{l}.h{h}<q>``, ``<k>``, ``<v>`` (or one ``a{l}.h{h}`` input when q/k/v are not
split), then ``m{l}``; finally ``logits`` (the input of the final norm).

An edge (s, d) exists when s is upstream of d: heads of layer l read every source before
layer l; the MLP of layer l also reads the heads of layer l; logits read everything. This
is the graph of ACDC, EAP and MIB (q/k/v split as in ACDC and MIB).

Edge sets are boolean matrices ``[n_src, n_dst]`` indexed by these orders; ``valid`` marks
the edges that exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from circuits.models.adapter import Model

PORTS: tuple[str, ...] = ("q", "k", "v")


@dataclass(frozen=True)
class HeadGraph:
    """Node and edge indexing for a model with ``n_layers`` layers of ``n_heads`` query heads."""

    n_layers: int
    n_heads: int
    split_qkv: bool = True

    @classmethod
    def for_model(cls, model: Model, split_qkv: bool = True) -> HeadGraph:
        return cls(model.n_layers, model.n_heads, split_qkv)

    # --- sources ------------------------------------------------------------------------

    @property
    def n_src(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    def head_src(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_src(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def layer_src(self, layer: int) -> slice:
        """The sources written by layer ``layer`` (its heads, then its MLP)."""
        start = 1 + layer * (self.n_heads + 1)
        return slice(start, start + self.n_heads + 1)

    @cached_property
    def src_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    # --- destinations -------------------------------------------------------------------

    @property
    def n_ports(self) -> int:
        return 3 if self.split_qkv else 1

    @property
    def heads_per_layer_dst(self) -> int:
        """Head inputs per layer: ``3 * n_heads`` with q/k/v split, else ``n_heads``."""
        return self.n_heads * self.n_ports

    @property
    def n_dst(self) -> int:
        return self.n_layers * (self.heads_per_layer_dst + 1) + 1

    def head_dst(self, layer: int, head: int, port: str = "q") -> int:
        p = PORTS.index(port) if self.split_qkv else 0
        return layer * (self.heads_per_layer_dst + 1) + head * self.n_ports + p

    def head_dsts(self, layer: int) -> slice:
        """The head inputs of layer ``layer``: head-major, then q, k, v."""
        start = layer * (self.heads_per_layer_dst + 1)
        return slice(start, start + self.heads_per_layer_dst)

    def mlp_dst(self, layer: int) -> int:
        return layer * (self.heads_per_layer_dst + 1) + self.heads_per_layer_dst

    @property
    def logits_dst(self) -> int:
        return self.n_dst - 1

    @cached_property
    def dst_names(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                if self.split_qkv:
                    names += [f"a{layer}.h{h}<{p}>" for p in PORTS]
                else:
                    names.append(f"a{layer}.h{h}")
            names.append(f"m{layer}")
        return names + ["logits"]

    @cached_property
    def dst_node(self) -> list[int]:
        """For each destination, the source index of the node it feeds (-1 for logits)."""
        owner = []
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                owner += [self.head_src(layer, h)] * self.n_ports
            owner.append(self.mlp_src(layer))
        return owner + [-1]

    @cached_property
    def dst_port(self) -> list[str]:
        """``q``/``k``/``v`` for split head inputs, ``""`` otherwise."""
        ports = []
        for _layer in range(self.n_layers):
            ports += (list(PORTS) if self.split_qkv else [""]) * self.n_heads + [""]
        return ports + [""]

    @cached_property
    def n_upstream(self) -> torch.Tensor:
        """``[n_dst]``: destination d reads sources ``0 .. n_upstream[d] - 1``."""
        n = []
        for layer in range(self.n_layers):
            first = 1 + layer * (self.n_heads + 1)
            n += [first] * self.heads_per_layer_dst + [first + self.n_heads]
        return torch.tensor(n + [self.n_src])

    @cached_property
    def valid(self) -> torch.Tensor:
        """``[n_src, n_dst]`` bool: the edges that exist."""
        return torch.arange(self.n_src)[:, None] < self.n_upstream[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    # --- names --------------------------------------------------------------------------

    def edge_name(self, src: int, dst: int) -> str:
        """ACDC-style: ``a0.h1->a2.h3<q>``, ``m0->logits``."""
        return f"{self.src_names[src]}->{self.dst_names[dst]}"

    def parse_edge(self, name: str) -> tuple[int, int]:
        """The (src, dst) indices of an edge name written by ``edge_name``."""
        src, dst = name.split("->")
        try:
            return self.src_names.index(src), self.dst_names.index(dst)
        except ValueError as exc:
            raise ValueError(f"{name!r} is not an edge of this graph; names look like 'a0.h1->a2.h3<q>', "
                             "'m0->logits', 'input->m0'") from exc

    def src_layer(self, src: int) -> int:
        """-1 for the input, else the layer the source belongs to."""
        return -1 if src == 0 else (src - 1) // (self.n_heads + 1)

    def dst_layer(self, dst: int) -> int:
        """The layer whose input it is; ``n_layers`` for logits."""
        return dst // (self.heads_per_layer_dst + 1)

    def empty(self) -> torch.Tensor:
        """An all-False ``[n_src, n_dst]`` edge set."""
        return torch.zeros(self.n_src, self.n_dst, dtype=torch.bool)
