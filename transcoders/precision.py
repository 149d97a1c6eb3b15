"""bf16 autocast where the device runs it fast, and nothing anywhere else.

On CPUs with AVX-512 bf16 matmuls run about 4x faster than fp32 (see BENCHMARKS.md);
on CUDA every card since Ampere has them. Both the harvest forward and the
transcoder's training step run under this context; master weights stay fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def bf16_supported(device: torch.device) -> bool:
    """Whether autocast to bf16 is available (and worthwhile) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """``torch.autocast(device, bfloat16)`` when ``enabled`` and supported; a no-op otherwise."""
    if enabled and bf16_supported(device):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
