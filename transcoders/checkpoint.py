"""Training checkpoints: one file per run directory, replaced atomically.

A checkpoint holds everything the next step depends on: the step, the transcoder's
weights and normalisation, Adam's moments, the LR schedule, the sparsity controller
and the dead-feature counters. The data position needs no state: step ``s`` fixes it
(see ``transcoders.buffer``). A kill at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transcoders.writes import dumps, write_folder
from transcoders.model import Transcoder, TranscoderConfig, build_transcoder

CHECKPOINT = "checkpoint.pt"


class CheckpointMismatchError(ValueError):
    """A run directory holds a checkpoint written with another configuration."""


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` (and its config as JSON, for people)."""
    run_dir = Path(run_dir)
    config = dumps(state.get("train_config", {}), indent=2, default=str)
    # The run directory is the engine's (a --run-dir of someone else's files is refused); both files
    # are complete before either replaces the previous checkpoint's.
    write_folder(run_dir, {CHECKPOINT: lambda tmp: torch.save(state, tmp),
                           "train_config.json": lambda tmp: tmp.write_text(config)}, replace_all=False)
    return run_dir / CHECKPOINT


def load_checkpoint(run_dir: Path, train_config: dict[str, Any] | None = None,
                    may_differ: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir``, or None. With ``train_config``, refuse one written by another config."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        # weights_only: a checkpoint is tensors, numbers and dicts; unpickling arbitrary objects
        # from a directory a user points us at could run any code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatchError(
            f"{path} cannot be read as a training checkpoint ({type(exc).__name__}: {str(exc)[:200]}). It is "
            "truncated, corrupted, or not a checkpoint of transcoders train. Fix: pass another run directory "
            "(--run-dir), or delete this file to start the run over.") from exc
    if train_config is not None:
        saved = state.get("train_config", {})
        diff = sorted(k for k in set(saved) | set(train_config)
                      if k not in may_differ and saved.get(k) != train_config.get(k))
        if diff:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {train_config.get(k)!r}" for k in diff[:6])
            raise CheckpointMismatchError(
                f"{path} was written by a run with a different configuration ({detail}). "
                "Fix: use another run directory (--run-dir) or delete this one to start over.")
    return state


def transcoder_from_checkpoint(run_dir: Path) -> tuple[Transcoder, int]:
    """The transcoder of a run in progress (eval mode, normalisation folded) and the step it is at."""
    state = load_checkpoint(run_dir)
    if state is None:
        raise FileNotFoundError(f"{Path(run_dir) / CHECKPOINT} does not exist. Fix: pass a run directory "
                                "that `transcoders train` has checkpointed into.")
    tc = build_transcoder(TranscoderConfig(**state["transcoder_config"]))
    tc.load_state_dict(state["transcoder"])
    tc.eval()
    tc.fold_normalisation()
    return tc, int(state["step"])
