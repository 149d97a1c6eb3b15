"""Known circuits from the literature, kept as data (JSON beside this file), and comparisons of a
discovered circuit against them at head and at edge level."""

from circuits.known.compare import KnownCircuit, compare, load, roc_auc

__all__ = ["KnownCircuit", "compare", "load", "roc_auc"]
