"""Feature labels: each transcoder feature's top-activating tokens, with their contexts, on training text.

One pass over ``n_tokens`` tokens of a corpus (50,000 by default: one to two minutes for SmolLM2 on
two CPU cores in bf16) keeps, for every (layer, feature), the ``k`` largest activations, the token
each fired on and the few tokens around it. A feature's label is its distinct top tokens, e.g.
``␣Mary · ␣John · ␣Anna``; that is what graph drawings and the viewer JSON show.

The result is saved beside the transcoder set it describes (``feature_labels.safetensors`` for the
arrays, ``feature_labels.json`` for the label strings and how they were made) and tagged with a
fingerprint of the set's weights, so labels of a retrained set are never shown for the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from circuits.models.adapter import Model
from graphs.node_labels import show_token
from transcoders.writes import MARKER, dumps, write_folder
from transcoders.precision import Precision, autocast
from transcoders.positions import FEATURE_START

log = logging.getLogger("circuits.labels")

ARRAYS_FILE, LABELS_FILE = "feature_labels.safetensors", "feature_labels.json"
_FORMAT = "circuit-engine feature labels"


@dataclass
class FeatureLabels:
    """Top activations of every feature of a transcoder set (``L`` layers, ``F`` features, top ``k``)."""

    top_acts: np.ndarray
    """``[L, F, k]`` float32, largest first; 0 where the feature fired fewer than k times."""
    top_tokens: np.ndarray
    """``[L, F, k]`` int32: the token each top activation fired on (-1 where none)."""
    contexts: np.ndarray
    """``[L, F, k, before + 1 + after]`` int32: the tokens around it (-1 past a row's edge)."""
    labels: list[list[str]]
    """``[L][F]``: the label text of each feature ("" for a feature that never fired)."""
    before: int
    """Tokens of context before the activating one (it sits at index ``before`` of a context)."""
    info: dict[str, Any] = field(default_factory=dict)
    """How they were made: model, fingerprint of the set, n_tokens, corpus, seconds."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.top_acts.shape)  # type: ignore[return-value]

    def label(self, layer: int, feature: int) -> str:
        return self.labels[layer][feature]

    def mapping(self) -> dict[tuple[int, int], str]:
        """``{(layer, feature): label}`` for every feature that fired (for ``graphs.set_feature_labels``)."""
        return {(layer, f): text for layer, row in enumerate(self.labels) for f, text in enumerate(row) if text}

    def examples(self, layer: int, feature: int, tokenizer: Any) -> list[tuple[float, str]]:
        """``[(activation, context with the firing token in ⟦ ⟧)]``, strongest first."""
        out = []
        for act, ctx in zip(self.top_acts[layer, feature], self.contexts[layer, feature]):
            if act <= 0:
                break
            pieces = [tokenizer.decode([int(t)]) if t >= 0 else "" for t in ctx]
            pieces[self.before] = f"⟦{pieces[self.before]}⟧"
            out.append((float(act), "".join(pieces)))
        return out

    def context_windows(self, keys: Iterable[tuple[int, int]], tokenizer: Any, n: int = 5
                        ) -> dict[tuple[int, int], list[list[Any]]]:
        """``{(layer, feature): [[activation, [token texts], index of the firing token], ...]}`` for ``keys``:
        up to ``n`` top contexts each, strongest first, trimmed to the row (for ``graphs.set_feature_contexts``)."""
        cache: dict[int, str] = {}

        def text(t: int) -> str:
            if t not in cache:
                cache[t] = tokenizer.decode([t])
            return cache[t]

        out = {}
        for layer, feature in keys:
            windows = []
            for act, ctx in zip(self.top_acts[layer, feature][:n], self.contexts[layer, feature][:n]):
                if act <= 0:
                    break
                inside = np.flatnonzero(ctx >= 0)
                lo, hi = int(inside.min()), int(inside.max()) + 1
                windows.append([float(act), [text(int(t)) for t in ctx[lo:hi]], self.before - lo])
            if windows:
                out[(int(layer), int(feature))] = windows
        return out

    def save(self, directory: str | Path) -> Path:
        """Write both files into ``directory`` (atomically each); returns the directory."""
        arrays = {"top_acts": self.top_acts, "top_tokens": self.top_tokens, "contexts": self.contexts}
        meta = dumps({"format": _FORMAT, "before": self.before, "info": self.info, "labels": self.labels},
                     ensure_ascii=False)
        # Beside the set's own files, which stay: the labels add to the folder, they do not replace it.
        return write_folder(directory, {ARRAYS_FILE: lambda tmp: save_file(arrays, str(tmp)),
                                        LABELS_FILE: lambda tmp: tmp.write_text(meta)}, replace_all=False)

    @classmethod
    def load(cls, directory: str | Path) -> FeatureLabels:
        directory = Path(directory)
        fix = (f"Fix: delete {LABELS_FILE} and {ARRAYS_FILE} in {directory}; the labels are computed again "
               "(circuits.labels.compute_labels).")
        try:
            meta = json.loads((directory / LABELS_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{directory / LABELS_FILE} is damaged ({exc}). {fix}") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{directory / LABELS_FILE} is not a feature-label file. {fix}")
        try:
            arrays = load_file(str(directory / ARRAYS_FILE))
            return cls(arrays["top_acts"], arrays["top_tokens"], arrays["contexts"], meta["labels"],
                       int(meta["before"]), meta.get("info", {}))
        except FileNotFoundError:
            raise
        except Exception as exc:  # safetensors raises its own SafetensorError for a damaged file
            raise ValueError(f"the feature labels in {directory} are damaged ({type(exc).__name__}: {exc}). "
                             f"{fix}") from exc


def fingerprint(transcoders: torch.nn.Module) -> str:
    """A short hash of the set's shape and weights: it changes whenever the set is retrained."""
    h = hashlib.sha256(json.dumps(transcoders.cfg.to_dict(), sort_keys=True, default=str).encode())
    # A strided sample of the encoder is enough to tell sets apart and hashes in milliseconds.
    for p in (transcoders.W_enc[..., ::61], transcoders.b_enc):
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_labels(directory: str | Path, transcoders: torch.nn.Module) -> FeatureLabels | None:
    """The labels saved in ``directory`` for ``transcoders``, or None if absent or made for other weights."""
    directory = Path(directory)
    if not (directory / LABELS_FILE).is_file() or not (directory / ARRAYS_FILE).is_file():
        return None
    labels = FeatureLabels.load(directory)
    if labels.info.get("fingerprint") != fingerprint(transcoders):
        log.warning("feature labels in %s were made for other transcoder weights; ignoring them", directory)
        return None
    return labels


@torch.no_grad()
def compute_labels(model: Model, transcoders: torch.nn.Module, corpus: Any = None, *, n_tokens: int = 50_000,
                   seq_len: int = 128, batch_size: int = 8, k: int = 8, before: int = 8, after: int = 2,
                   n_label_tokens: int = 3, skip_first: int = FEATURE_START, split: str = "train", seed: int = 0,
                   precision: Precision = "auto", progress: bool = True) -> FeatureLabels:
    """Top-``k`` activations of every feature over ``n_tokens`` tokens of ``corpus``.

    Args:
        corpus: a ``transcoders.Corpus``; default the packaged training text.
        seq_len, batch_size: the rows the model reads, ``[batch_size, seq_len]`` per forward.
        before, after: context tokens kept around each top activation.
        n_label_tokens: distinct top tokens in a label.
        skip_first: positions at the start of every row left out (the first token is an attention
            sink whose activations are far larger than the rest's; harvesting skips it too).
        precision: "auto" runs in bf16 only where the hardware runs it faster (about 4x on an AVX-512
            BF16 CPU; emulated and far slower on AVX2); see ``transcoders.precision``.
    """
    if corpus is None:
        from transcoders.corpus import Corpus

        corpus = Corpus.packaged()
    if n_tokens < seq_len:
        raise ValueError(f"n_tokens={n_tokens} is less than one row of seq_len={seq_len}. Fix: raise n_tokens.")
    was_training = transcoders.training
    transcoders.eval()  # BatchTopK shares its budget across a batch only while training
    try:
        return _compute(model, transcoders, corpus, n_tokens=n_tokens, seq_len=seq_len, batch_size=batch_size, k=k,
                        before=before, after=after, n_label_tokens=n_label_tokens, skip_first=skip_first, split=split,
                        seed=seed, precision=precision, progress=progress)
    finally:
        transcoders.train(was_training)


def _compute(model: Model, transcoders: torch.nn.Module, corpus: Any, *, n_tokens: int, seq_len: int,
             batch_size: int, k: int, before: int, after: int, n_label_tokens: int, skip_first: int, split: str,
             seed: int, precision: Precision, progress: bool) -> FeatureLabels:
    t0 = time.perf_counter()
    L, F = transcoders.cfg.n_layers, transcoders.cfg.d_features
    site = transcoders.cfg.input_site
    device = next(transcoders.parameters()).device
    best_acts = torch.zeros(L, F, k)
    best_index = torch.full((L, F, k), -1, dtype=torch.long)
    rows: list[Tensor] = []
    seen = 0
    bar = tqdm(total=n_tokens, desc="feature labels", unit="tok", disable=not progress, leave=False)
    for ids in corpus.batches(model.tokenizer, seq_len=seq_len, batch_size=batch_size, split=split, seed=seed,
                              max_tokens=n_tokens):
        with autocast(model.device, precision):
            rec = model.record_batch(ids, [(site, layer) for layer in range(L)])
        B, T = ids.shape
        for layer in range(L):
            x = rec[(site, layer)].to(device)
            with autocast(device, precision):
                acts = transcoders.encode(x, layer).acts.float()  # [B, T, F]
            acts[:, :skip_first] = 0.0
            _merge(best_acts[layer], best_index[layer], acts.reshape(B * T, F).cpu(), offset=seen, k=k)
        rows.append(ids.cpu())
        seen += B * T
        bar.update(B * T)
    bar.close()
    if not rows:
        raise ValueError("the corpus served no token rows. Fix: use a corpus with at least one row of seq_len tokens.")
    stream = torch.cat(rows)  # [n_rows, seq_len]
    top_tokens, contexts = _contexts(stream, best_index, best_acts, before, after)
    labels = _label_texts(top_tokens, best_acts, model.tokenizer, n_label_tokens)
    info = {"model": model.name, "fingerprint": fingerprint(transcoders), "n_tokens": seen, "seq_len": seq_len,
            "k": k, "corpus": repr(corpus), "split": split, "seed": seed,
            "seconds": round(time.perf_counter() - t0, 1)}
    log.info("feature labels from %d tokens in %.1fs", seen, info["seconds"])
    return FeatureLabels(best_acts.numpy().astype(np.float32), top_tokens, contexts, labels, before, info)


def _merge(acts: Tensor, index: Tensor, new: Tensor, *, offset: int, k: int) -> None:
    """Fold ``new [N, F]`` activations into the running top-k ``acts, index [F, k]`` (in place)."""
    kk = min(k, new.shape[0])
    vals, idx = new.topk(kk, dim=0)  # [kk, F]
    all_vals = torch.cat([acts, vals.T], dim=1)
    all_idx = torch.cat([index, idx.T + offset], dim=1)
    top, order = all_vals.topk(k, dim=1)
    acts.copy_(top)
    index.copy_(all_idx.gather(1, order))


def _contexts(stream: Tensor, index: Tensor, acts: Tensor, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """The firing token ``[L, F, k]`` and its context ``[L, F, k, before + 1 + after]`` (-1 outside the row)."""
    n_rows, T = stream.shape
    valid = (index >= 0) & (acts > 0)
    flat = index.clamp(min=0)
    row, col = flat // T, flat % T
    offsets = torch.arange(-before, after + 1)
    cols = col[..., None] + offsets  # [L, F, k, W]
    inside = (cols >= 0) & (cols < T) & valid[..., None]
    ctx = stream[row[..., None].expand_as(cols), cols.clamp(0, T - 1)]
    ctx = torch.where(inside, ctx, torch.full_like(ctx, -1))
    tokens = torch.where(valid, stream[row, col], torch.full_like(row, -1))
    return tokens.numpy().astype(np.int32), ctx.numpy().astype(np.int32)


def _label_texts(tokens: np.ndarray, acts: Tensor, tokenizer: Any, n: int) -> list[list[str]]:
    """``[L][F]``: up to ``n`` distinct top tokens of each feature, strongest first, joined by " · "."""
    vocab = np.unique(tokens[tokens >= 0])
    text = {int(t): show_token(tokenizer.decode([int(t)])) for t in vocab}
    out = []
    for layer_tokens in tokens:
        row = []
        for feature_tokens in layer_tokens:
            row.append(" · ".join(_distinct((text[int(t)] for t in feature_tokens if t >= 0), n)))
        out.append(row)
    return out


def _distinct(items: Iterable[str], n: int) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
            if len(seen) == n:
                break
    return seen


def labels_dir(model: Model, transcoders_spec: str | Path | None = None) -> Path:
    """The directory the labels of a set live in, for a set named as ``load_transcoders(model, spec)``
    takes it: the set's own directory when circuit-engine wrote it (a preset, or ``transcoders train
    --out``); otherwise (an ``hf://`` set in the read-only hub cache, or a folder of someone else's,
    which we never write into) a directory of its own under ``cache_dir("labels")``."""
    from transcoders.cache import cache_dir
    from transcoders.sets import PRESETS, default_preset, preset_dir

    if transcoders_spec is None:
        preset = default_preset(model.name)
        if preset is None:
            raise ValueError(f"there is no default transcoder set for {model.name!r}, so no default place for its "
                             "labels. Fix: name the set (a preset, a directory or an hf:// address).")
        transcoders_spec = preset.name
    spec = str(transcoders_spec)
    if spec.startswith("hf://"):
        return cache_dir("labels", re.sub(r"[^A-Za-z0-9._-]+", "-", spec.removeprefix("hf://")).strip("-"))
    # A preset built by an older version has no marker either: its labels go to the cache too.
    path = preset_dir(spec) if spec in PRESETS else Path(spec).expanduser()
    if (path / MARKER).is_file():
        return path
    where = path.resolve()
    return cache_dir("labels", "local-" + re.sub(r"[^A-Za-z0-9._-]+", "-", where.name).strip("-") + "-"
                     + hashlib.sha256(str(where).encode()).hexdigest()[:10])
