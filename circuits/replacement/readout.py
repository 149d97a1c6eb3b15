"""Reading the replacement model's outputs: which logits a graph explains, the de-meaned unembedding
that logit nodes read, and the pre-activations that feature nodes read."""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.models.adapter import Model
from circuits.replacement.forward import ReplacementRun
from circuits.replacement.state import CleanState


def salient_logits(logits: Tensor, max_logits: int, logit_prob: float) -> tuple[Tensor, Tensor]:
    """The most likely next tokens until their probability adds up to ``logit_prob`` (at most
    ``max_logits``): ``(token ids [n] on the CPU, probabilities [n] float64)``."""
    probs = logits.double().softmax(-1).cpu()
    top = probs.topk(min(max_logits, probs.shape[0]))
    n = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(logit_prob, dtype=torch.float64))) + 1
    n = min(n, len(top.values))
    return top.indices[:n], top.values[:n]


def demeaned_unembedding(model: Model, token_ids: Tensor, device: torch.device,
                         dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Unembedding rows of ``token_ids`` minus the mean row ``[n, D]``, and the same for the bias ``[n]``
    (None without one): logit targets read the logit relative to the mean logit."""
    W_U = model.W_U.detach()
    rows = W_U[token_ids.to(W_U.device)].to(device, dtype)
    u = rows - W_U.to(dtype).mean(0).to(device)
    b = getattr(model.module(model.spec.unembed), "bias", None)
    if b is None:
        return u, None
    b = b.detach().to(device, dtype)
    return u, b[token_ids.to(device)] - b.mean()


@torch.no_grad()
def feature_pre_acts(clean: CleanState, run: ReplacementRun, layer: Tensor, pos: Tensor, feature: Tensor) -> Tensor:
    """``[B, n]`` the encoder pre-activations of features ``(layer, pos, feature)`` (each ``[n]``) in ``run``."""
    tc = clean.transcoders
    w = tc.W_enc[layer, :, feature] * tc.input_scale[layer][:, None]         # [n, D] scale folded in
    out = tc.b_enc[layer, feature].expand(run.mlp_in.shape[0], -1).clone()    # [B, n]
    # One [B, D] @ [D, n_at] product per (layer, position) read, rather than gathering a [B, n, D] copy
    # of the inputs (hundreds of MB for a verified graph's thousand targets and 32 rows).
    T = run.mlp_in.shape[2]
    key = layer * T + pos
    for k in torch.unique(key).tolist():
        at = (key == k).nonzero().flatten()
        out[:, at] += run.mlp_in[:, k // T, k % T] @ w[at].T
    return out
