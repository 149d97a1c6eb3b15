"""Every write is atomic, and the engine replaces only files it wrote (``transcoders.writes``)."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import numpy as np
import pytest

from transcoders.writes import (
    MARKER,
    OutputFolderError,
    atomic_file,
    dumps,
    owned_files,
    write_folder,
    write_json,
    write_text,
)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failure_mid_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = write_text(tmp_path / "graph.json", "previous")
    with pytest.raises(RuntimeError, match="crash"), atomic_file(target) as tmp:
        tmp.write_text("half of a new fi")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["graph.json"]


def test_ctrl_c_mid_write_leaves_no_partial_file(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "new.npz") as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_named_with_the_fix(tmp_path: Path) -> None:
    write_text(tmp_path / "out" / "a.txt", "old")

    def full(p: Path) -> None:
        p.write_text("some bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputFolderError, match="no space left.*Fix: free some space"):
        with atomic_file(tmp_path / "out" / "a.txt") as tmp:
            full(tmp)
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    # The same inside an owned folder: the earlier output stays whole.
    out = write_folder(tmp_path / "run", {"a.txt": lambda p: p.write_text("one"), "b.txt": lambda p: p.write_text("two")})
    before = _files(out)
    with pytest.raises(OutputFolderError, match="no space left"):
        write_folder(out, {"a.txt": lambda p: p.write_text("new"), "b.txt": full})
    assert _files(out) == before


def test_folder_rules(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_folder(out, {"x.txt": lambda p: p.write_text("1"), "y.txt": lambda p: p.write_text("2")})
    assert owned_files(out) == ["x.txt", "y.txt"]
    (out / "mine.txt").write_text("user")
    write_folder(out, {"x.txt": lambda p: p.write_text("3")})  # y.txt was ours and is stale now
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "mine.txt", "x.txt"]
    write_folder(out, {"z.txt": lambda p: p.write_text("4")}, replace_all=False)  # adds beside
    assert owned_files(out) == ["x.txt", "z.txt"]
    with pytest.raises(OutputFolderError, match="mine.txt was not written by circuit-engine"):
        write_folder(out, {"mine.txt": lambda p: p.write_text("overwrite?")})
    assert (out / "mine.txt").read_text() == "user"
    (out / "x.txt").write_text("edited by hand")
    with pytest.raises(OutputFolderError, match="has changed since"):
        write_folder(out, {"z.txt": lambda p: p.write_text("5")})  # would remove the edited x.txt
    assert (out / "x.txt").read_text() == "edited by hand"
    with pytest.raises(ValueError, match="plain file names only"):
        write_folder(out, {"../escape.txt": lambda p: p.write_text("no")})
    empty = tmp_path / "empty"
    empty.mkdir()
    write_folder(empty, {"a": lambda p: p.write_text("ok")})  # an empty folder is fine
    assert (empty / MARKER).is_file()


def test_a_kill_between_renames_leaves_a_folder_the_next_run_accepts(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    out = write_folder(tmp_path / "run", {"a": lambda p: p.write_text("a1"), "b": lambda p: p.write_text("b1")})
    real = os.replace
    calls = []

    def dying(src, dst):  # the second rename of the next run never happens
        calls.append(dst)
        if len(calls) == 3:  # marker, a, then b
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        write_folder(out, {"a": lambda p: p.write_text("a2"), "b": lambda p: p.write_text("b2")})
    monkeypatch.setattr(os, "replace", real)
    assert (out / "a").read_text() == "a2" and (out / "b").read_text() == "b1"
    write_folder(out, {"a": lambda p: p.write_text("a3"), "b": lambda p: p.write_text("b3")})
    assert (out / "a").read_text() == "a3" and (out / "b").read_text() == "b3"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_places_are_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        write_folder(blocker / "sub", {"a": lambda p: p.write_text("x")})
    with pytest.raises(OutputFolderError, match="cannot create the folder|cannot write"):
        write_text("/proc/circuit-engine-test/x.txt", "x")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MARKER).write_text("not json")
    with pytest.raises(OutputFolderError, match="unreadable"):
        write_folder(bad, {"a": lambda p: p.write_text("x")})


def test_json_is_strict() -> None:
    doc = {"a": math.nan, "b": [1.0, math.inf, np.float32("nan")], "c": {"d": -math.inf, "e": 2.5}}
    text = dumps(doc)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None, None], "c": {"d": None, "e": 2.5}}
    # Finite numpy floats are written as the floats they are, with or without a NaN beside them.
    finite = {"f32": np.float32(0.25), "f64": np.float64(1 / 3), "t": (1, 2.0)}
    assert json.loads(dumps(finite)) == {"f32": 0.25, "f64": 1 / 3, "t": [1, 2.0]}
    assert json.loads(dumps({**finite, "n": math.nan})) == {"f32": 0.25, "f64": 1 / 3, "t": [1, 2.0], "n": None}


def test_every_json_the_repository_ships_is_strict() -> None:
    def strict(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    root = Path(__file__).parents[1]
    files = [p for p in root.rglob("*.json") if ".venv" not in p.parts and ".git" not in p.parts]
    assert files
    for path in files:
        json.loads(path.read_text(), parse_constant=strict)


def test_write_json_round_trip(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {"x": float("nan")}, indent=1)
    assert json.loads(path.read_text()) == {"x": None}
