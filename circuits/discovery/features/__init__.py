"""Feature-level discovery over the replacement model: transcoder features, errors and token
embeddings, each at a position.

- ``discover``: ``discover_features`` -> ``FeatureCircuit`` (EAP, EAP-IG, ACDC over nodes);
- ``patcher``: ``FeaturePatcher``, node ablation on the one replacement forward, and the node numbering;
- ``scores``: node and edge EAP scores; ``edges``: measured edge effects (path patching);
- ``graph``: the ``FeatureCircuit`` type, its file format and networkx export.
"""

from circuits.discovery.features.discover import discover_features
from circuits.discovery.features.graph import FeatureCircuit, FeatureCircuitFileError, FeatureEdge, FeatureNode
from circuits.discovery.features.patcher import FeaturePatcher, NodeIndex

__all__ = ["FeatureCircuit", "FeatureCircuitFileError", "FeatureEdge", "FeatureNode", "FeaturePatcher", "NodeIndex",
           "discover_features"]
