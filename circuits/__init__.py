"""circuit-engine: attribution graphs and circuit discovery for language models."""

from circuits.attribution import Direction, LogitDiff, qk_attribution, trace
from circuits.models import (
    DeviceError,
    Model,
    ModelLoadError,
    ModelNotFoundError,
    PromptError,
    load_model,
    tiny_model,
)

__all__ = ["DeviceError", "Model", "ModelLoadError", "ModelNotFoundError", "PromptError", "load_model",
           "tiny_model", "trace", "Direction", "LogitDiff", "qk_attribution"]

# Circuit discovery: one entry point per kind of circuit, and ``discover`` dispatching to them.
from circuits.discovery import (
    Circuit,
    FeatureCircuit,
    NodeCircuit,
    discover,
    discover_edges,
    discover_features,
    discover_nodes,
)

__all__ += ["Circuit", "FeatureCircuit", "NodeCircuit", "discover", "discover_edges", "discover_features",
            "discover_nodes"]

# Feature interventions in the replacement model.
from circuits.intervention import InterventionResult, intervene

__all__ += ["InterventionResult", "intervene"]
