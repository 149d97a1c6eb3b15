"""Our model wrapper: an nnsight ``LanguageModel`` plus its architecture map.

Everything downstream (harvesting, replacement, attribution, patching) reads the
model through this class, by site name, so no other module needs to know where a
tensor lives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
# nnsight 0.8 deprecated `LanguageModel` as an alias of this class pinned to text generation;
# we build on the class itself, with the same task, to avoid the warning.
from nnsight.modeling.transformers import TransformersModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from circuits.hooks import hooked, read_hook
from circuits.models.arch import SITE_ORDER, ArchSpec, Location, spec_for
from transcoders.harvest import LOGITS


class PromptError(ValueError):
    """A prompt the model cannot run: empty, or longer than its context."""


SiteKey = tuple[str, int]  # (site name, layer)


@dataclass(frozen=True)
class Dims:
    """The shape of a transformer, read from its config through the architecture map."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int


class Model:
    """A causal LM wrapped for circuit work.

    Attributes:
        lm: the nnsight model (``TransformersModel``, formerly ``LanguageModel``); ``lm.trace(...)`` works as usual.
        hf: the underlying transformers model.
        spec: its entry in the architecture map.
        dims: n_layers, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab, n_ctx.
        name: what it was loaded as.
    """

    def __init__(self, hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.spec: ArchSpec = spec_for(hf.config.model_type)
        self.dims = _dims(hf, self.spec)
        self.lm = TransformersModel(hf, tokenizer=tokenizer, task="text-generation")

    # --- shape -------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return self.dims.n_layers

    @property
    def d_model(self) -> int:
        return self.dims.d_model

    @property
    def n_heads(self) -> int:
        return self.dims.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.dims.n_kv_heads

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def __repr__(self) -> str:
        d = self.dims
        return (f"Model({self.name!r}, family={self.spec.family}, layers={d.n_layers}, d_model={d.d_model}, "
                f"heads={d.n_heads}/{d.n_kv_heads}, device={self.device}, dtype={self.dtype})")

    # --- where things live -------------------------------------------------------------

    def module(self, site_or_path: str, layer: int | None = None) -> torch.nn.Module:
        """The torch module holding ``site`` at ``layer`` (or a map path such as ``spec.embed``)."""
        path = self._path(site_or_path, layer)
        return self.hf.get_submodule(path)

    def envoy(self, site_or_path: str, layer: int | None = None):  # -> nnsight Envoy
        """The nnsight envoy of the module holding ``site`` at ``layer``."""
        return self.lm.get(self._path(site_or_path, layer))

    def _path(self, site_or_path: str, layer: int | None) -> str:
        if site_or_path in self.spec.sites:
            return self.spec.location(site_or_path, layer).path
        return site_or_path.format(layer=layer) if "{layer}" in site_or_path else site_or_path

    def norm(self, role: str, layer: int | None = None) -> torch.nn.Module:
        """A norm module by role: ``ln_attn``/``ln_mlp`` (and Gemma's ``*_post``) per layer, ``ln_final``."""
        if role == "ln_final":
            return self.hf.get_submodule(self.spec.ln_final)
        if role not in self.spec.norms:
            raise KeyError(f"{self.spec.family} has no norm {role!r}; it has {sorted(self.spec.norms)} and ln_final")
        return self.hf.get_submodule(self.spec.norms[role].format(layer=layer))

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding matrix [d_vocab, d_model] (tied to the embedding in SmolLM2 and Gemma)."""
        return self.hf.get_submodule(self.spec.unembed).weight

    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding matrix [d_vocab, d_model], before any Gemma scaling."""
        return self.hf.get_submodule(self.spec.embed).weight

    # --- running -----------------------------------------------------------------------

    def tokenize(self, prompt: str | Sequence[int] | torch.Tensor, *, prepend_bos: bool = False) -> torch.Tensor:
        """Token ids [1, n_pos] on the model's device, with a BOS where the tokenizer adds one.

        ``prepend_bos``: put the tokenizer's BOS first when the ids do not start with it (circuit-tracer's
        convention: the first position is then a BOS, which carries no features, instead of the
        prompt's first word). Raises PromptError for an empty prompt or one longer than the model's context.
        """
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty: pass some text. Fix: e.g. trace(\"When Mary and John ...\")")
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        else:
            ids = torch.as_tensor(prompt, dtype=torch.long).reshape(1, -1)
            if ids.numel() == 0:
                raise PromptError("the prompt has no tokens. Fix: pass at least one token id, e.g. [1, 2, 3].")
        if prepend_bos:
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if bos is None:
                raise PromptError(f"{self.name}'s tokenizer has no BOS token to prepend. Fix: pass prepend_bos=False, "
                                  "or put a token of your choice first yourself.")
            if int(ids[0, 0]) != bos:
                ids = torch.cat([torch.tensor([[bos]], dtype=ids.dtype), ids.cpu()], dim=1)
        if ids.shape[-1] > self.dims.n_ctx:
            raise PromptError(
                f"the prompt is {ids.shape[-1]} tokens but {self.name} has a context of {self.dims.n_ctx}: "
                f"shorten it. Fix: cut the prompt to at most {self.dims.n_ctx} tokens (keep its end, which the "
                "prediction reads)."
            )
        return ids.to(self.device)

    def record(self, prompt: str | Sequence[int] | torch.Tensor,
               sites: Iterable[SiteKey]) -> tuple[torch.Tensor, dict[SiteKey, torch.Tensor]]:
        """One forward pass that saves the requested (site, layer) tensors.

        Returns ``(logits [n_pos, d_vocab], {(site, layer): tensor without the batch dim})``.
        ``attn_pattern`` needs eager attention, which ``load_model`` selects.
        """
        ids = self.tokenize(prompt)
        # Resolve every location before tracing so a typo fails here, with the valid names.
        located = {key: self.spec.location(*key) for key in set(sites)}
        wanted = sorted(located, key=lambda k: (k[1], SITE_ORDER.index(k[0])))
        saved: dict[SiteKey, object] = {}
        with torch.no_grad(), self.lm.trace(ids):
            for key in wanted:
                saved[key] = self._read(located[key]).save()
            logits = self.lm.output.logits.save()
        out = {key: _unbatch(value) for key, value in saved.items()}
        return logits[0], out

    @torch.no_grad()
    def record_batch(self, ids: torch.Tensor, sites: Iterable[SiteKey], *,
                     stop_early: bool = True) -> dict[SiteKey, torch.Tensor]:
        """One batched forward that saves the requested (site, layer) tensors, for harvesting.

        ``ids``: LongTensor ``[batch, n_pos]``. Returns ``{(site, layer): tensor [batch, n_pos, ...]}``.
        Plain torch hooks rather than an nnsight trace: harvesting runs millions of tokens and
        needs no graph. With ``stop_early`` the forward stops once the last requested tensor
        is seen, so the layers after it and the unembedding (a fifth of SmolLM2's compute)
        are never run. The key ``LOGITS`` (``transcoders.harvest``) asks for the model's logits ``[batch,
        n_pos, d_vocab]`` too (its output, softcapping included), so one forward gives both. Runs under
        whatever autocast context the caller sets.
        """
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.ndim != 2 or ids.numel() == 0:
            raise PromptError(f"record_batch needs token ids [batch, n_pos], got shape {tuple(ids.shape)}: "
                              "reshape them, e.g. ids.reshape(1, -1)")
        if ids.shape[1] > self.dims.n_ctx:
            raise PromptError(f"the batch is {ids.shape[1]} tokens long but {self.name} has a context of "
                              f"{self.dims.n_ctx}: shorten it. Fix: pass at most {self.dims.n_ctx} positions.")
        sites = set(sites)
        located = {key: self.spec.location(*key) for key in sites - {LOGITS}}
        stop_early = stop_early and LOGITS not in sites
        saved: dict[SiteKey, torch.Tensor] = {}

        def capture(key: SiteKey) -> Callable[[torch.Tensor], None]:
            def fn(value: torch.Tensor | None) -> None:
                if value is None:  # attention returns (out, None) unless it runs eagerly
                    raise RuntimeError(f"{self.name} returned no {key[0]} at layer {key[1]}: load it with "
                                       "attn_implementation='eager' (circuits.load_model does)")
                saved[key] = value.detach()
                if stop_early and len(saved) == len(located):
                    raise _StopForward
            return fn

        handles = [read_hook(self.hf.get_submodule(loc.path), loc, capture(key)) for key, loc in located.items()]
        with hooked(handles):
            try:
                out = self.hf(ids.to(self.device))
            except _StopForward:
                pass
            else:
                if LOGITS in sites:
                    saved[LOGITS] = out.logits
        return saved

    def _read(self, loc: Location):
        envoy = self.lm.get(loc.path)
        # nnsight's `.input` is the first positional argument already. Outputs may be tuples:
        # attention returns (out, pattern); decoder layers did in older transformers.
        value = envoy.input if loc.io == "input" else envoy.output
        if isinstance(value, tuple):
            value = value[loc.index or 0]
        return value

    @torch.no_grad()
    def logits(self, prompt: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Next-token logits at every position [n_pos, d_vocab]."""
        return self.hf(self.tokenize(prompt)).logits[0]

    def token_id(self, text: str) -> int:
        """The id of ``text`` as a single token (e.g. ``" Mary"``); raises if it splits."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens for this tokenizer, not one: pick a single-token string")
        return ids[0]

    def top_tokens(self, prompt: str, k: int = 5) -> list[tuple[str, float]]:
        """The k most likely next tokens and their probabilities."""
        probs = self.logits(prompt)[-1].float().softmax(-1)
        top = probs.topk(k)
        return [(self.tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]


class _StopForward(Exception):
    """Raised from a hook to end a harvesting forward once every requested tensor is saved."""


def _unbatch(value: torch.Tensor) -> torch.Tensor:
    return value[0]


def _dims(hf: PreTrainedModel, spec: ArchSpec) -> Dims:
    cfg = hf.config
    n_heads = getattr(cfg, spec.n_heads_attr)
    n_kv = getattr(cfg, spec.n_kv_heads_attr, None) if spec.n_kv_heads_attr else None
    d_model = getattr(cfg, spec.d_model_attr)
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
    n_ctx = next((getattr(cfg, a) for a in spec.n_ctx_attrs if getattr(cfg, a, None)), 2048)
    return Dims(
        n_layers=getattr(cfg, spec.n_layers_attr),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv or n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=cfg.vocab_size,
        n_ctx=n_ctx,
    )
