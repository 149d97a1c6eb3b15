"""circuit-engine: attribution graphs and circuit discovery for language models."""

from circuits.attribution import trace
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
           "tiny_model", "trace"]

# Head-level circuit discovery (the feature-level half lands with trace).
from circuits.discovery import Circuit, discover

__all__ += ["Circuit", "discover"]

# Feature interventions in the replacement model.
from circuits.intervention import InterventionResult, intervene

__all__ += ["InterventionResult", "intervene"]
