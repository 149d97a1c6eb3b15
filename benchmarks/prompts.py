"""The fixed prompt set that graph quality is measured on (``benchmarks/graph_quality.py``).

Twenty-four prompts, varied on purpose: recall of facts, indirect objects (IOI), induction and
copying, arithmetic, code, dates and sequences, other languages, and short and long contexts. Each
has a kind, so results can be read per kind as well as overall. The set is fixed: changing a
prompt changes every figure measured on it, so add new prompts at the end and say so in
BENCHMARKS.md.
"""

from __future__ import annotations

from typing import NamedTuple


class Prompt(NamedTuple):
    name: str
    kind: str
    text: str


PROMPTS: tuple[Prompt, ...] = (
    # Recall of facts
    Prompt("capital-france", "fact", "The capital of France is"),
    Prompt("eiffel", "fact", "The Eiffel Tower is located in the city of"),
    Prompt("sky-colour", "fact", "On a clear day, the colour of the sky is"),
    Prompt("einstein", "fact", "The theory of relativity was developed by Albert"),
    # Indirect object identification
    Prompt("ioi-mary-john", "ioi", "When Mary and John went to the store, John gave a drink to"),
    Prompt("ioi-office", "ioi", "After the meeting, Sarah and Tom walked to the office, and Tom handed the report to"),
    Prompt("ioi-park", "ioi", "Then, Anna and Peter had a long argument in the park. Afterwards Peter said to"),
    # Induction and copying
    Prompt("induction-names", "induction", "Harry Potter met Hermione Granger. Later that day, Harry Potter met Hermione"),
    Prompt("induction-random", "induction", "zebra lamp violin 42 kettle zebra lamp violin"),
    Prompt("copy-list", "induction", "Repeat the list: apple, river, candle. Again: apple, river,"),
    # Arithmetic
    Prompt("add-small", "arithmetic", "2 + 3 ="),
    Prompt("add-words", "arithmetic", "Seven plus five equals"),
    Prompt("multiply", "arithmetic", "If one box holds 6 eggs, then 4 boxes hold"),
    # Code
    Prompt("python-def", "code", "def add(a, b):\n    return a"),
    Prompt("python-loop", "code", "for i in range(10):\n    print("),
    Prompt("html", "code", "<html>\n<head>\n<title>Home</title>\n</"),
    # Dates and sequences
    Prompt("weekdays", "dates", "Monday, Tuesday, Wednesday,"),
    Prompt("months", "dates", "The months after March are April, May and"),
    Prompt("years", "dates", "The war lasted from 1939 to"),
    # Another language
    Prompt("french", "language", "Le chat est sur la"),
    Prompt("spanish", "language", "Buenos días, ¿cómo"),
    # Short and long
    Prompt("short", "short", "Once upon a"),
    Prompt("long-story", "long",
           "The old lighthouse keeper had lived alone on the island for thirty years. Every evening he climbed "
           "the spiral stairs, trimmed the wick and lit the great lamp, and every morning he wrote the weather "
           "in a leather book. One stormy night in November, a small boat appeared below the cliffs, and the "
           "keeper ran down to the shore with his"),
    Prompt("long-instructions", "long",
           "To bake bread, first mix the flour, water, salt and yeast in a large bowl. Knead the dough for ten "
           "minutes until it is smooth, then cover it and let it rise for an hour. Shape the loaf, let it rise "
           "again, and finally put it in a hot"),
)
