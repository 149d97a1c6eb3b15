"""Every file the engine writes: atomically, and never over a file a user made.

Two rules, one place:

- **Atomic.** A file is written to a temporary sibling and renamed over its target
  (``os.replace``) only once complete, so a crash, a full disk or Ctrl-C leaves the previous
  file whole and no partial one (``atomic_file``).
- **Owned folders.** A folder the engine fills with files of its choosing (``circuits trace
  --out``, ``transcoders train --out``, a transcoder set's labels) carries a marker,
  ``.circuit-engine``, listing the files it wrote and what identifies each (inode, size, modification
  time). The engine writes into a
  folder only if it is new, empty or marked; it replaces or removes only files the marker lists,
  and only while they still hold what it wrote. A user's own files in the folder are never
  touched; a folder of someone else's is refused with the fix (``write_folder``).

A path the user names for one file (``graph.save("ioi.json")``) is the user's instruction to
write that file, as with ``open(path, "w")``: it is replaced atomically.

JSON is always strict (``dumps``): NaN and infinities are written as null, never as the bare
``NaN`` other readers reject.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

MARKER = ".circuit-engine"
_MARKER_FORMAT = "circuit-engine output folder"


class OutputFolderError(ValueError):
    """An output folder the engine must not (or cannot) write into."""


# --- one file ------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix) to write; it becomes ``path`` on success.

    On any exception, KeyboardInterrupt included, the temporary file is removed and ``path``
    keeps its previous content.
    """
    path = Path(path)
    _check_parent(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
        with _explained(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (numpy's too) replaced by None, recursively."""
    if isinstance(obj, float) or type(obj).__name__ in ("float32", "float64", "float16"):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def nan_if_none(x: float | None) -> float:
    """The reader's half of ``finite_or_none``: null comes back as NaN."""
    return float("nan") if x is None else float(x)


def tagged(x: float) -> float | dict[str, str]:
    """A float for JSON that keeps non-finite values exactly: NaN and infinities as ``{"$float": "nan"}``."""
    return x if math.isfinite(x) else {"$float": repr(x)}


def untagged(v: Any) -> Any:
    return float(v["$float"]) if isinstance(v, dict) and "$float" in v else v


def tag_floats(value: Any) -> Any:
    """``value`` for strict JSON with every float kept exactly (``tagged``); ``untag_floats`` undoes it.

    For files that must round-trip (a graph's metadata); ``dumps`` is for files read by people
    and other tools, where null is the honest "no value".
    """
    if isinstance(value, float):
        return tagged(value)
    if isinstance(value, Mapping):
        return {k: tag_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tag_floats(v) for v in value]
    return value


def untag_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return untagged(value) if "$float" in value else {k: untag_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag_floats(v) for v in value]
    return value


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON: NaN and infinities become null (``json.dumps(..., allow_nan=False)`` never raises on them)."""
    try:  # most objects hold no such value: the C encoder alone, without a Python walk of millions of items first
        return json.dumps(obj, allow_nan=False, **kwargs)
    except (ValueError, TypeError):  # a NaN or infinity, or a numpy float32, which finite_or_none converts
        return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def write_json(path: str | Path, obj: Any, **kwargs: Any) -> Path:
    """``dumps(obj)`` written to ``path`` atomically."""
    return write_text(path, dumps(obj, **kwargs))


# --- a folder of the engine's files ----------------------------------------------------------------


Writer = Callable[[Path], object]
"""Writes one file's content to the path it is given (a temporary file beside the target)."""


def check_output_folder(out: str | Path) -> Path:
    """Raise ``OutputFolderError`` unless the engine may write into ``out``; return it as a Path.

    Call it before expensive work, so a wrong ``--out`` fails in a second, not after the trace.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder. Fix: pass a folder path (a new one is "
                                "created), e.g. the same path without the suffix.")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputFolderError(f"cannot write into {out}: permission denied. Fix: pass a folder you can write "
                                    "to, or change its permissions.")
        if not (out / MARKER).is_file():
            theirs = sorted(p.name for p in out.iterdir())
            if theirs:
                shown = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
                raise OutputFolderError(
                    f"{out} already holds files that circuit-engine did not write ({shown}); it will not write "
                    "among them or replace them. Fix: pass a new or empty folder, e.g. "
                    f"{out / 'circuit-engine'}.")
    else:
        ancestor = _existing_ancestor(out)
        _check_parent(ancestor)
        try:  # permissions say little to root (and nothing about /proc): try making a folder there
            os.rmdir(tempfile.mkdtemp(prefix=".circuit-engine-probe-", dir=ancestor))
        except OSError as exc:
            raise OutputFolderError(f"cannot create the folder {out}: {exc.strerror or exc} in {ancestor}. Fix: "
                                    "choose a path you can write to.") from exc
    return out


def write_folder(out: str | Path, files: Mapping[str, Writer], *, replace_all: bool = True) -> Path:
    """Write ``files`` (name → writer) into the folder ``out``, which the engine owns or creates.

    Every file is first written beside its target; only when all are complete are they renamed
    into place. With ``replace_all`` the files are the folder's whole output: files the engine
    wrote there before and that are not in ``files`` are removed (a stale ``graph.npz`` from an
    earlier ``--full`` run must not sit beside a new graph). Files the engine did not write are
    never touched, and a file it wrote that has since been edited is refused rather than lost.
    """
    out = check_output_folder(out)
    for name in files:
        if Path(name).name != name or name in ("", ".", "..", MARKER):
            raise ValueError(f"bad output file name {name!r}: plain file names only")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create the folder {out}: {exc.strerror or exc}. Fix: choose a path you "
                                "can write to.") from exc
    marker = out / MARKER
    owned: dict[str, list[str]] = _read_marker(marker)
    for name in files:
        target = out / name
        if target.exists() and name not in owned:
            raise OutputFolderError(f"{target} was not written by circuit-engine; it will not replace it. Fix: move "
                                    "that file away, or pass another folder.")
        if target.exists():
            _check_unchanged(target, owned[name])
    stale = [n for n in owned if n not in files and (out / n).exists()] if replace_all else []
    for name in stale:
        _check_unchanged(out / name, owned[name])

    temps: dict[str, Path] = {}
    done = False
    try:
        for name, write in files.items():
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{Path(name).suffix}", dir=out)
            os.close(fd)
            temps[name] = Path(tmp_name)
            os.chmod(temps[name], 0o666 & ~_umask())
            with _explained(out / name):
                write(temps[name])
        new = {name: _digest(tmp) for name, tmp in temps.items()}
        # Before any rename, the marker accepts both the old and the new content of every file, so
        # a kill between the renames below leaves a folder the next run still recognises as ours.
        during = {n: sorted(set(owned.get(n, [])) | ({new[n]} if n in new else set())) for n in {*owned, *new}}
        _write_marker(marker, during)
        for name, tmp in temps.items():
            os.replace(tmp, out / name)
        for name in stale:
            (out / name).unlink(missing_ok=True)
        kept = {} if replace_all else {n: h for n, h in owned.items() if (out / n).exists()}
        _write_marker(marker, {**kept, **{n: [h] for n, h in new.items()}})
        done = True
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if created and not done and not (out / MARKER).exists():
            with contextlib.suppress(OSError):
                out.rmdir()  # the folder this call made, still empty: a failed run leaves no trace
    return out


def owned_files(out: str | Path) -> list[str]:
    """The files the marker of ``out`` says the engine wrote (empty for an unmarked folder)."""
    return sorted(_read_marker(Path(out) / MARKER))


# --- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _explained(target: Path) -> Iterator[None]:
    """A full disk or a read-only file system, said plainly, with the fix (the previous file is intact)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputFolderError(f"no space left on the device while writing {target}; nothing was replaced and "
                                    "no partial file is left. Fix: free some space, or write somewhere else.") from exc
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise OutputFolderError(f"cannot write {target}: {exc.strerror}. Fix: choose a folder you can write "
                                    "to.") from exc
        raise


def _read_marker(marker: Path) -> dict[str, list[str]]:
    if not marker.is_file():
        return {}
    try:
        doc = json.loads(marker.read_text())
        files = doc["files"]
        assert doc["format"] == _MARKER_FORMAT and isinstance(files, dict)
        return {str(k): [str(h) for h in v] for k, v in files.items()}
    except Exception as exc:
        raise OutputFolderError(f"{marker} is unreadable, so circuit-engine cannot tell its files from yours. Fix: "
                                "pass a new folder, or delete the marker once you have moved your files out.") from exc


def _write_marker(marker: Path, files: Mapping[str, list[str]]) -> None:
    doc = {"format": _MARKER_FORMAT, "note": "circuit-engine wrote the files listed here and replaces only them",
           "files": dict(sorted(files.items()))}
    write_text(marker, json.dumps(doc, indent=1) + "\n")


def _check_unchanged(path: Path, hashes: list[str]) -> None:
    if _digest(path) not in hashes:
        raise OutputFolderError(f"{path} has changed since circuit-engine wrote it; it will not replace or remove "
                                "your edit. Fix: move that file away, or pass another folder.")


def _digest(path: Path) -> str:
    """What identifies the file the engine wrote: its inode (a file put in its place has another), size
    and modification time (an edit in place changes them). Cheap even for a checkpoint of gigabytes,
    which is rewritten every few training steps."""
    st = path.stat()
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_parent(parent: Path) -> None:
    """Make ``parent`` (and its parents) exist, or say clearly why it cannot."""
    if parent.exists() and not parent.is_dir():
        raise OutputFolderError(f"{parent} is a file, so nothing can be written inside it. Fix: choose a path "
                                "whose folders are folders.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create the folder {parent}: {exc.strerror or exc}. Fix: choose a "
                                "path you can write to.") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFolderError(f"cannot write into {parent}: permission denied. Fix: choose a folder you can "
                                "write to, or change its permissions.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
