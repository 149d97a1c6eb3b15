"""keep_freed_memory: on glibc it takes effect once; a user's own malloc settings are left alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CHECK = "from transcoders.allocator import keep_freed_memory as k; print(k(), k())"


def _run(**env: str) -> str:
    clean = {key: v for key, v in os.environ.items() if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env={**clean, **env}, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's; elsewhere keep_freed_memory does nothing and says so")
def test_it_applies_on_glibc_and_yields_to_the_users_settings() -> None:
    assert _run() == "True True"
    assert _run(MALLOC_MMAP_THRESHOLD_="65536") == "False False"
    assert _run(MALLOC_ARENA_MAX="2") == "False False"
    assert _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1") == "False False"
