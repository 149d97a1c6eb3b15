"""bf16 autocast only where the hardware measurably runs it faster; float32 everywhere else.

bf16 is not fast by itself. A CPU with AVX-512 BF16 or AMX units runs a bf16 matmul several
times faster than fp32, but on an AVX2 CPU (most desktops and laptops, AMD Zen 2/3) torch
emulates it at about 1/50 of the fp32 speed: a 10-minute training run becomes four hours.
So ``"auto"`` checks the CPU's capability and then times a small probe once per process;
CUDA cards report their bf16 support themselves.

Every entry point that can run in bf16 takes ``precision``:

- ``"auto"`` (default where bf16 is offered): bf16 iff ``bf16_is_fast(device)``;
- ``"bf16"``: always (a user who knows better, or a test);
- ``"fp32"``: never; the model computes in its own dtype.

``CIRCUITS_PRECISION=bf16|fp32`` decides every ``"auto"`` in the process, and
``CIRCUITS_CPU_CAPABILITY=AVX2`` makes the check believe the CPU has no bf16 units (what a
test or a benchmark uses to take the path of a machine it is not on).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import statistics
import time
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
PRECISION_ENV = "CIRCUITS_PRECISION"
CAPABILITY_ENV = "CIRCUITS_CPU_CAPABILITY"
# bf16 must beat fp32 by this much on the probe: a tie is not worth the lost precision.
MIN_SPEEDUP = 1.3
PROBE_ROUNDS = 9  # rounds of the probe, two matmuls of a few ms each


def check_precision(precision: str | bool | None) -> Precision:
    """``precision`` as one of ``PRECISIONS``; a bool is the old ``autocast`` flag (True: ``"auto"``)."""
    if precision is None or precision is True:
        return "auto"
    if precision is False:
        return "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}. "
                         "Fix: pass 'auto' (bf16 only where the hardware runs it faster), 'bf16' or 'fp32'.")
    return precision  # type: ignore[return-value]


def cpu_capability() -> str:
    """The CPU's vector capability as torch dispatches on it (``AVX512``, ``AVX2``, ``DEFAULT``, ...).

    ``CIRCUITS_CPU_CAPABILITY`` overrides it, to simulate another machine.
    """
    return os.environ.get(CAPABILITY_ENV) or torch.backends.cpu.get_cpu_capability()


def cpu_has_bf16_units() -> bool | None:
    """Whether the CPU has bf16 matmul units (AVX-512 BF16 or AMX); None where we cannot tell (not x86)."""
    if os.environ.get(CAPABILITY_ENV):
        return "BF16" in os.environ[CAPABILITY_ENV].upper() or "AMX" in os.environ[CAPABILITY_ENV].upper()
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(p is None for p in probes):  # an older torch: read the flags ourselves
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return None
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return any(bool(p()) for p in probes if p is not None)


@functools.cache
def _probe_speedup() -> float:
    """How many times faster a bf16-autocast matmul runs than an fp32 one on this CPU (once per process)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 1024, generator=g), torch.randn(1024, 1024, generator=g)

    def once(bf16: bool) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t0 = time.perf_counter()
            a @ b
            return time.perf_counter() - t0

    once(False), once(True)  # warm-up: first calls pay for kernel selection
    # The ratio of two matmuls timed back to back, median of several rounds: a neighbour that starts or
    # stops mid-probe corrupts the one round it falls in, where three fp32 timings then three bf16 ones
    # blamed it on one precision (a neighbour starting between them read as bf16 at a third its speed).
    return statistics.median(once(False) / once(True) for _ in range(PROBE_ROUNDS))


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 autocast runs faster than fp32 on ``device`` (measured on a CPU, reported on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no emulation to exclude
            return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    units = cpu_has_bf16_units()
    if units is False:  # emulated bf16: about 50x slower, no probe needed to know
        return False
    return _probe_speedup() >= MIN_SPEEDUP


def use_bf16(device: torch.device | str, precision: str | bool | None = "auto") -> bool:
    """The decision every bf16-capable path makes: ``precision`` resolved on ``device``."""
    precision = check_precision(precision)
    if precision == "auto":
        forced = os.environ.get(PRECISION_ENV, "").strip().lower()
        if forced:
            precision = check_precision(forced)
    if precision == "auto":
        return bf16_is_fast(device)
    return precision == "bf16"


def describe(device: torch.device | str = "cpu") -> str:
    """One line for benchmark headers: the CPU capability and what ``"auto"`` picks here."""
    device = torch.device(device)
    where = f"CPU capability {cpu_capability()}" if device.type == "cpu" else device.type
    return f"{where}; precision auto -> {'bf16' if use_bf16(device) else 'fp32'}"


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str | bool | None = "auto") -> Iterator[None]:
    """``torch.autocast(device, bfloat16)`` when ``use_bf16(device, precision)``; a no-op otherwise."""
    device = torch.device(device)
    if use_bf16(device, precision):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
