"""Checkpoints of an upstream build, so a long run (days of B on millions of images) continues
where it stopped: ``expertise upstream --resume``.

Finished members are kept in the library (each stage skips what is there); the unit being trained
when a run stopped (B, a full expert, the EPN, the adapter bank) left a checkpoint of
:func:`expertise.train.fit` (:mod:`expertise.checkpoint`: model, momentum, RNG, losses, step) in
``LIBRARY/.checkpoints/<unit>.safetensors``. With ``resume`` the unit continues from it, to the
same weights as an uninterrupted run (batches and the learning rate are functions of the step);
without it, a checkpoint left behind is a one-line error rather than days of work silently
thrown away. A unit's checkpoint is deleted once the unit is stored in the library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertise.checkpoint import Checkpoint
from expertise.errors import ConfigError, LibraryError

CHECKPOINTS = ".checkpoints"


def _step(path: Path) -> str:
    """The step a checkpoint file holds, for the message ("?" when it cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return f"{int((fh.metadata() or {})['step']):,}"
    except Exception:  # noqa: BLE001 - only for a message; Checkpoint.restore judges the file
        return "?"


class UpstreamCheckpoints:
    """Where and how often the units of one upstream build checkpoint. ``upstream`` identifies the
    data (the world's config or the dataset's fingerprint, with the build's settings): a
    checkpoint of other data or settings is never resumed (:class:`Checkpoint` says so and the
    unit starts at step 0)."""

    def __init__(self, library: Path, upstream: dict[str, Any], resume: bool = False, every_steps: int | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.folder = Path(library) / CHECKPOINTS
        self.upstream, self.resume, self.every_steps, self.log = upstream, resume, every_steps, log

    def unit(self, name: str, **identity: Any) -> Checkpoint:
        """The checkpoint of unit ``name`` (identified further by ``identity``: its settings)."""
        path = self.folder / f"{name}.safetensors"
        if path.exists() and not self.resume:
            raise LibraryError(f"{name} was interrupted at step {_step(path)} (checkpoint {path}); pass --resume to "
                               f"continue it, or delete that file to train it from the start")
        return Checkpoint(path, {"unit": name, "upstream": self.upstream, **identity}, self.every_steps, log=self.log)


    def tidy(self) -> None:
        """Remove the checkpoint folder once the build left nothing in it."""
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty


def unit_checkpoint(checkpoints: UpstreamCheckpoints | None, name: str, **identity: Any) -> Checkpoint | None:
    return None if checkpoints is None else checkpoints.unit(name, **identity)


def finished(checkpoint: Checkpoint | None) -> None:
    """The unit is stored: its checkpoint is not needed any more."""
    if checkpoint is not None:
        checkpoint.clear()


@dataclass(frozen=True)
class Checkpointing:
    """Whether an upstream build checkpoints (given: yes), how often (``every_steps``; default a
    tenth of each unit's steps, and at least every 5 minutes) and whether it continues from the
    checkpoints an interrupted run left (``resume``)."""

    resume: bool = False
    every_steps: int | None = None

    def __post_init__(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ConfigError(f"--checkpoint-every must be at least 1 step, got {self.every_steps}")
