"""QK attributions: why a head attends where it does, as pairs of sources.

With the replacement model's norms frozen, a head's query at position q and key at position k are
affine in the sources (features, errors, token embeddings) through the same frozen linear map as
every edge: ``query = sum_s Q_s + Q_bias`` and ``key = sum_s K_s + K_bias``, each ``[d_head]``. Rotary
embeddings (Llama, Qwen, Gemma) rotate each position by a fixed matrix and per-head query/key norms
(Qwen3, Gemma-3) are frozen like every other norm, so both stay linear, and the pre-softmax score is
bilinear:

    score = scaling * query · key = sum over (query source i, key source j) of  scaling * Q_i · K_j

with ``"bias"`` one more source on each side (everything no source carries: projection and norm
biases, attention and MLP constants). The pair terms add up to the score exactly. Gemma-2's
attention-logit soft-capping, ``cap * tanh(score / cap)``, comes after: the pairs explain the score
before it, and ``QKAttribution.softcapped`` gives the capped value.

Each side's total per source (``marginals``) is one target of the linear map, so it also splits over
the attention heads its paths crossed last (``circuits.attribution.heads``): a key that holds the
previous token because a previous-token head wrote it there says so (``side_loadings``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import networkx as nx
import numpy as np
import torch
from torch import Tensor, nn

from circuits.attribution.attribute import Attributor, Sources, Targets, build_sources
from circuits.attribution.checks import check_transcoders, default_transcoders
from circuits.attribution.heads import target_loadings
from circuits.attribution.residual_map import ResidualMap, build_residual_map, linear_weight
from circuits.hooks import hooked, on_input, on_output
from circuits.models.adapter import Model
from circuits.models.loading import load_model, resolve_device, resolve_dtype
from circuits.replacement import FrozenNorm, as_compute, freeze, replace_mlps
from circuits.replacement.freeze import fit_norm
from circuits.replacement.slots import early_errors
from graphs.heads import DIRECT, OTHER, head_name, parse_head, strongest_attention_edge
from transcoders.positions import FEATURE_START

BIAS = "bias"


@dataclass
class QKAttribution:
    """One head's pre-softmax score at (query, key), split into query-side × key-side source pairs."""

    layer: int
    head: int
    query: int
    """The query position."""
    key: int
    """The key position."""
    score: float
    """``scaling * query · key``, before any soft-capping: what the pairs add up to."""
    softcapped: float | None
    """Gemma-2's ``cap * tanh(score / cap)`` (None without soft-capping)."""
    pattern: float
    """The frozen attention weight from ``query`` to ``key``."""
    scaling: float
    query_sources: list[str]
    """``[n_q]`` node ids (as in the graph) with a nonzero part of the query, then ``"bias"``."""
    key_sources: list[str]
    """``[n_k]`` likewise for the key."""
    q: np.ndarray
    """``[n_q, d_head]`` each query source's part of the (rotated, normed) query."""
    k: np.ndarray
    """``[n_k, d_head]`` each key source's part of the key."""
    projected: tuple[np.ndarray, np.ndarray] | None = None
    """``([d_head], [d_head])`` the Q and K projections' outputs for this head as the sources add them up,
    before per-head norms and rotary embeddings (for checking against the model)."""
    query_loadings: dict[str, dict[str, float]] | None = None
    """Per query source with a nonzero marginal: its marginal split as ``{head or "direct": value}``."""
    key_loadings: dict[str, dict[str, float]] | None = None

    @property
    def terms(self) -> np.ndarray:
        """``[n_q, n_k]`` the pair terms ``scaling * q_i · k_j``; they add up to ``score``."""
        return self.scaling * (self.q @ self.k.T)

    def marginals(self, side: Literal["query", "key"]) -> dict[str, float]:
        """Each source's total on one side (summed over the other side's sources), largest |value| first."""
        terms = self.terms
        values, names = (terms.sum(1), self.query_sources) if side == "query" else (terms.sum(0), self.key_sources)
        order = np.argsort(-np.abs(values), kind="stable")
        return {names[i]: float(values[i]) for i in order}

    def pairs(self, top: int = 10) -> list[tuple[str, str, float]]:
        """The ``top`` pairs ``(query source, key source, term)`` of largest |term|."""
        terms = self.terms
        size = np.abs(terms).ravel()
        if top < size.size:
            # Every entry at least as large as the top-th, ties included, then the same stable order as
            # a full argsort: a full sort of n_q * n_k terms (10^8 with every active feature) took 40 s.
            cut = np.partition(size, size.size - top)[size.size - top]
            candidates = np.flatnonzero(size >= cut)
            flat = candidates[np.argsort(-size[candidates], kind="stable")[:top]]
        else:
            flat = np.argsort(-size, kind="stable")
        i, j = np.unravel_index(flat, terms.shape)
        return [(self.query_sources[a], self.key_sources[b], float(terms[a, b])) for a, b in zip(i, j)]

    def table(self, top: int = 10) -> str:
        """The strongest pairs as a markdown table, with the score and how much of it they hold."""
        rows = self.pairs(top)
        lines = [f"L{self.layer}.H{self.head}, query {self.query} → key {self.key}: score {self.score:.4g}"
                 + (f" (soft-capped {self.softcapped:.4g})" if self.softcapped is not None else "")
                 + f", attention {self.pattern:.3f}; top {len(rows)} pairs hold "
                 f"{sum(t for _, _, t in rows):.4g}", "", "| query source | key source | term |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {t:.4g} |" for a, b, t in rows]
        return "\n".join(lines)

    def to_networkx(self, top: int = 10) -> nx.DiGraph:
        """The ``top`` pairs as a small graph: query-side sources → key-side sources (``weight`` = the pair's
        term), nodes carrying ``side`` and ``label``; ``graph["title"]`` names the head and positions. Draw
        it with ``graphs.draw.render_qk`` or any networkx drawer."""
        g = nx.DiGraph(title=f"L{self.layer}.H{self.head} q{self.query}→k{self.key}", score=self.score)
        q_marg, k_marg = self.marginals("query"), self.marginals("key")
        for a, b, t in self.pairs(top):
            qa, kb = f"q:{a}", f"k:{b}"
            g.add_node(qa, side="query", source=a, label=f"{a} (query)", marginal=q_marg[a], **_placement(a))
            g.add_node(kb, side="key", source=b, label=f"{b} (key)", marginal=k_marg[b], **_placement(b))
            g.add_edge(qa, kb, weight=t)
        return g


def _placement(source: str) -> dict[str, object]:
    """``kind``, ``layer`` and ``position`` of a source id, which ``graphs.draw`` lays nodes out by."""
    if source == BIAS:
        return {"kind": "error"}
    at = int(source.rsplit("@", 1)[1])
    if source.startswith("F"):
        return {"kind": "feature", "layer": int(source[1:].split(".")[0]), "position": at}
    if source.startswith("E"):
        return {"kind": "error", "layer": int(source[1:].split("@")[0]), "position": at}
    return {"kind": "token", "position": at}


def qk_attribution(prompt: str | Sequence[int] | Tensor, model: Model | None = None,
                   transcoders: nn.Module | None = None, *, layer: int, head: int, query: int = -1, key: int,
                   loadings: bool = True, device: str | torch.device | None = None,
                   dtype: str | torch.dtype | None = None, feature_start: int = FEATURE_START,
                   prepend_bos: bool = False, early_mlp: Literal["constant", "error"] = "constant",
                   batch_size: int = 64) -> QKAttribution:
    """Head ``head`` of ``layer``: its score from position ``query`` to ``key`` (negative: from the end) in the
    replacement model of ``prompt`` (module docstring). The options mean what they mean for ``trace``;
    ``loadings`` also splits each side's marginals over the heads that carried them (about
    ``layer * n_heads`` rows per side)."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    model = load_model() if model is None else model
    transcoders = default_transcoders(model) if transcoders is None else transcoders
    check_transcoders(model, transcoders)
    L, H, Hkv = model.n_layers, model.n_heads, model.n_kv_heads
    if not 0 <= layer < L or not 0 <= head < H:
        raise ValueError(f"no head L{layer}.H{head}: {model.name} has {L} layers of {H} heads. Fix: pick one of them")
    ids = model.tokenize(prompt, prepend_bos=prepend_bos)
    P = ids.shape[-1]
    q_pos, k_pos = query % P if query < 0 else query, key % P if key < 0 else key
    if not 0 <= k_pos <= q_pos < P:
        raise ValueError(f"query {query} and key {key} must be positions of the {P}-token prompt with the key at or "
                         "before the query (attention is causal). Fix: pass positions in range")
    frozen = freeze(model, ids, input_site=transcoders.cfg.input_site, output_site=transcoders.cfg.output_site)
    head_state = _head_state(model, ids, layer)
    tc = as_compute(transcoders, dev, dt)
    mlps = replace_mlps(tc, frozen, device=dev, dtype=dt, feature_start=feature_start)
    f_layer, f_pos, f_feat = mlps.mask.permute(1, 0, 2).nonzero(as_tuple=True)
    acts = mlps.acts[f_pos, f_layer, f_feat]
    errors, held = early_errors(mlps.errors, feature_start if early_mlp == "constant" else 0)
    rmap = build_residual_map(model, frozen, tc, device=dev, dtype=dt)
    const = rmap.mlp_const if held is None else rmap.mlp_const[:, None] + held
    sources = build_sources(tc, f_layer, f_pos, f_feat, acts, errors, frozen.embed.to(dev, dt), const)
    names = _node_names(f_layer, f_pos, f_feat, L, P)
    ln = frozen.norms["ln_attn"][layer].to(dev, dt)
    projected: dict[str, np.ndarray] = {}  # each side's projection output as the sources add it up

    def side(which: str, pos: int, h: int) -> tuple[Tensor, Tensor, Targets]:
        """``(parts [n_slots, dh], bias [dh], component targets)`` of the (normed, rotated) query or key."""
        w, b = _projection(model, layer, which, h)
        w, b = w.to(dev, dt), None if b is None else b.to(dev, dt)
        folded = w * ln.weight
        if ln.centered:
            folded = folded - folded.mean(-1, keepdim=True)
        dh = w.shape[0]
        c = (w @ ln.bias if ln.bias is not None else w.new_zeros(dh)) + (b if b is not None else 0.0)
        targets = Targets(torch.full((dh,), layer, device=dev), torch.full((dh,), pos, device=dev),
                          folded * ln.scale[pos], c, below=True)
        edges, bias = Attributor(rmap, sources).rows(targets)                          # [dh, n_slots], [dh]
        transform = head_state.transform(which, pos, h, dev, dt)                      # [dh, dh]
        projected[which] = (edges.sum(1) + bias).double().cpu().numpy()
        return edges.T @ transform.T, transform @ bias, targets

    G = H // Hkv
    q_parts, q_bias, q_targets = side("q", q_pos, head)
    k_parts, k_bias, k_targets = side("k", k_pos, head // G)
    scaling = head_state.scaling
    q_total, k_total = q_parts.sum(0) + q_bias, k_parts.sum(0) + k_bias
    score = float(scaling * (q_total @ k_total))
    col_of = sources.col_of.to(dev)

    def keep(parts: Tensor, bias: Tensor) -> tuple[list[str], np.ndarray]:
        nz = torch.nonzero((parts != 0).any(1) & (col_of >= 0)).squeeze(1)
        kept = [names[int(c)] for c in col_of[nz]] + [BIAS]
        return kept, torch.cat([parts[nz], bias[None]]).double().cpu().numpy()

    q_names, q_arr = keep(q_parts, q_bias)
    k_names, k_arr = keep(k_parts, k_bias)
    cap = head_state.softcap
    out = QKAttribution(layer, head, q_pos, k_pos, score, None if cap is None else float(cap * math.tanh(score / cap)),
                        float(frozen.patterns[layer, head, q_pos, k_pos]), float(scaling), query_sources=q_names,
                        key_sources=k_names, q=q_arr, k=k_arr, projected=(projected["q"], projected["k"]))
    if loadings:
        # The marginal of one side is the other side's vector read through this side's components.
        q_read = scaling * (head_state.transform("q", q_pos, head, dev, dt).T @ k_total)    # [dh]
        k_read = scaling * (head_state.transform("k", k_pos, head // G, dev, dt).T @ q_total)
        out.query_loadings = _marginal_loadings(rmap, sources, q_targets, q_read, names, batch_size)
        out.key_loadings = _marginal_loadings(rmap, sources, k_targets, k_read, names, batch_size)
    return out


def strongest_attention_qk(graph, model: Model, transcoders: nn.Module, **kwargs) -> QKAttribution | None:
    """The QK attribution behind ``graph``'s strongest attention edge into its most likely logit
    (``graphs.heads.strongest_attention_edge``): that edge's strongest head, from the last position to the
    source's position; None without head loadings. ``kwargs`` go to ``qk_attribution`` (``loadings=False``
    unless given: the summary lists pairs only)."""
    edge = strongest_attention_edge(graph)
    if edge is None:
        return None
    source, _, entry = edge
    name = next(n for n in entry if n not in (OTHER, DIRECT))
    layer, head = parse_head(name)
    key = int(graph.nodes["position"][graph.node_ids.index(source)])
    meta = graph.metadata
    kwargs = {"loadings": False, "dtype": meta.get("dtype"), "feature_start": meta.get("feature_start", FEATURE_START),
              "early_mlp": meta.get("early_mlp", "constant")} | kwargs
    return qk_attribution(torch.as_tensor(graph.tokens), model, transcoders, layer=layer, head=head,
                          query=graph.n_pos - 1, key=key, **kwargs)


def _marginal_loadings(rmap: ResidualMap, sources: Sources, components: Targets, read: Tensor, names: list[str],
                       batch_size: int) -> dict[str, dict[str, float]]:
    """Each source's marginal on one side split over heads: ``{source: {"L0.H2": v, ..., "direct": v}}``."""
    target = Targets(components.layer[:1], components.pos[:1], (read @ components.vec)[None],
                     (read @ components.const)[None], below=True)
    tl = target_loadings(rmap, sources, target, 0, batch_size)
    H = rmap.n_heads
    out = {}
    for c, vals, d in zip(tl.cols, tl.values, tl.direct):
        order = np.argsort(-np.abs(vals), kind="stable")
        entry = {head_name(int(j), H): float(vals[j]) for j in order if vals[j] != 0}
        entry["direct"] = float(d)
        out[names[int(c)]] = entry
    return out


def _node_names(layer: Tensor, pos: Tensor, feat: Tensor, L: int, P: int) -> list[str]:
    """Node ids in the trace's numbering before renumbering: active features, errors, tokens."""
    feats = [f"F{l}.{f}@{p}" for l, p, f in zip(layer.tolist(), pos.tolist(), feat.tolist())]
    return feats + [f"E{l}@{p}" for l in range(L) for p in range(P)] + [f"T@{p}" for p in range(P)]


def _projection(model: Model, layer: int, which: str, head: int) -> tuple[Tensor, Tensor | None]:
    """Head ``head``'s rows of the Q (``which="q"``) or K (kv head) projection: ``[dh, D]`` and ``[dh]``."""
    spec, dh = model.spec, model.dims.d_head
    if spec.v_chunk is not None:  # one module computes Q, K and V (GPT-2's c_attn): chunks 0 and 1
        w, b = linear_weight(model.module(spec.v_proj, layer))
        size = w.shape[0] // spec.v_chunk[1]
        i = 0 if which == "q" else 1
        w, b = w[i * size:(i + 1) * size], None if b is None else b[i * size:(i + 1) * size]
    else:
        w, b = linear_weight(model.module(spec.q_proj if which == "q" else spec.k_proj, layer))
    rows = slice(head * dh, (head + 1) * dh)
    return w[rows], None if b is None else b[rows]


@dataclass
class _HeadState:
    """What a layer's attention does to a query or key after its projection, frozen for a prompt: per-head
    norm scales (Qwen3, Gemma-3), rotary cos/sin, the score's scaling and soft-cap."""

    scaling: float
    softcap: float | None
    cos: Tensor | None
    """``[P, dh]``."""
    sin: Tensor | None
    norms: dict[str, FrozenNorm]
    """``"q"``/``"k"``: a frozen norm over ``[P * n_heads(_kv)]`` rows of ``dh``."""
    n_rows: dict[str, int]
    d_head: int

    def transform(self, which: str, pos: int, head: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``[dh, dh]`` the linear map from the projection's output (one head) to the query or key scored."""
        norm = self.norms.get(which)
        m = torch.eye(self.d_head, device=device, dtype=dtype)
        if norm is not None:
            s = norm.scale.view(-1, self.n_rows[which])[pos, head]
            m = torch.diag(norm.weight * s).to(device, dtype)
        if self.cos is not None:
            cos, sin = self.cos[pos].to(device, dtype), self.sin[pos].to(device, dtype)
            eye = torch.eye(cos.shape[0], device=device, dtype=dtype)
            rot = eye * cos[None, :] + _rotate_half(eye) * sin[None, :]               # row i: R e_i
            m = rot.T @ m
        return m


def _rotate_half(x: Tensor) -> Tensor:
    """Rotary embeddings' pairing of dimensions (``transformers``' ``rotate_half``)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


@torch.no_grad()
def _head_state(model: Model, ids: Tensor, layer: int) -> _HeadState:
    """One forward pass reading ``layer``'s attention call: rotary cos/sin, per-head query/key norms."""
    attn = model.module(model.spec.location("attn_pattern", layer).path)
    seen: dict[str, Tensor] = {}
    handles = [on_input(attn, lambda m, args, kwargs: seen.update(rope=kwargs.get("position_embeddings")))]
    qk_norms = {}
    for which in ("q", "k"):
        path = model.spec.extra.get(f"{which}_norm")
        module = _optional_module(model, path, layer)
        if module is not None:
            qk_norms[which] = module
            handles.append(on_output(module, lambda m, args, out, which=which: seen.update(
                {f"{which}:in": args[0].detach(), f"{which}:out": out.detach()})))
            proj = model.module(model.spec.q_proj if which == "q" else model.spec.k_proj, layer)
            handles.append(on_output(proj, lambda m, args, out, which=which: seen.update({which: out.detach()})))
    with hooked(handles):
        model.hf(ids)
    rope = seen.get("rope")
    cos = sin = None
    if rope is not None:
        cos, sin = (t.detach()[0].double() for t in rope)
    norms, n_rows = {}, {}
    for which, module in qk_norms.items():
        x, y = seen[f"{which}:in"][0], seen[f"{which}:out"][0]                # [P, n, dh] or [n, P, dh]
        P, dh = ids.shape[-1], x.shape[-1]
        by_position = seen[which][0].view(P, -1, dh)                                     # [P, n, dh]
        if x.shape != by_position.shape or not torch.equal(x, by_position):
            x, y = x.transpose(0, 1), y.transpose(0, 1)        # Gemma-3 normalises after moving heads first
        n_rows[which] = x.shape[1]
        norms[which] = fit_norm(module, model.spec.norm_kind, x.reshape(-1, x.shape[-1]),
                                y.reshape(-1, y.shape[-1]), f"{which}_norm of layer {layer}")
    return _HeadState(float(attn.scaling), getattr(attn, "attn_logit_softcapping", None), cos, sin, norms, n_rows,
                      model.dims.d_head)


def _optional_module(model: Model, path: str | None, layer: int) -> nn.Module | None:
    if not path:
        return None
    try:
        return model.module(path, layer)
    except AttributeError:
        return None
