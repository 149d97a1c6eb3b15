"""Patching heads and MLPs in the original model: edge sets, ablations, metrics, faithfulness."""

from circuits.patching.engine import GradRequest, HeadWeights, PatchOutput, Prefix, patched_forward
from circuits.patching.graph import HeadGraph
from circuits.patching.metrics import MIB_BUDGETS, answer_prob, area_under_curve, faithfulness, kl_to_clean
from circuits.patching.patcher import Ablation, MetricName, Patcher

__all__ = ["MIB_BUDGETS", "Ablation", "GradRequest", "HeadGraph", "HeadWeights", "MetricName", "PatchOutput",
           "Patcher", "Prefix", "answer_prob", "area_under_curve", "faithfulness", "kl_to_clean", "patched_forward"]
