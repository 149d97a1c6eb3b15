"""The replacement model: one package owns it, and every graph, verified edge and feature circuit
explains it.

- ``freeze``: attention patterns and norm scales of a prompt (``FrozenForward``);
- ``slots``: transcoders in the MLP slots, the error terms and the one position policy;
- ``state``: a prompt's clean replacement model (``CleanState``);
- ``edits``: node ids, edit sets, and the ablated value of every node (zero, mean, resample);
- ``forward``: the one forward pass, with the switches ``attention``, ``features`` and ``errors``;
- ``readout``: the salient logits, the de-meaned unembedding, feature pre-activations;
- ``evaluate``: how good a transcoder set is (FVU, L0, CE recovered, KL of the replacement model).
"""

from circuits.replacement.edits import (
    AblationKind,
    AblationValues,
    EditBuilder,
    Edits,
    PatchError,
    ablation_edits,
    ablation_values,
    parse_node,
)
from circuits.replacement.evaluate import Evaluation, evaluate
from circuits.replacement.forward import (
    Attention,
    ErrorMode,
    FeatureMode,
    ReplacementRun,
    Resume,
    ablate,
    forward,
    frozen_attention_hooks,
    run_replacement,
)
from circuits.replacement.freeze import FreezeError, FrozenForward, FrozenNorm, freeze
from circuits.replacement.readout import demeaned_unembedding, feature_pre_acts, salient_logits
from circuits.replacement.slots import MlpReplacement, as_compute, eval_mode, replace_mlps
from circuits.replacement.state import CleanState

__all__ = [
    "AblationKind", "AblationValues", "Attention", "CleanState", "EditBuilder", "Edits", "ErrorMode", "Evaluation",
    "FeatureMode",
    "FreezeError", "FrozenForward", "FrozenNorm", "MlpReplacement", "PatchError", "ReplacementRun", "Resume", "ablate",
    "ablation_edits", "ablation_values", "as_compute", "demeaned_unembedding", "eval_mode", "evaluate",
    "feature_pre_acts",
    "forward", "freeze", "frozen_attention_hooks", "parse_node", "replace_mlps", "run_replacement", "salient_logits",
]
