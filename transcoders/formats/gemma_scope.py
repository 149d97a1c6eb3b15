"""GemmaScope transcoder files, as circuit-tracer lists them under a config's ``transcoders:``.

GemmaScope (``google/gemma-scope-2b-pt-transcoders``, ``layer_{i}/width_16k/average_l0_{n}/params.npz``):
numpy arrays ``W_enc [d_model, d_features]`` (the encoder is ``x @ W_enc + b_enc``), ``W_dec
[d_features, d_model]``, ``b_enc [d_features]``, ``b_dec [d_model]`` and JumpReLU ``threshold
[d_features]``. Follows circuit-tracer's ``circuit_tracer/transcoder/single_layer_transcoder.py``,
``load_gemma_scope_transcoder``: ``np.load``, ``W_enc.T`` for its ``F.linear``, ``threshold`` as
``activation_function.threshold`` of a JumpReLU. Its configs read ``ln2.hook_normalized``.

GemmaScope-2 (``google/gemma-scope-2``, safetensors): ``w_enc [d_model, d_features]``, ``w_dec
[d_features, d_model]``, ``b_enc``, ``b_dec``, ``threshold`` and optionally ``affine_skip_connection
[d_model(in), d_model(out)]``. Follows ``load_gemma_scope_2_transcoder`` in the same file
(``W_enc = w_enc.T``, ``W_skip = affine_skip_connection.T`` applied as ``x @ W_skip.T``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transcoders.formats.common import require
from transcoders.formats.layers import Layer, Part
from transcoders.formats.mapped import MappedFile

NPZ_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
GEMMA_SCOPE_2_KEYS = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}


def npz_layer(file: Path) -> Layer:
    """One GemmaScope ``params.npz``; every array is already in our orientation."""
    with np.load(file) as npz:
        require(list(NPZ_KEYS), {k: None for k in npz.files}, file,
                "a GemmaScope params.npz holds W_enc, W_dec, b_enc, b_dec and threshold; download it again.")
        parts = {k: Part(torch.from_numpy(np.asarray(npz[k])), False, k) for k in NPZ_KEYS}
    parts["threshold"] = Part(parts["threshold"].tensor.reshape(-1), False, "threshold")
    return Layer(file, parts)


def is_gemma_scope_2(f: MappedFile) -> bool:
    return "w_enc" in f


def gemma_scope_2_layer(file: Path, f: MappedFile) -> Layer:
    """One GemmaScope-2 safetensors file; ``w_enc`` and the skip are already ``[in, out]`` like ours."""
    require(list(GEMMA_SCOPE_2_KEYS.values()), f, file,
            "a GemmaScope-2 file holds w_enc, w_dec, b_enc, b_dec and threshold; download it again.")
    parts = {ours: Part(f[theirs], False, theirs) for ours, theirs in GEMMA_SCOPE_2_KEYS.items()}
    parts["threshold"] = Part(parts["threshold"].tensor.reshape(-1), False, "threshold")
    if "affine_skip_connection" in f:
        parts["W_skip"] = Part(f["affine_skip_connection"], False, "affine_skip_connection")
    return Layer(file, parts, f)
