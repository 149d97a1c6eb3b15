"""Transcoder files on the Hugging Face hub: ``hf://`` addresses, and downloads that say why they failed.

The transport only, below both ``transcoders.io`` (a config's ``transcoders:`` list may name files on
the hub) and ``transcoders.sets`` (which fetches whole sets by address). Every download tries the
local hub cache first, so a set fetched once loads offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from transcoders.cache import hub_reachable
from transcoders.formats.common import TranscoderLoadError


class HubUnavailableError(ConnectionError):
    """An ``hf://`` set was asked for and the Hugging Face hub cannot be reached."""


def parse_hf(uri: str) -> tuple[str, str | None, str | None]:
    """``hf://org/repo[/sub/dir][@rev]`` (or ``?revision=rev``) → ``(repo_id, subfolder, revision)``."""
    parsed = urlparse(uri)
    if parsed.scheme != "hf" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an hf:// address. Fix: write hf://org/repo[/subfolder][@revision].")
    path = parsed.path.lstrip("/")
    revision = parse_qs(parsed.query).get("revision", [None])[0]
    if "@" in path:
        path, revision = path.split("@", 1)
    repo, _, sub = path.partition("/")
    if not repo:
        raise ValueError(f"{uri!r} names no repository. Fix: write hf://org/repo.")
    return f"{parsed.netloc}/{repo}", sub.strip("/") or None, revision


def hub_call(uri: str, fn: Any, *, missing_ok: bool = False, **kwargs: Any) -> str | None:
    """Run a huggingface_hub download, from the local hub cache first, and say clearly when it cannot.
    With ``missing_ok``, a file the repository does not have gives None."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return fn(**kwargs, local_files_only=True)
    except Exception:  # not cached: go to the network below
        pass
    if not hub_reachable():
        raise HubUnavailableError(
            f"cannot load {uri}: the Hugging Face hub is not reachable from here (offline, or HF_HUB_OFFLINE is set) "
            "and the files are not in the local hub cache. Fix: connect to the internet or set HF_ENDPOINT to a "
            "mirror; or download the repository elsewhere and pass its local directory.")
    try:
        return fn(**kwargs)
    except EntryNotFoundError as exc:
        if missing_ok and not isinstance(exc, LocalEntryNotFoundError):
            return None
        raise TranscoderLoadError(f"could not fetch {uri} from the hub: {type(exc).__name__}: {exc}. "
                                  "Fix: check the repository name, revision and your access token.") from exc
    except Exception as exc:
        raise TranscoderLoadError(f"could not fetch {uri} from the hub: {type(exc).__name__}: {exc}. "
                                  "Fix: check the repository name, revision and your access token.") from exc


def hub_file(uri: str, listed_in: Path) -> Path:
    """The file ``hf://org/repo/path/file[@revision]`` that ``listed_in`` names, from the hub cache or downloaded."""
    from huggingface_hub import hf_hub_download

    repo_id, file, rev = parse_hf(uri)
    if not file:
        raise TranscoderLoadError(f"{uri!r} in {listed_in} names no file. Fix: hf://org/repo/path/file.")
    return Path(hub_call(uri, hf_hub_download, repo_id=repo_id, filename=file, revision=rev))
