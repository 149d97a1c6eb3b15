"""Indirect object identification (Wang et al., 2022): "When Mary and John went to the store,
John gave a drink to" → " Mary".

Prompts follow the paper's BABA templates and their ABBA mirror (the first two names
swapped); names, places and objects are kept only where they are one token (with a leading
space) for the given tokenizer, so every name sits at the same token position in a prompt
and in its corrupted partner. The corruption is the paper's ABC distribution: the same
sentence with the indirect object, the first and the second subject mention replaced by three
other, distinct names. All prompts of a task have one token length: templates are grouped by
length and one group is used (the largest, or the one asked for).

Metric: mean logit difference logit(IO) − logit(S) at the last position (END).
"""

from __future__ import annotations

import random
from collections import defaultdict

import torch
from transformers import PreTrainedTokenizerBase

from circuits.tasks.task import Task, logit_diff

# Wang et al.'s BABA templates; [B] is the subject (S), [A] the indirect object (IO).
BABA_TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
    "When [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
)

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Tom", "Sarah", "James", "Michael", "David", "Daniel", "Paul", "Mark",
    "Peter", "George", "Thomas", "William", "Robert", "Richard", "Charles", "Joseph", "Edward", "Henry",
    "Jack", "Harry", "Sam", "Max", "Ben", "Adam", "Andrew", "Anthony", "Brian", "Kevin", "Jason", "Eric",
    "Steven", "Scott", "Ryan", "Kyle", "Sean", "Patrick", "Matthew", "Nathan", "Aaron", "Alex", "Chris",
    "Martin", "Simon", "Victor", "Frank", "Carl", "Jeff", "Tony", "Luke", "Jake", "Dan", "Anna", "Emma",
    "Laura", "Lisa", "Emily", "Rachel", "Jessica", "Jennifer", "Amy", "Kate", "Sophie", "Julia", "Grace",
    "Rose", "Helen", "Susan", "Karen", "Linda", "Nancy", "Betty", "Margaret", "Elizabeth", "Sara", "Hannah",
    "Lucy", "Claire", "Diana", "Eva", "Jane", "Amanda", "Michelle", "Nicole", "Stephanie", "Rebecca",
    "Victoria", "Olivia", "Megan", "Katie", "Lily", "Ruby", "Alan", "Roger", "Bruce", "Craig", "Dean",
)
PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
                           "park", "beach", "library", "market")
OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
                            "book", "letter", "gift", "cake")


def single_tokens(tokenizer: PreTrainedTokenizerBase, words: tuple[str, ...] | list[str]) -> list[str]:
    """The words that are one token with a leading space (as they appear mid-sentence)."""
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def _fill(template: str, a: str, b: str, c: str, place: str, obj: str) -> str:
    """Fill a template written with [B] [A] ... [B]; ``c`` goes into the second [B] slot."""
    first = template.index("[B]")
    second = template.index("[B]", first + 3)
    s = template[:second] + c + template[second + 3:]
    s = s[:first] + b + s[first + 3:]
    return s.replace("[A]", a).replace("[PLACE]", place).replace("[OBJECT]", obj)


def dataset(tokenizer: PreTrainedTokenizerBase, n: int = 64, seed: int = 0, *,
            templates: tuple[str, ...] | list[str] = BABA_TEMPLATES, names: tuple[str, ...] | list[str] = NAMES,
            places: tuple[str, ...] | list[str] = PLACES, objects: tuple[str, ...] | list[str] = OBJECTS,
            length: int | None = None) -> Task:
    """``n`` IOI prompts (half BABA, half ABBA) with their ABC corruptions.

    Args:
        tokenizer: the model's tokenizer (``model.tokenizer``); its own special tokens are added.
        n: number of prompt pairs.
        seed: the sampling seed; the same seed gives the same task.
        templates: BABA templates with [B] (subject, twice), [A] (indirect object), [PLACE], [OBJECT].
        names, places, objects: word lists; only single-token words are used.
        length: token length of every prompt; default the length shared by the most templates.

    ``info`` holds per-prompt token positions ``io_pos``, ``s1_pos``, ``s2_pos``, ``end_pos`` ([n]),
    the template index and pattern (``"BABA"``/``"ABBA"``) of each prompt.
    """
    names_ok = single_tokens(tokenizer, names)
    places_ok = single_tokens(tokenizer, places)
    objects_ok = single_tokens(tokenizer, objects)
    if len(names_ok) < 5 or not places_ok or not objects_ok:
        raise ValueError(f"too few single-token words for this tokenizer (names {len(names_ok)}, places "
                         f"{len(places_ok)}, objects {len(objects_ok)}): pass names=/places=/objects= lists "
                         "whose words are one token with a leading space")
    # Every template's token layout, from one filling; then check the layout holds for all fillings used.
    by_length: dict[int, list[int]] = defaultdict(list)
    layouts: dict[int, tuple[int, int, int]] = {}
    probe = names_ok[:3]
    for ti, t in enumerate(templates):
        layout = _layout(tokenizer, t, probe, places_ok[0], objects_ok[0])
        if layout is None:
            continue
        layouts[ti] = layout[:3]
        by_length[layout[3]].append(ti)
    if not by_length:
        raise ValueError("no template tokenizes with its names at fixed positions: check the templates")
    if length is None:
        length = max(by_length, key=lambda k: (len(by_length[k]), -k))
    if length not in by_length:
        raise ValueError(f"no template has {length} tokens for this tokenizer; lengths available: "
                         f"{sorted(by_length)} (templates per length: "
                         f"{ {k: len(v) for k, v in sorted(by_length.items())} })")
    group = by_length[length]

    rng = random.Random(seed)
    clean_p, corrupt_p, rows = [], [], []
    for i in range(n):
        ti = group[rng.randrange(len(group))]
        a, b, x, y, z = rng.sample(names_ok, 5)
        place, obj = rng.choice(places_ok), rng.choice(objects_ok)
        t = templates[ti]
        pattern = "BABA" if i % 2 == 0 else "ABBA"
        # ABBA: the first mention is the IO. _fill writes its first name argument into [A].
        clean = _fill(t, a, b, b, place, obj) if pattern == "BABA" else _fill(t, b, a, b, place, obj)
        corrupt = _fill(t, x, y, z, place, obj) if pattern == "BABA" else _fill(t, y, x, z, place, obj)
        first, second, s2 = layouts[ti]
        io_pos, s1_pos = (second, first) if pattern == "BABA" else (first, second)
        clean_p.append(clean)
        corrupt_p.append(corrupt)
        rows.append((ti, pattern, a, b, io_pos, s1_pos, s2))
    clean_ids = _encode(tokenizer, clean_p, length)
    corrupt_ids = _encode(tokenizer, corrupt_p, length)
    tok = lambda w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0]
    io = torch.tensor([[tok(r[2])] for r in rows])
    s = torch.tensor([[tok(r[3])] for r in rows])
    pos = lambda k: torch.tensor([r[k] for r in rows])
    return Task(
        name="ioi", clean=clean_ids, corrupted=corrupt_ids, answers=io, wrong=s,
        positions=torch.tensor([length - 1]), metric_fn=logit_diff,
        clean_prompts=clean_p, corrupted_prompts=corrupt_p,
        groups=torch.tensor([group.index(r[0]) for r in rows]),  # the template: names sit at its positions
        info={"metric": "logit difference logit(IO) - logit(S) at END, mean over prompts",
              "templates": [templates[r[0]] for r in rows], "pattern": [r[1] for r in rows],
              "io_pos": pos(4), "s1_pos": pos(5), "s2_pos": pos(6), "end_pos": torch.full((n,), length - 1),
              "names": tuple(names_ok), "places": tuple(places_ok), "objects": tuple(objects_ok), "seed": seed},
    )


def _layout(tokenizer: PreTrainedTokenizerBase, template: str, names: list[str], place: str,
            obj: str) -> tuple[int, int, int, int] | None:
    """(position of the first name, of the second, of S2, token length) of a template, found by
    filling it twice with different names and reading where the tokens differ; None if the
    fillings differ in length or in anything but three single positions."""
    a, b, c = names
    one = tokenizer(_fill(template, a, b, c, place, obj))["input_ids"]
    two = tokenizer(_fill(template, b, c, a, place, obj))["input_ids"]
    if len(one) != len(two):
        return None
    diff = [i for i, (u, v) in enumerate(zip(one, two)) if u != v]
    if len(diff) != 3:
        return None
    first_name_tok = tokenizer(" " + b, add_special_tokens=False)["input_ids"][0]
    # In the first filling the order of the three slots is [B]=b, [A]=a, S2=c: which slot comes first
    # in the text depends on the template ("[B] and [A]" in all of Wang's).
    first, second, s2 = diff
    if one[first] != first_name_tok:
        return None
    return first, second, s2, len(one)


def _encode(tokenizer: PreTrainedTokenizerBase, prompts: list[str], length: int) -> torch.Tensor:
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    bad = [p for p, i in zip(prompts, ids) if len(i) != length]
    if bad:
        raise ValueError(f"{len(bad)} prompts are not {length} tokens long (e.g. {bad[0]!r}): a word list holds "
                         "a word that merges with its neighbours; pass word lists without it")
    return torch.tensor(ids)
