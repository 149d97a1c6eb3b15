"""Refuse inputs ``trace`` cannot attribute, with a message that names the fix."""

from __future__ import annotations

from pathlib import PurePath

from torch import nn

from circuits.models.adapter import Model

SUPPORTED_INPUT_SITES = ("mlp_in",)
SUPPORTED_OUTPUT_SITES = ("mlp_resid", "mlp_out")


class TranscoderMismatchError(ValueError):
    """The transcoders do not fit the model (layers, width, or the model they were trained on)."""


class TranscodersMissingError(RuntimeError):
    """No transcoders were passed and no default set can be loaded."""


def check_transcoders(model: Model, transcoders: object) -> None:
    """Raise unless ``transcoders`` is a PLT/CLT set shaped for ``model`` and trained on it."""
    cfg = getattr(transcoders, "cfg", None)
    if not isinstance(transcoders, nn.Module) or cfg is None or not hasattr(transcoders, "decoder_vectors"):
        raise TypeError(
            f"transcoders= must be a transcoders.Transcoder (a PerLayerTranscoder or CrossLayerTranscoder), "
            f"got {type(transcoders).__name__}. Fix: load a set with transcoders.load_transcoders(model) "
            "or build one with transcoders.build_transcoder(cfg)."
        )
    fix = (f"Fix: pass transcoders trained on {model.name} "
           "(transcoders.load_transcoders(model) picks the default set for it).")
    if cfg.n_layers != model.n_layers:
        raise TranscoderMismatchError(
            f"the transcoders have {cfg.n_layers} layers but {model.name} has {model.n_layers}. {fix}")
    if cfg.d_model != model.d_model:
        raise TranscoderMismatchError(
            f"the transcoders read d_model={cfg.d_model} but {model.name} has d_model={model.d_model}. {fix}")
    if cfg.model_name and not same_model(cfg.model_name, model):
        raise TranscoderMismatchError(
            f"the transcoders were trained on {cfg.model_name!r}, not {model.name!r}. {fix} If they were "
            f"trained on this model under another name, set cfg.model_name = {model.name!r}.")
    if cfg.input_site not in SUPPORTED_INPUT_SITES or cfg.output_site not in SUPPORTED_OUTPUT_SITES:
        raise TranscoderMismatchError(
            f"attribution supports transcoders that read {SUPPORTED_INPUT_SITES} and write "
            f"{SUPPORTED_OUTPUT_SITES}; these read {cfg.input_site!r} and write {cfg.output_site!r}. "
            "Fix: train transcoders on the MLP's input and output.")


def same_model(name: str, model: Model) -> bool:
    """Whether ``name`` names ``model``: its load name or its config's source, compared by last
    path component, case-insensitively ("HuggingFaceTB/SmolLM2-135M-Instruct" ~ "smollm2-135m-instruct")."""
    def key(s: str) -> str:
        return PurePath(s.strip().rstrip("/")).name.lower().removesuffix(".gguf")

    known = {model.name, str(getattr(model.hf.config, "_name_or_path", "") or "")}
    return key(name) in {key(k) for k in known if k}


def check_options(max_logits: int, logit_prob: float, max_feature_nodes: int | None, batch_size: int | None) -> None:
    if max_logits < 1:
        raise ValueError(f"max_logits must be at least 1, got {max_logits}")
    if not 0.0 < logit_prob <= 1.0:
        raise ValueError(f"logit_prob must be in (0, 1], got {logit_prob}")
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be None (all active features) or >= 0, got {max_feature_nodes}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be None (automatic) or >= 1, got {batch_size}")


def default_transcoders(model: Model) -> nn.Module:
    """``transcoders.load_transcoders(model)``, or an error saying to pass ``transcoders=``."""
    import transcoders as package

    load = getattr(package, "load_transcoders", None)
    if load is None:
        raise TranscodersMissingError(
            "trace() needs transcoders and this install has no transcoders.load_transcoders to pick a default "
            f"set for {model.name}. Fix: pass transcoders= (a transcoders.Transcoder trained on this model).")
    return load(model)
