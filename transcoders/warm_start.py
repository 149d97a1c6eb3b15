"""Start a cross-layer transcoder from a trained per-layer one.

A CLT whose cross-layer decoders (source s, target t > s) are zero computes exactly what a PLT with
the same encoders and same-layer decoders computes. Started there, a CLT keeps everything the PLT
learnt, and its training only has to find where each feature should also write: in a CLT trained
from scratch the 465 layer pairs' decoders start as noise summed into every layer's output, and
learn at a quarter of the PLT's tokens a second (BENCHMARKS.md). With the encoders frozen
(``TrainConfig.freeze_encoder``) the step also skips the encoder's gradient, the decode's largest part.
"""

from __future__ import annotations

import hashlib

import torch

from transcoders.model import CrossLayerTranscoder, Transcoder


# The TrainConfig fields a CLT shares with the PLT it starts from (transcoders.sets.init_shape reads them).
SHAPE_FIELDS = ("d_features", "activation", "k", "skip", "input_site", "output_site")


def check_compatible(clt: Transcoder, plt: Transcoder) -> None:
    """Raise ``ValueError`` naming the mismatch if ``clt`` cannot start from ``plt``'s features."""
    if plt.cfg.kind != "plt":
        raise ValueError(f"a CLT starts from a per-layer set (kind 'plt'), not kind {plt.cfg.kind!r}. "
                         "Fix: pass a PLT set as init_from (--init-from), e.g. smollm2-quick.")
    if clt.cfg.kind != "clt":
        raise ValueError(f"init_from starts a CLT from a PLT, but this run trains kind {clt.cfg.kind!r}. "
                         "Fix: pass kind='clt' (--kind clt), or leave init_from out.")
    for name in ("n_layers", "d_model", *(f for f in SHAPE_FIELDS if f != "k")):  # k matters for TopK only
        a, b = getattr(clt.cfg, name), getattr(plt.cfg, name)
        if a != b:
            raise ValueError(f"the PLT to start from has {name}={b!r}, the CLT {name}={a!r}; they must match. "
                             f"Fix: train the CLT with the PLT's {name} (its config.yaml says which).")
    if clt.cfg.activation in ("topk", "batchtopk") and clt.cfg.k != plt.cfg.k:
        raise ValueError(f"the PLT to start from has k={plt.cfg.k}, the CLT k={clt.cfg.k}: its features were "
                         f"trained to the top {plt.cfg.k}. Fix: pass --k {plt.cfg.k}.")


@torch.no_grad()
def start_from_plt(clt: CrossLayerTranscoder, plt: Transcoder) -> None:
    """Set ``clt``'s weights, in place and in its own normalised units (its ``input_scale`` and
    ``output_scale`` already set), to compute what ``plt`` computes: the PLT's encoders, thresholds,
    same-layer decoders, decoder bias and skip, and zero cross-layer decoders.

    ``plt`` may be saved (its normalisation folded into the weights, scales 1) or still training:
    both are re-expressed in ``clt``'s units, so the function is the same to rounding.
    """
    check_compatible(clt, plt)
    like = clt.b_dec
    s_in_p, s_out_p = plt.input_scale.to(like), plt.output_scale.to(like)  # [L]
    s_in_c, s_out_c = clt.input_scale, clt.output_scale
    # Encoder: pre = (x · s_in) W_enc + b_enc in either set, so W_enc scales by s_in_p / s_in_c.
    clt.W_enc.copy_(plt.W_enc.to(like) * (s_in_p / s_in_c)[:, None, None])
    clt.b_enc.copy_(plt.b_enc.to(like))
    clt.log_threshold.copy_(plt.log_threshold.to(like))
    # Decoder: y = (a W_dec + b_dec) / s_out in either set, so both scale by s_out_c / s_out_p.
    ratio = (s_out_c / s_out_p)[:, None]  # [L, 1]
    clt.b_dec.copy_(plt.b_dec.to(like) * ratio)
    for s, W in enumerate(clt.W_dec):  # W: [F, L - s, D]
        W.zero_()
        W[:, 0].copy_(plt.W_dec[s].to(like) * ratio[s])
    if clt.W_skip is not None:
        # skip = (x · s_in) W_skip / s_out in either set.
        clt.W_skip.copy_(plt.W_skip.to(like) * ((s_in_p / s_out_p) * (s_out_c / s_in_c))[:, None, None])


def weights_digest(tc: Transcoder) -> str:
    """A short hash of ``tc``'s weights and scales: part of a warm-started run's identity, so that a
    CLT started from other features (a preset retrained since, say) never resumes this run."""
    h = hashlib.sha256()
    for name, tensor in sorted(tc.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
