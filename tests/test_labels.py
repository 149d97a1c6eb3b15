"""Feature labels: the top activations found in one streaming pass equal a brute-force search."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from circuits.labels import FeatureLabels, compute_labels, load_labels
from graph_helpers import tiny_setup
from transcoders.corpus import Corpus

SEQ, BATCH, N_TOKENS = 32, 4, 512


@pytest.fixture()
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))  # the token cache goes here, not ~/.cache
    rng = np.random.default_rng(0)
    for i in range(6):
        words = rng.integers(1, 39, size=400)
        (tmp_path / f"doc{i}.txt").write_text(" ".join(f"t{w}" for w in words))
    return Corpus.from_files([tmp_path / f"doc{i}.txt" for i in range(6)], heldout_fraction=0.0)


def test_top_activations_match_brute_force(corpus: Corpus) -> None:
    model, tc = tiny_setup()
    labels = compute_labels(model, tc, corpus, n_tokens=N_TOKENS, seq_len=SEQ, batch_size=BATCH, k=4, before=3,
                            after=1, precision="fp32", progress=False)
    L, F = tc.cfg.n_layers, tc.cfg.d_features
    assert labels.shape == (L, F, 4)
    # Brute force over the very same batches.
    rows = torch.cat(list(corpus.batches(model.tokenizer, seq_len=SEQ, batch_size=BATCH, max_tokens=N_TOKENS)))
    rec = model.record_batch(rows, [("mlp_in", layer) for layer in range(L)])
    for layer in range(L):
        with torch.no_grad():
            acts = tc.encode(rec[("mlp_in", layer)], layer).acts.float()
        acts[:, :1] = 0  # the first position of every row is skipped
        flat = acts.reshape(-1, F)
        top = flat.topk(4, dim=0).values.T.numpy()
        np.testing.assert_allclose(labels.top_acts[layer], np.where(top > 0, top, labels.top_acts[layer]), rtol=1e-5)
        fired = top[:, 0] > 0
        assert (labels.top_acts[layer][~fired] == 0).all()
        # The recorded token and its context are where the activation happened.
        for f in np.flatnonzero(fired)[:5]:
            where = int(flat[:, f].argmax())
            r, c = divmod(where, SEQ)
            assert labels.top_tokens[layer, f, 0] == rows[r, c]
            assert labels.contexts[layer, f, 0, labels.before] == rows[r, c]
            assert labels.contexts[layer, f, 0, labels.before - 1] == (rows[r, c - 1] if c >= 1 else -1)
    assert (np.diff(labels.top_acts, axis=-1) <= 0).all()  # strongest first


def test_labels_text_save_load_and_fingerprint(corpus: Corpus, tmp_path: Path) -> None:
    model, tc = tiny_setup()
    labels = compute_labels(model, tc, corpus, n_tokens=N_TOKENS, seq_len=SEQ, batch_size=BATCH, progress=False)
    mapping = labels.mapping()
    assert mapping
    for (layer, f), text in list(mapping.items())[:10]:
        first = model.tokenizer.decode([int(labels.top_tokens[layer, f, 0])])
        assert text.split(" · ")[0] == first
        assert len(text.split(" · ")) == len(set(text.split(" · "))) <= 3
        examples = labels.examples(layer, f, model.tokenizer)
        assert examples and f"⟦{first}⟧" in examples[0][1]
    where = labels.save(tmp_path / "set")
    back = load_labels(where, tc)
    assert isinstance(back, FeatureLabels)
    assert back.labels == labels.labels and back.info == labels.info
    for name in ("top_acts", "top_tokens", "contexts"):
        np.testing.assert_array_equal(getattr(back, name), getattr(labels, name))
    retrained = copy.deepcopy(tc)
    with torch.no_grad():
        retrained.W_enc.mul_(1.01)
    assert load_labels(where, retrained) is None  # labels of other weights are never shown
    assert load_labels(tmp_path / "nowhere", tc) is None


def test_labels_go_beside_the_engines_own_sets_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A set the engine saved keeps its labels beside it; a folder of someone else's is never written into."""
    from circuits.labels import labels_dir
    from transcoders import save_transcoders

    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    model, tc = tiny_setup()
    ours = save_transcoders(tc, tmp_path / "ours")
    assert labels_dir(model, ours) == ours
    theirs = tmp_path / "downloaded"
    theirs.mkdir()
    (theirs / "config.yaml").write_text("a set someone else published\n")
    where = labels_dir(model, theirs)
    assert where.is_relative_to(tmp_path / "cache") and where == labels_dir(model, theirs)
