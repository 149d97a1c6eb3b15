"""The header every benchmark table carries: which machine, which CPU capability, what load, when.

A figure without its machine is no figure: on an AVX2 CPU bf16 runs about 50 times slower than
fp32, on an AVX-512 BF16 one several times faster, and a busy neighbour halves any wall time.
"""

from __future__ import annotations

import datetime
import os
import platform


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(device: str = "cpu") -> list[str]:
    """``# ...`` lines: date, CPU model and cores, torch's CPU capability and precision choice,
    torch threads, the GPU if one is used, and the load average now."""
    import torch

    from transcoders.precision import describe

    lines = [
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_model()}, {os.cpu_count()} cores, "
        f"{platform.machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"# {describe('cpu')}",
    ]
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        lines.append(f"# GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
                     f"{props.major}.{props.minor}, CUDA {torch.version.cuda}; {describe(device)}")
    lines.append(f"# load average: {os.getloadavg()[0]:.2f} (1 min)")
    return lines


def print_machine(device: str = "cpu") -> None:
    print("\n".join(machine_lines(device)), flush=True)
