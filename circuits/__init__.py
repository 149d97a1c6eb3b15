"""circuit-engine: attribution graphs and circuit discovery for language models."""

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
           "tiny_model"]
