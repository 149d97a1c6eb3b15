"""The one hook toolkit: read a tensor at an architecture-map location, replace it, shadow a
module's forward for one pass, and undo all of it.

Every engine (the models' recording for harvest, freezing, the replacement model's forward,
head-edge and node patching, feature discovery, evaluation) installs and removes its hooks
through here, so the rules "an input is the first positional argument, an output may be a tuple"
and "put back what was there" live in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from circuits.models.adapter import Model
    from circuits.models.arch import Location


def first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, int | str]:
    """A module's main input and where it was passed: its first positional argument (0), else its
    first tensor keyword (the keyword)."""
    if args and isinstance(args[0], Tensor):
        return args[0], 0
    for key, value in kwargs.items():
        if isinstance(value, Tensor):
            return value, key
    raise ValueError("the module was called without a tensor argument")


def first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """A module's main input: its first positional argument, else its first tensor keyword."""
    return first_tensor(args, kwargs)[0]


def with_first(args: tuple, kwargs: dict, where: int | str, new: Tensor) -> tuple[tuple, dict]:
    """A forward pre-hook's return value with the main input (found at ``where``) swapped for ``new``."""
    if where == 0:
        return (new,) + tuple(args[1:]), kwargs
    return args, {**kwargs, where: new}


def pick(value: Any, index: int | None) -> Tensor:
    """The tensor inside a module output that may be a tuple."""
    return value[index or 0] if isinstance(value, tuple) else value


def replace_in(value: Any, index: int | None, new: Tensor) -> Any:
    """``value`` with the tensor at ``index`` swapped for ``new`` (tuples rebuilt, tensors replaced)."""
    if not isinstance(value, tuple):
        return new
    i = index or 0
    return value[:i] + (new,) + value[i + 1:]


def on_input(module: nn.Module, fn: Callable[[nn.Module, tuple, dict], Any]) -> RemovableHandle:
    """Call ``fn(module, args, kwargs)`` before ``module`` runs; it may return new ``(args, kwargs)``."""
    return module.register_forward_pre_hook(fn, with_kwargs=True)


def on_output(module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> RemovableHandle:
    """Call ``fn(module, args, output)`` (``fn(module, args, kwargs, output)`` with ``with_kwargs``) after
    ``module`` runs; it may return a new output."""
    return module.register_forward_hook(fn, with_kwargs=with_kwargs)


Reader = Callable[[Tensor], None]
Writer = Callable[[Tensor], Tensor]


def read_hook(module: nn.Module, loc: Location, fn: Reader) -> RemovableHandle:
    """Call ``fn`` with the tensor at ``loc`` (``module`` is the module ``loc.path`` names)."""
    if loc.io == "input":
        return on_input(module, lambda m, a, kw: fn(first_input(a, kw)))
    return on_output(module, lambda m, a, out: fn(pick(out, loc.index)))


def write_hook(module: nn.Module, loc: Location, fn: Writer) -> RemovableHandle:
    """Replace the tensor at ``loc`` by ``fn(tensor)``."""
    if loc.io == "input":
        def pre(m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x, where = first_tensor(args, kwargs)
            return with_first(args, kwargs, where, fn(x))
        return on_input(module, pre)
    return on_output(module, lambda m, a, out: replace_in(out, loc.index, fn(pick(out, loc.index))))


_NO_FORWARD = object()
Replaced = tuple[nn.Module, Any]


def replace_forward(module: nn.Module, fn: Callable[..., Any]) -> Replaced:
    """Shadow ``module.forward`` with ``fn`` for one pass; returns what ``restore`` puts back. nnsight
    keeps its own instance-level ``forward``, so the previous instance attribute is put back, not deleted."""
    previous = module.__dict__.get("forward", _NO_FORWARD)
    module.forward = fn
    return module, previous


def restore(handles: list[RemovableHandle], replaced: list[Replaced] = ()) -> None:  # type: ignore[assignment]
    """Remove ``handles`` and put back the forwards ``replace_forward`` shadowed, last first."""
    for h in handles:
        h.remove()
    for module, previous in reversed(replaced):
        if previous is _NO_FORWARD:
            del module.forward
        else:
            module.forward = previous


@contextmanager
def hooked(handles: list[RemovableHandle], replaced: list[Replaced] | None = None) -> Iterator[None]:
    """Undo every hook (and shadowed forward) on exit, also when the forward pass raises. The lists
    may still grow inside the block: what they hold on exit is undone."""
    try:
        yield
    finally:
        restore(handles, replaced or [])


def repeat_output(output: Any, k: int) -> Any:
    """A module output (tensor or tuple of them) repeated ``k`` times along the batch."""
    if k == 1:
        return output
    if isinstance(output, Tensor):
        return output.repeat(k, *([1] * (output.ndim - 1)))
    if isinstance(output, tuple):
        return tuple(repeat_output(o, k) for o in output)
    return output


def detached(output: Any) -> Any:
    """A module output (tensor or tuple of them) cut from the autograd graph, to record and replay."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(detached(o) for o in output)
    return output


@contextmanager
def frozen_parameters(model: Model) -> Iterator[None]:
    """No parameter gradients: attribution needs activation gradients only, and weight grads double the cost."""
    params = [p for p in model.hf.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
