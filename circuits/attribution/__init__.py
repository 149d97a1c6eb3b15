"""Replacement models and attribution graphs: ``trace(prompt)`` and the pieces it is built from."""

from circuits.attribution.checks import TranscoderMismatchError, TranscodersMissingError
from circuits.attribution.memory import MemoryBudgetError, MemoryPlan, parse_memory
from circuits.attribution.qk import QKAttribution, qk_attribution
from circuits.attribution.targets import Direction, LogitDiff
from circuits.attribution.tracing import trace

# The replacement model that every graph explains lives in circuits.replacement; these names are
# re-exported because attribution is where users look for them.
from circuits.replacement import (
    FreezeError,
    FrozenForward,
    FrozenNorm,
    MlpReplacement,
    ReplacementRun,
    freeze,
    replace_mlps,
    run_replacement,
    salient_logits,
)

__all__ = [
    "Direction", "LogitDiff", "QKAttribution", "qk_attribution",
    "FreezeError", "FrozenForward", "FrozenNorm", "MemoryBudgetError", "MemoryPlan", "MlpReplacement",
    "ReplacementRun", "TranscoderMismatchError", "TranscodersMissingError", "freeze", "parse_memory", "replace_mlps",
    "run_replacement", "salient_logits", "trace",
]
