"""Model adapters: loading, the architecture map, and the wrapper every other module reads through."""

from circuits.models.adapter import Dims, Model, PromptError
from circuits.models.arch import ARCHITECTURES, SITE_ORDER, ArchSpec, UnsupportedArchitectureError, spec_for
from circuits.models.loading import DeviceError, ModelLoadError, ModelNotFoundError, hub_reachable, load_model
from circuits.models.tiny import TINY_FAMILIES, tiny_model

__all__ = [
    "ARCHITECTURES", "SITE_ORDER", "TINY_FAMILIES", "ArchSpec", "DeviceError", "Dims", "Model", "ModelLoadError",
    "ModelNotFoundError", "PromptError", "UnsupportedArchitectureError", "hub_reachable", "load_model", "spec_for",
    "tiny_model",
]
