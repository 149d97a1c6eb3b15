"""Per-layer (PLT) and cross-layer (CLT) transcoders.

A transcoder replaces the MLP of every layer: it reads the MLP input and predicts
the MLP's write to the residual stream through a sparse, wide layer of features.
A PLT feature at layer l writes only to layer l. A CLT feature at layer l reads
the MLP input at l and writes to the MLP outputs of layers l … L−1, so its decoder
has one block per later layer.

All tensors stack the layer axis just before the feature/model axis:
inputs and outputs are ``[..., n_layers, d_model]``, activations ``[..., n_layers, d_features]``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from transcoders.activations import batch_topk, jumprelu, topk

Kind = Literal["plt", "clt"]
Activation = Literal["jumprelu", "topk", "batchtopk", "relu"]


@dataclass
class TranscoderConfig:
    """Shape and behaviour of a transcoder set; saved beside the weights."""

    kind: Kind
    n_layers: int
    d_model: int
    d_features: int
    activation: Activation = "jumprelu"
    k: int = 32  # features kept per token and layer (topk / batchtopk)
    skip: bool = False  # a linear skip connection W_skip: MLP input -> output
    jumprelu_init_threshold: float = 0.1
    jumprelu_bandwidth: float = 0.1
    model_name: str | None = None  # the model this set was trained on
    input_site: str = "mlp_in"  # a site of the architecture map
    output_site: str = "mlp_resid"

    def to_dict(self) -> dict:
        return asdict(self)


class TranscoderShapeError(ValueError):
    """A tensor or a model does not have the shape this transcoder was built for."""


class Encoded(NamedTuple):
    pre_acts: Tensor
    """Encoder output before the sparse activation, ``[..., n_layers, d_features]``."""
    acts: Tensor
    """Feature activations, ``pre_acts * mask``, ``[..., n_layers, d_features]``."""


class TranscoderOutput(NamedTuple):
    acts: Tensor
    """Feature activations ``[..., n_layers, d_features]``."""
    pre_acts: Tensor
    """Pre-activations ``[..., n_layers, d_features]``."""
    recon: Tensor
    """Predicted MLP outputs, decoder plus skip, ``[..., n_layers, d_model]``."""


class Transcoder(nn.Module):
    """What PLTs and CLTs share: the encoder, the activation, biases, skip and normalisation.

    Normalisation: ``input_scale[l]`` multiplies the MLP input before encoding and
    ``output_scale[l]`` divides the reconstruction, so training sees unit-scale data
    at every layer. ``fold_normalisation`` moves both into the weights (as saved files
    expect) and sets them to 1.
    """

    def __init__(self, cfg: TranscoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        L, D, F = cfg.n_layers, cfg.d_model, cfg.d_features
        self.W_enc = nn.Parameter(torch.empty(L, D, F))
        self.b_enc = nn.Parameter(torch.zeros(L, F))
        self.b_dec = nn.Parameter(torch.zeros(L, D))
        self.log_threshold = nn.Parameter(torch.full((L, F), math.log(cfg.jumprelu_init_threshold)),
                                          requires_grad=cfg.activation == "jumprelu")
        self.W_skip = nn.Parameter(torch.zeros(L, D, D)) if cfg.skip else None
        self.register_buffer("input_scale", torch.ones(L))
        self.register_buffer("output_scale", torch.ones(L))
        self._blocks: dict[int, tuple[Tensor, ...]] | None = None  # decoder blocks within ``decoding()``
        nn.init.uniform_(self.W_enc, -1.0 / math.sqrt(D), 1.0 / math.sqrt(D))

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_features(self) -> int:
        return self.cfg.d_features

    def encoder_parameters(self) -> tuple[nn.Parameter, ...]:
        """What decides which features fire: ``W_enc``, ``b_enc`` and the JumpReLU thresholds."""
        return self.W_enc, self.b_enc, self.log_threshold

    @property
    def threshold(self) -> Tensor:
        """JumpReLU thresholds ``[n_layers, d_features]``."""
        return self.log_threshold.exp()

    # --- encoder ------------------------------------------------------------------------

    def pre_acts(self, x: Tensor, layer: int | None = None) -> Tensor:
        """Encoder pre-activations: ``x [..., n_layers, d_model]`` → ``[..., n_layers, d_features]``,
        or for one ``layer``: ``x [..., d_model]`` → ``[..., d_features]``."""
        self._check_input(x, layer)
        if layer is None:
            return torch.einsum("...ld,ldf->...lf", x * self.input_scale[:, None], self.W_enc) + self.b_enc
        return (x * self.input_scale[layer]) @ self.W_enc[layer] + self.b_enc[layer]

    def _check_input(self, x: Tensor, layer: int | None) -> None:
        L, D = self.cfg.n_layers, self.cfg.d_model
        if layer is None:
            if x.ndim < 2 or x.shape[-2:] != (L, D):
                raise TranscoderShapeError(
                    f"this transcoder reads MLP inputs [..., n_layers={L}, d_model={D}], got {tuple(x.shape)}. "
                    "Fix: stack every layer's input on the second-last axis, or pass layer= for one layer.")
        elif x.shape[-1] != D or not -L <= layer < L:
            raise TranscoderShapeError(
                f"layer {layer} of this transcoder reads [..., d_model={D}] (layers 0..{L - 1}), got "
                f"{tuple(x.shape)}. Fix: check the transcoder was trained for this model (d_model, n_layers).")

    def activate(self, pre: Tensor, layer: int | None = None) -> Tensor:
        """The sparse activation. BatchTopK shares its budget over leading token dims while
        training; at inference it keeps the top k per token like TopK."""
        act = self.cfg.activation
        if act == "jumprelu":
            thr = self.threshold if layer is None else self.threshold[layer]
            return jumprelu(pre, thr, self.cfg.jumprelu_bandwidth)
        if act == "topk" or (act == "batchtopk" and not self.training):
            return topk(pre, self.cfg.k)
        if act == "batchtopk":
            return batch_topk(pre.reshape(-1, *pre.shape[-2:]) if layer is None else pre.reshape(-1, pre.shape[-1]),
                              self.cfg.k).reshape(pre.shape)
        return pre.relu()

    def encode(self, x: Tensor, layer: int | None = None) -> Encoded:
        """Encode all layers (``x [..., n_layers, d_model]``) or one (``x [..., d_model]``)."""
        pre = self.pre_acts(x, layer)
        return Encoded(pre, self.activate(pre, layer))

    # --- decoder ------------------------------------------------------------------------

    def decode(self, acts: Tensor) -> Tensor:
        """``acts [..., n_layers, d_features]`` → MLP outputs ``[..., n_layers, d_model]`` (no skip)."""
        raise NotImplementedError

    def decoder_vectors(self, source_layer: int) -> Tensor:
        """Output directions, in model units, of the features read at ``source_layer``:
        ``[d_features, n_targets, d_model]`` for target layers ``source_layer + t``
        (n_targets is 1 for a PLT, ``n_layers - source_layer`` for a CLT)."""
        raise NotImplementedError

    def sources(self, layer: int) -> range:
        """The layers whose features write to ``layer``: itself for a PLT, ``0 … layer`` for a CLT."""
        raise NotImplementedError

    @property
    def writes_across_layers(self) -> bool:
        """Whether some layer reads features of earlier layers (a CLT of two or more layers): then a
        layer's write needs the activations below it, and no layer can be replayed alone."""
        return len(self.sources(self.cfg.n_layers - 1)) > 1

    def decoder_at(self, source_layer: int, layer: int) -> Tensor:
        """``[d_features, d_model]``: what the features read at ``source_layer`` write to ``layer``, in
        model units; ``decoder_vectors(source_layer)[:, layer - source_layer]`` without the rest."""
        raise NotImplementedError

    def add_decoded(self, out: Tensor, acts: Mapping[int, Tensor] | Sequence[Tensor], layer: int) -> Tensor:
        """``out`` plus the features' write to ``layer`` (no bias, no skip) from per-layer activations
        ``acts[s]`` ``[..., d_features]`` for every ``s`` in ``sources(layer)``. ``[..., d_model]``."""
        for s in self.sources(layer):
            out = out + acts[s] @ self.decoder_at(s, layer)
        return out

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        """One pass that reads many (source, target) decoder blocks, as the replacement model's
        forward does: within it each source layer's decoder is split into its blocks once
        (a CLT's, ``unbind``), not sliced anew for every pair. With autograd on, a slice's backward
        writes a zero gradient the size of the whole source decoder and adds it in; for SmolLM2's
        CLT that was 465 such tensors per backward, a fifth of a fine-tuning step. The weights
        must not change inside (the blocks are views taken at the first read)."""
        outer, self._blocks = self._blocks, {}
        try:
            yield
        finally:
            self._blocks = outer

    def output_at(self, x: Tensor, acts: Mapping[int, Tensor] | Sequence[Tensor], layer: int) -> Tensor:
        """The transcoder's whole output at ``layer`` ``[..., d_model]``: decoder bias, the skip from
        ``x`` (the MLP input at ``layer``, ``[..., d_model]``) and the features' write from ``acts``
        (per-layer activations, as in ``add_decoded``)."""
        return self.add_decoded(self.b_dec[layer] / self.output_scale[layer] + self.skip_layer(x, layer), acts, layer)

    def decode_layer(self, acts: Tensor, layer: int) -> Tensor:
        """The MLP output at one ``layer`` (no skip) from ``acts [..., n_sources, d_features]``,
        the activations of layers ``0 … n_sources-1`` with ``n_sources > layer`` (a PLT reads only
        ``acts[..., layer, :]``; a CLT sums the writes of layers ``0 … layer``). ``[..., d_model]``."""
        raise NotImplementedError

    def skip_layer(self, x: Tensor, layer: int) -> Tensor:
        """The skip's contribution at one ``layer`` from ``x [..., d_model]`` (zeros without a skip)."""
        if self.W_skip is None:
            return torch.zeros_like(x)
        return (x * self.input_scale[layer]) @ self.W_skip[layer] / self.output_scale[layer]

    def skip(self, x: Tensor) -> Tensor:
        """The linear skip's contribution ``[..., n_layers, d_model]`` (zeros without a skip)."""
        if self.W_skip is None:
            return torch.zeros_like(x)
        return torch.einsum("...ld,lde->...le", x * self.input_scale[:, None], self.W_skip) / self.output_scale[:, None]

    def forward(self, x: Tensor) -> TranscoderOutput:
        """``x``: MLP inputs ``[..., n_layers, d_model]``."""
        pre, acts = self.encode(x)
        return TranscoderOutput(acts, pre, self.decode(acts) + self.skip(x))

    # --- normalisation ------------------------------------------------------------------

    @torch.no_grad()
    def fold_normalisation(self) -> None:
        """Fold ``input_scale``/``output_scale`` into the weights; outputs are unchanged."""
        s_in, s_out = self.input_scale, self.output_scale
        self.W_enc.mul_(s_in[:, None, None])
        if self.W_skip is not None:
            self.W_skip.mul_((s_in / s_out)[:, None, None])
        self.b_dec.div_(s_out[:, None])
        self._fold_decoder(s_out)
        self.input_scale.fill_(1.0)
        self.output_scale.fill_(1.0)

    def _fold_decoder(self, s_out: Tensor) -> None:
        raise NotImplementedError


class PerLayerTranscoder(Transcoder):
    """One transcoder per layer; feature (l, i) writes only to layer l's MLP output."""

    def __init__(self, cfg: TranscoderConfig) -> None:
        if cfg.kind != "plt":
            raise ValueError(f"PerLayerTranscoder needs kind='plt', got {cfg.kind!r}")
        super().__init__(cfg)
        L, D, F = cfg.n_layers, cfg.d_model, cfg.d_features
        self.W_dec = nn.Parameter(torch.empty(L, F, D))
        nn.init.uniform_(self.W_dec, -1.0 / math.sqrt(F), 1.0 / math.sqrt(F))

    def decode(self, acts: Tensor) -> Tensor:
        out = torch.einsum("...lf,lfd->...ld", acts, self.W_dec) + self.b_dec
        return out / self.output_scale[:, None]

    def decode_layer(self, acts: Tensor, layer: int) -> Tensor:
        return (acts[..., layer, :] @ self.W_dec[layer] + self.b_dec[layer]) / self.output_scale[layer]

    def decoder_vectors(self, source_layer: int) -> Tensor:
        return (self.W_dec[source_layer] / self.output_scale[source_layer])[:, None, :]

    def sources(self, layer: int) -> range:
        return range(layer, layer + 1)

    def decoder_at(self, source_layer: int, layer: int) -> Tensor:
        if source_layer != layer:
            raise ValueError(f"a per-layer transcoder's layer-{source_layer} features write only to layer "
                             f"{source_layer}, not {layer}")
        return self.W_dec[layer] / self.output_scale[layer]

    def _fold_decoder(self, s_out: Tensor) -> None:
        self.W_dec.div_(s_out[:, None, None])


class CrossLayerTranscoder(Transcoder):
    """Features read one layer and write to it and every later layer.

    ``W_dec[s]``: ``[d_features, n_layers - s, d_model]``, the writes of layer-s features
    to layers s, s+1, …, L−1.
    """

    def __init__(self, cfg: TranscoderConfig) -> None:
        if cfg.kind != "clt":
            raise ValueError(f"CrossLayerTranscoder needs kind='clt', got {cfg.kind!r}")
        super().__init__(cfg)
        L, D, F = cfg.n_layers, cfg.d_model, cfg.d_features
        # Scale so a layer's output, summed over up to L sources, starts at unit size.
        bound = 1.0 / math.sqrt(F * L)
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.empty(F, L - s, D).uniform_(-bound, bound)) for s in range(L)]
        )

    def decode(self, acts: Tensor) -> Tensor:
        L = self.n_layers
        out = self.b_dec.expand(*acts.shape[:-2], L, self.cfg.d_model).clone()
        for s in range(L):
            out[..., s:, :] += torch.einsum("...f,ftd->...td", acts[..., s, :], self.W_dec[s])
        return out / self.output_scale[:, None]

    def decode_layer(self, acts: Tensor, layer: int) -> Tensor:
        out = self.b_dec[layer].expand(*acts.shape[:-2], self.cfg.d_model)
        for s in range(layer + 1):
            out = out + acts[..., s, :] @ self.W_dec[s][:, layer - s, :]
        return out / self.output_scale[layer]

    def decoder_vectors(self, source_layer: int) -> Tensor:
        return self.W_dec[source_layer] / self.output_scale[source_layer:, None]

    def sources(self, layer: int) -> range:
        return range(layer + 1)

    def decoder_at(self, source_layer: int, layer: int) -> Tensor:
        return self._block(source_layer, layer) / self.output_scale[layer]

    def add_decoded(self, out: Tensor, acts: Mapping[int, Tensor] | Sequence[Tensor], layer: int) -> Tensor:
        # The sources' writes summed in the stored units, then scaled once: no scaled copy of every block.
        write = sum(acts[s] @ self._block(s, layer) for s in self.sources(layer))
        return out + write / self.output_scale[layer]

    def _block(self, source_layer: int, layer: int) -> Tensor:
        """``[d_features, d_model]`` the stored block of source → layer (a view; ``decoding``)."""
        if not 0 <= layer - source_layer < self.W_dec[source_layer].shape[1]:
            raise ValueError(f"layer-{source_layer} features write to layers {source_layer}…{self.cfg.n_layers - 1}, "
                             f"not {layer}")
        if self._blocks is None:
            return self.W_dec[source_layer][:, layer - source_layer]
        if source_layer not in self._blocks:
            self._blocks[source_layer] = self.W_dec[source_layer].unbind(1)
        return self._blocks[source_layer][layer - source_layer]

    def _fold_decoder(self, s_out: Tensor) -> None:
        for s, w in enumerate(self.W_dec):
            w.div_(s_out[s:, None])


def build_transcoder(cfg: TranscoderConfig) -> Transcoder:
    """A freshly initialised PLT or CLT for ``cfg``."""
    return PerLayerTranscoder(cfg) if cfg.kind == "plt" else CrossLayerTranscoder(cfg)
