"""Patching heads and MLPs in the original model: edge sets, ablations, metrics, faithfulness."""

from circuits.patching.edge_patcher import Ablation, EdgePatcher, MetricName
from circuits.patching.edges import GradRequest, HeadWeights, PatchOutput, Prefix, patched_forward
from circuits.patching.graph import HeadGraph
from circuits.patching.metrics import MIB_BUDGETS, answer_prob, area_under_curve, faithfulness, kl_to_clean

__all__ = ["MIB_BUDGETS", "Ablation", "EdgePatcher", "GradRequest", "HeadGraph", "HeadWeights", "MetricName",
           "PatchOutput", "Prefix", "answer_prob", "area_under_curve", "faithfulness", "kl_to_clean", "patched_forward"]
