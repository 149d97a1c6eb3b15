"""Keyword checks shared by the discovery entry points: a keyword that does not apply raises.

Each entry point (``discover_edges``, ``discover_nodes``, ``discover_features``) takes only the
keywords of its kind of circuit; these helpers catch the rest of the ways a keyword could be
silently ignored: one that only some methods read, and one that a reused patcher already fixes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

# A patcher keyword that cannot be restated (the patcher clamps it): any value passed with a patcher raises.
FIXED = object()


def _keywords(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(f"{n}=" for n in names)


def reject(where: str, given: Mapping[str, Any], why: str) -> None:
    """Raise when any keyword of ``given`` was passed (is not None): none of them applies to ``where``."""
    passed = [name for name, value in given.items() if value is not None]
    if passed:
        verb = "does" if len(passed) == 1 else "do"
        raise ValueError(f"{_keywords(passed)} {verb} not apply to {where}: {why}")


def check_method(entry: str, method: str, methods: Iterable[str]) -> None:
    methods = tuple(methods)
    if method not in methods:
        choices = ", ".join(repr(m) for m in methods[:-1]) + f" or {methods[-1]!r}"
        raise ValueError(f"{entry}: unknown method {method!r}: use {choices}")


def check_patcher(entry: str, patcher: Any, kind: type, model: Any, task: Any,
                  fixed: Callable[[Any], Mapping[str, tuple[Any, Any]]]) -> None:
    """A reused ``patcher`` must be a ``kind`` built for ``model`` and ``task``, and every keyword it
    fixes (``fixed(patcher)``: name -> (value passed or None, the patcher's value or ``FIXED``)) must
    be left out or agree with it, so that none is silently overridden by the patcher."""
    if not isinstance(patcher, kind):
        raise TypeError(f"{entry}: patcher= must be an instance of {kind.__name__}, got {type(patcher).__name__}")
    if patcher.model is not model or patcher.task is not task:
        raise ValueError(f"{entry}: the patcher was built for another model or task. Fix: pass the model and "
                         "task it was built for, or leave patcher= out.")
    fixes = fixed(patcher)
    clash = [f"{name}={value!r}" + _own(name, own)
             for name, (value, own) in fixes.items() if value is not None and (own is FIXED or value != own)]
    if clash:
        raise ValueError(f"{entry}: the patcher fixes {', '.join(fixes)}; got {', '.join(clash)}. Fix: leave "
                         "them out (the patcher's apply), or build a patcher with them.")


def _own(name: str, own: Any) -> str:
    if own is FIXED:
        return ""
    return f" (the patcher ablates with {own!r})" if name == "ablation" else f" (the patcher's: {own!r})"
