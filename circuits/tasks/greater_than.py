"""Greater-than (Hanna et al., 2023): "The war lasted from the year 1732 to the year 17" → a
year after 32.

Metric: probability mass on years greater than XX minus mass on years up to XX, at the last
position. The corrupted prompt uses XX = 01, which leaves no year to be greater than.

Tokenizers differ in how they write years, and the metric has to follow:

- ``"pairs"``: GPT-2-style tokenizers write " 1732" as " 17" + "32", with a token for every
  two-digit string. The next token is the whole two-digit year, and the metric is exactly
  Hanna et al.'s: Σ p(YY > XX) − Σ p(YY ≤ XX) over the 100 tokens "00".."99".
- ``"first_digit"``: tokenizers that split numbers into digits (SmolLM2, Llama-3, Qwen, Gemma)
  predict only the tens digit next. The metric then uses that digit: Σ p(d > t) − Σ p(d < t)
  over "0".."9", where t is XX's tens digit. The digit t itself is left out, since a year
  starting with it can fall on either side of XX. This is a coarser task than the paper's
  (it asks only whether the decade is later), and circuits found with it are not comparable
  one to one with Hanna et al.'s; ``task.info["mode"]`` records which metric is in use.

``mode="pairs"`` raises for a digit-splitting tokenizer rather than fall back silently.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from circuits.tasks.task import Task, at_least_float32

NOUNS: tuple[str, ...] = (
    "war", "expedition", "campaign", "siege", "reign", "dynasty", "journey", "voyage", "trial", "treaty",
    "marriage", "project", "study", "investigation", "occupation", "rebellion", "crisis", "conflict", "empire",
    "alliance", "festival", "tour", "program", "revolution", "drought", "famine", "epidemic", "plague",
    "strike", "boom", "recession", "migration", "exile", "partnership", "rivalry", "friendship", "feud",
    "construction", "operation", "pilgrimage",
)

Mode = Literal["auto", "pairs", "first_digit"]


def _single(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def year_mode(tokenizer: PreTrainedTokenizerBase) -> Literal["pairs", "first_digit"]:
    """How this tokenizer writes a year such as 1732; raises if neither way applies."""
    pairs = all(_single(tokenizer, f"{k:02d}") is not None for k in range(100)) and \
        tokenizer(" 1732", add_special_tokens=False)["input_ids"] == [_single(tokenizer, " 17"), _single(tokenizer, "32")]
    if pairs:
        return "pairs"
    digits = [_single(tokenizer, str(d)) for d in range(10)]
    if all(d is not None for d in digits) and tokenizer("1732", add_special_tokens=False)["input_ids"] == \
            [digits[1], digits[7], digits[3], digits[2]]:
        return "first_digit"
    raise ValueError("this tokenizer writes years neither as ' 17' + '32' nor digit by digit; "
                     "greater-than needs one of the two")


def prob_diff(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    """Mean over prompts of Σ p(answers) − Σ p(wrong) at the last metric position (−1 pads skipped).

    ``logits``: ``[n, n_positions, d_vocab]``; ``answers``, ``wrong``: ``[n, k]``.
    """
    p = at_least_float32(logits[:, -1]).softmax(-1)

    def mass(tokens: Tensor) -> Tensor:
        if tokens.shape[1] == 0:
            return torch.zeros(p.shape[0], device=p.device)
        return (p.gather(1, tokens.clamp(min=0)) * (tokens >= 0)).sum(1)

    return (mass(answers) - mass(wrong)).mean()


def _pad(rows: list[list[int]]) -> Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long).reshape(len(rows), width)


def dataset(tokenizer: PreTrainedTokenizerBase, n: int = 64, seed: int = 0, *, mode: Mode = "auto",
            nouns: tuple[str, ...] | list[str] = NOUNS, centuries: tuple[int, ...] = tuple(range(11, 18))) -> Task:
    """``n`` greater-than prompts with XX drawn from 02..98 and their XX = 01 corruptions.

    Only nouns that are one token (with a leading space) are used, so every prompt has one length.
    """
    found = year_mode(tokenizer)
    if mode == "pairs" and found != "pairs":
        raise ValueError("mode='pairs' needs a tokenizer with a token for every two-digit year ending; this one "
                         "splits numbers into digits. Use mode='first_digit' (see the module docstring) or a "
                         "GPT-2-style tokenizer")
    mode = found if mode == "auto" else mode
    nouns_ok = [w for w in nouns if _single(tokenizer, " " + w) is not None]
    if not nouns_ok:
        raise ValueError("no noun is a single token for this tokenizer: pass nouns=")
    rng = random.Random(seed)
    clean, corrupt, ans, wrong, xx_list = [], [], [], [], []
    for _ in range(n):
        noun, yy, xx = rng.choice(nouns_ok), rng.choice(centuries), rng.randrange(2, 99)
        clean.append(f"The {noun} lasted from the year {yy}{xx:02d} to the year {yy}")
        corrupt.append(f"The {noun} lasted from the year {yy}01 to the year {yy}")
        xx_list.append(xx)
        if mode == "pairs":
            years = [_single(tokenizer, f"{k:02d}") for k in range(100)]
            ans.append([years[k] for k in range(xx + 1, 100)])
            wrong.append([years[k] for k in range(xx + 1)])
        else:
            digits = [_single(tokenizer, str(d)) for d in range(10)]
            t = xx // 10
            ans.append([digits[d] for d in range(t + 1, 10)])
            wrong.append([digits[d] for d in range(t)])
    ids = [tokenizer(p)["input_ids"] for p in clean]
    ids_c = [tokenizer(p)["input_ids"] for p in corrupt]
    lengths = {len(i) for i in ids + ids_c}
    if len(lengths) != 1:
        raise ValueError(f"prompts came out with token lengths {sorted(lengths)}; pass nouns= that tokenize alike")
    length = lengths.pop()
    return Task(
        name="greater_than", clean=torch.tensor(ids), corrupted=torch.tensor(ids_c), answers=_pad(ans),
        wrong=_pad(wrong), positions=torch.tensor([length - 1]), metric_fn=prob_diff,
        clean_prompts=clean, corrupted_prompts=corrupt,
        info={"mode": mode, "xx": torch.tensor(xx_list), "nouns": tuple(nouns_ok), "seed": seed,
              "metric": ("sum p(YY > XX) - sum p(YY <= XX) over two-digit tokens" if mode == "pairs" else
                         "first digit only: sum p(d > tens(XX)) - sum p(d < tens(XX)) over digit tokens")},
    )
