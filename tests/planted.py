"""A two-layer GPT-2 whose weights are set by hand: a previous-token head (a0.h0) feeding an
induction head (a1.h0); every other head and both MLPs are zero.

The residual stream is split into blocks, each written as a +one-hot / −one-hot pair so that
every position has mean zero (GPT-2's LayerNorm centres) and a fixed norm:

    tok  [0, 2V)        the current token           (embedding)
    pos  [2V, 2V+2P)    the position                 (position embedding)
    prev [.., +2V)      the previous token           (written by a0.h0)
    pred [.., +2V)      the predicted next token     (written by a1.h0, read by the unembedding)
    anchor (2 dims)     ±A                           (embedding)

The anchor dominates the norm, so every LayerNorm scales by the same constant whatever the
other blocks hold, and its gain undoes that: each norm is the identity on the blocks the heads
read. With the ``induction`` task (first half corrupted), exactly four edges carry the effect:

    input → a0.h0<v>     the token a0.h0 copies forward
    a0.h0 → a1.h0<k>     the previous token the induction head matches against
    input → a1.h0<v>     the token the induction head copies
    a1.h0 → logits

Positional edges (input → a0.h0<q>, <k>) change nothing because clean and corrupted prompts have
the same positions; input → a1.h0<q> changes only first-half positions, which the metric skips.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Config

from circuits.models.adapter import Model
from circuits.models.tiny import tiny_tokenizer

V = 24        # vocabulary
P = 16        # context
D_MODEL = 256
N_HEADS = 4
D_HEAD = D_MODEL // N_HEADS
A = 1000.0    # anchor

TOK, POS = 0, 2 * V
PREV = POS + 2 * P
PRED = PREV + 2 * V
ANCHOR = PRED + 2 * V

PLANTED_EDGES: tuple[str, ...] = ("input->a0.h0<v>", "a0.h0->a1.h0<k>", "input->a1.h0<v>", "a1.h0->logits")


SECOND_HEAD_EDGES: tuple[str, ...] = ("a0.h0->a1.h2<k>", "input->a1.h2<v>", "a1.h2->logits")


def planted_induction_model(*, beta: float = 80.0, gamma: float = 32.0, kappa: float = 3.0,
                            second_head: float = 0.0, dtype: torch.dtype = torch.float64) -> Model:
    """``beta``/8 and ``gamma``/8: attention score of the matching key for the previous-token and
    the induction head (GPT-2 divides by sqrt(d_head) = 8); ``kappa``: logit of a copied token.
    ``second_head`` > 0 plants a second induction head a1.h2 whose output is scaled by it
    (its edges are ``SECOND_HEAD_EDGES``)."""
    assert ANCHOR + 2 <= D_MODEL
    cfg = GPT2Config(vocab_size=V, n_embd=D_MODEL, n_layer=2, n_head=N_HEADS, n_inner=4 * D_MODEL, n_positions=P,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
                     layer_norm_epsilon=1e-9, bos_token_id=0, eos_token_id=0)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype)
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        sigma = A * (2 / D_MODEL) ** 0.5  # every LayerNorm's scale, set by the anchor
        t = hf.transformer
        for ln in [t.h[0].ln_1, t.h[0].ln_2, t.h[1].ln_1, t.h[1].ln_2, t.ln_f]:
            ln.weight.fill_(sigma)
        for v in range(V):
            t.wte.weight[v, TOK + v], t.wte.weight[v, TOK + V + v] = 1.0, -1.0
            t.wte.weight[v, ANCHOR], t.wte.weight[v, ANCHOR + 1] = A, -A
        for p in range(P):
            t.wpe.weight[p, POS + p], t.wpe.weight[p, POS + P + p] = 1.0, -1.0
        d, dh = D_MODEL, D_HEAD
        # a0.h0: query e_i, key e_{j+1} from the position block, so position i attends to i - 1.
        w0 = t.h[0].attn.c_attn.weight  # [d_model, 3 d_model]: x @ W gives q | k | v
        for p in range(P):
            w0[POS + p, p] = beta ** 0.5
            if p + 1 < dh:
                w0[POS + p, d + p + 1] = beta ** 0.5
        for v in range(V):
            w0[TOK + v, 2 * d + v] = 1.0                       # value: the token
            t.h[0].attn.c_proj.weight[v, PREV + v] = 1.0       # written as the previous token
            t.h[0].attn.c_proj.weight[v, PREV + V + v] = -1.0
        # a1.h0: query = current token, key = previous token; value = token, written as the prediction.
        w1 = t.h[1].attn.c_attn.weight
        heads = [(0, 1.0)] + ([(2, second_head)] if second_head else [])
        for h, scale in heads:
            o = h * dh
            for v in range(V):
                w1[TOK + v, o + v] = gamma ** 0.5
                w1[PREV + v, d + o + v] = gamma ** 0.5
                w1[TOK + v, 2 * d + o + v] = 1.0
                t.h[1].attn.c_proj.weight[o + v, PRED + v] = scale
                t.h[1].attn.c_proj.weight[o + v, PRED + V + v] = -scale
        for v in range(V):
            hf.lm_head.weight[v, PRED + v] = kappa / 2
            hf.lm_head.weight[v, PRED + V + v] = -kappa / 2
    return Model(hf.eval(), tiny_tokenizer(V), "planted-induction")
