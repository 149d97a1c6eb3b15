"""Replacement models and attribution graphs: ``trace(prompt)`` and the pieces it is built from."""

from circuits.attribution.checks import TranscoderMismatchError, TranscodersMissingError
from circuits.attribution.freeze import FreezeError, FrozenForward, FrozenNorm, freeze
from circuits.attribution.memory import MemoryBudgetError, MemoryPlan, parse_memory
from circuits.attribution.replacement import (
    MlpReplacement,
    ReplacementRun,
    replace_mlps,
    run_replacement,
)
from circuits.attribution.tracing import salient_logits, trace

__all__ = [
    "FreezeError", "FrozenForward", "FrozenNorm", "MemoryBudgetError", "MemoryPlan", "MlpReplacement",
    "ReplacementRun", "TranscoderMismatchError", "TranscodersMissingError", "freeze", "parse_memory", "replace_mlps",
    "run_replacement", "salient_logits", "trace",
]
