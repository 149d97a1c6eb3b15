"""Plain torch hooks at architecture-map locations: read a tensor, or replace it.

Both the recording pass (``freeze``) and the frozen replacement forward (``replacement``)
go through here, so the rule "an input is the first positional argument, an output may be a
tuple" lives in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from circuits.models.arch import Location


def first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """A module's main input: its first positional argument, else its first tensor keyword."""
    if args:
        return args[0]
    for value in kwargs.values():
        if isinstance(value, Tensor):
            return value
    raise ValueError("the module was called without a tensor argument")


def pick(value: Any, index: int | None) -> Tensor:
    """The tensor inside a module output that may be a tuple."""
    return value[index or 0] if isinstance(value, tuple) else value


def replace_in(value: Any, index: int | None, new: Tensor) -> Any:
    """``value`` with the tensor at ``index`` swapped for ``new`` (tuples rebuilt, tensors replaced)."""
    if not isinstance(value, tuple):
        return new
    i = index or 0
    return value[:i] + (new,) + value[i + 1:]


Reader = Callable[[Tensor], None]
Writer = Callable[[Tensor], Tensor]


def read_hook(module: nn.Module, loc: Location, fn: Reader) -> RemovableHandle:
    """Call ``fn`` with the tensor at ``loc`` (``module`` is the module ``loc.path`` names)."""
    if loc.io == "input":
        return module.register_forward_pre_hook(lambda m, a, kw: fn(first_input(a, kw)), with_kwargs=True)
    return module.register_forward_hook(lambda m, a, out: fn(pick(out, loc.index)))


def write_hook(module: nn.Module, loc: Location, fn: Writer) -> RemovableHandle:
    """Replace the tensor at ``loc`` by ``fn(tensor)``."""
    if loc.io == "input":
        def pre(m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (fn(args[0]),) + tuple(args[1:]), kwargs
            key = next(k for k, v in kwargs.items() if isinstance(v, Tensor))
            return args, {**kwargs, key: fn(kwargs[key])}
        return module.register_forward_pre_hook(pre, with_kwargs=True)
    return module.register_forward_hook(lambda m, a, out: replace_in(out, loc.index, fn(pick(out, loc.index))))


@contextmanager
def hooked(handles: list[RemovableHandle]) -> Iterator[None]:
    """Remove every hook on exit, also when the forward pass raises."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()
