"""Task datasets: IOI, greater-than, induction. Built with small hand-made tokenizers (no assets)."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from circuits.models.tiny import tiny_tokenizer
from circuits.tasks import Task, greater_than, induction, ioi, logit_diff


def word_tokenizer(extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Word-level: every word and punctuation mark of the IOI templates and word lists is one token."""
    words = set(extra) | set(ioi.NAMES) | set(ioi.PLACES) | set(ioi.OBJECTS)
    for t in ioi.BABA_TEMPLATES:
        words |= set(re.findall(r"\w+|[^\w\s]", t.replace("[", " ").replace("]", " ")))
    vocab = {"<unk>": 0, "<s>": 1} | {w: i + 2 for i, w in enumerate(sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


class StubTokenizer:
    """Writes years either GPT-2 style (" 1732" → " 17" + "32") or digit by digit (SmolLM2 style)."""

    def __init__(self, digits: bool) -> None:
        self.digits, self.vocab = digits, {}

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, len(self.vocab))

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        pieces = []
        for word in re.findall(r" ?\S+", text):
            number = word.strip()
            if number.isdigit() and self.digits:
                pieces += ([" "] if word.startswith(" ") else []) + list(number)
            elif number.isdigit() and len(number) == 4:
                pieces += [word[: len(word) - 2], number[2:]]
            else:
                pieces.append(word)
        return {"input_ids": [self._id(p) for p in pieces]}


# --- IOI ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def task(tok) -> Task:
    return ioi.dataset(tok, n=40, seed=3)


def test_ioi_prompts_have_equal_length_and_aligned_corruptions(task):
    assert task.clean.shape == task.corrupted.shape == (40, task.n_pos)
    assert task.positions.tolist() == [task.n_pos - 1]
    templates = set(task.info["templates"])
    assert len(templates) >= 2  # a group of templates sharing one length, not a single one


def test_ioi_abc_corruption_differs_only_in_the_three_names(task):
    info = task.info
    for i in range(task.n):
        diff = (task.clean[i] != task.corrupted[i]).nonzero().flatten().tolist()
        slots = sorted([int(info["io_pos"][i]), int(info["s1_pos"][i]), int(info["s2_pos"][i])])
        assert diff == slots
        c = task.corrupted[i]
        assert len({int(c[p]) for p in slots}) == 3  # three different names: A, B, C
        assert not {int(c[p]) for p in slots} & {int(task.clean[i][p]) for p in slots}


def test_ioi_answers_are_io_and_s(task):
    info = task.info
    for i in range(task.n):
        io, s1, s2 = (int(info[k][i]) for k in ("io_pos", "s1_pos", "s2_pos"))
        assert task.answers[i, 0] == task.clean[i, io]
        assert task.wrong[i, 0] == task.clean[i, s1] == task.clean[i, s2]
        assert task.answers[i, 0] != task.wrong[i, 0]
        assert (io < s1) == (info["pattern"][i] == "ABBA")
    assert info["pattern"].count("BABA") == info["pattern"].count("ABBA") == 20


def test_ioi_is_deterministic_for_a_seed(tok):
    a, b, c = ioi.dataset(tok, n=8, seed=1), ioi.dataset(tok, n=8, seed=1), ioi.dataset(tok, n=8, seed=2)
    assert torch.equal(a.clean, b.clean) and a.clean_prompts == b.clean_prompts
    assert not torch.equal(a.clean, c.clean)


def test_ioi_single_token_filter_and_errors(tok):
    class Splitting:  # names longer than four letters split in two
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [0] * (1 if len(text.strip()) <= 4 else 2)}

    assert ioi.single_tokens(Splitting(), ["Mary", "John", "Elizabeth"]) == ["Mary", "John"]
    with pytest.raises(ValueError, match="too few single-token"):
        ioi.dataset(tok, names=["Mary", "John"])
    with pytest.raises(ValueError, match="lengths available"):
        ioi.dataset(tok, length=3)


def test_ioi_metric_and_subset(task):
    logits = torch.zeros(task.n, task.n_pos, 300)
    rows = torch.arange(task.n)
    logits[rows, -1, task.answers[:, 0]] = 2.0
    logits[rows, -1, task.wrong[:, 0]] = -1.0
    assert float(task.metric(logits)) == pytest.approx(3.0)
    assert float(logit_diff(logits[:, -1:], task.answers, task.wrong)) == pytest.approx(3.0)
    sub = task.subset([0, 5])
    assert sub.n == 2 and sub.clean_prompts == [task.clean_prompts[0], task.clean_prompts[5]]
    # Per-prompt facts follow the subset (the probes read the name positions); word lists stay whole.
    assert sub.info["io_pos"].tolist() == [int(task.info["io_pos"][0]), int(task.info["io_pos"][5])]
    assert sub.info["templates"] == [task.info["templates"][0], task.info["templates"][5]]
    assert sub.info["names"] == task.info["names"] and sub.groups.tolist() == task.groups[[0, 5]].tolist()


def test_ioi_groups_are_the_templates(task):
    # Mean ablation averages within a group, so a group must be exactly one template.
    templates = task.info["templates"]
    for i in range(task.n):
        for j in range(task.n):
            assert (task.groups[i] == task.groups[j]) == (templates[i] == templates[j])
    with pytest.raises(ValueError, match="equal token length"):
        Task("x", task.clean, task.corrupted[:, :-1], task.answers, task.wrong, task.positions, logit_diff)


# --- greater-than ------------------------------------------------------------------------------

def test_greater_than_with_two_digit_year_tokens():
    tok = StubTokenizer(digits=False)
    t = greater_than.dataset(tok, n=12, seed=0)
    assert t.info["mode"] == "pairs"
    assert t.clean.shape == t.corrupted.shape
    for i in range(t.n):
        xx = int(t.info["xx"][i])
        assert t.clean_prompts[i].endswith(f"{xx:02d} to the year {t.clean_prompts[i][-2:]}")
        assert "01 to the year" in t.corrupted_prompts[i]
        assert (t.answers[i] >= 0).sum() == 99 - xx and (t.wrong[i] >= 0).sum() == xx + 1
    year = {k: tok(f"{k:02d}")["input_ids"][0] for k in range(100)}
    logits = torch.full((t.n, 1, len(tok.vocab)), -1e9)
    logits[:, 0, year[99]] = 0.0  # all mass on "99": greater than every XX
    assert float(t.score(logits)) == pytest.approx(1.0)
    logits[:, 0, year[99]], logits[:, 0, year[0]] = -1e9, 0.0  # all on "00": never greater
    assert float(t.score(logits)) == pytest.approx(-1.0)


def test_greater_than_for_a_digit_splitting_tokenizer_uses_the_first_digit():
    tok = StubTokenizer(digits=True)
    t = greater_than.dataset(tok, n=12, seed=0)
    assert t.info["mode"] == "first_digit" and "first digit" in t.info["metric"]
    digit = [tok(str(d))["input_ids"][0] for d in range(10)]
    for i in range(t.n):
        tens = int(t.info["xx"][i]) // 10
        assert sorted(t.answers[i][t.answers[i] >= 0].tolist()) == sorted(digit[tens + 1:])
        assert sorted(t.wrong[i][t.wrong[i] >= 0].tolist()) == sorted(digit[:tens])
    with pytest.raises(ValueError, match="splits numbers into digits"):
        greater_than.dataset(tok, mode="pairs")


# --- induction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("corruption", ["first_half", "second_half"])
def test_induction_sequences(corruption):
    tok = tiny_tokenizer(40)
    t = induction.dataset(tok, n=5, seq_len=6, bos=None, corruption=corruption, seed=1)
    assert t.clean.shape == (5, 12)
    assert torch.equal(t.clean[:, :6], t.clean[:, 6:])
    same = slice(6, 12) if corruption == "first_half" else slice(0, 6)
    assert torch.equal(t.clean[:, same], t.corrupted[:, same])
    assert t.positions.tolist() == [6, 7, 8, 9, 10]
    assert torch.equal(t.answers, t.clean[:, 1:6])
    assert (t.clean != 0).all()  # never the special <unk>
    logits = torch.full((5, 12, 40), -1e4)
    logits.scatter_(2, torch.cat([t.clean[:, 1:], t.clean[:, :1]], 1).unsqueeze(-1), 0.0)
    assert float(t.metric(logits)) == pytest.approx(0.0, abs=1e-6)  # every next token certain
    with_bos = induction.dataset(tok, n=2, seq_len=3, bos=7)
    assert (with_bos.clean[:, 0] == 7).all() and with_bos.positions.tolist() == [4, 5]
