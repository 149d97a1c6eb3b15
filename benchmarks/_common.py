"""What the benchmark scripts share: process CPU time and peak memory, and each case in a fresh
subprocess, so that one case's peak memory and warm caches do not carry over to the next."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path


def cpu_seconds() -> float:
    """CPU time this process has used, all threads (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux); tracemalloc
    would miss torch's allocations."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(script: str | Path, args: list[str], name: str) -> dict:
    """``python script ARGS`` in a fresh process; returns the JSON object on the last line it prints.
    Progress bars are off; ``OMP_WAIT_POLICY`` is PASSIVE unless set: OpenMP threads that spin
    while a peer is descheduled make every op cost ~20 ms on a shared CPU."""
    env = dict(os.environ, TQDM_DISABLE="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        how = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit code {out.returncode}"
        raise SystemExit(f"case {name} failed ({how}; a kill by signal 9 with no traceback is usually the "
                         "out-of-memory killer)")
    return json.loads(out.stdout.strip().splitlines()[-1])
