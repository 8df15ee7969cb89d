"""Mid-run checkpoints of the one training loop (:func:`expertise.train.fit`), so an interrupted run
resumes from its last checkpoint instead of step 0.

A checkpoint is one safetensors file, written atomically: the model's state (``model.*``), the
optimizer's momentum buffers (``optim.<index>.momentum_buffer``), the torch random state
(``rng.*``) and the losses so far (``stats.losses``, float64), with the step, images, seconds and
the run's *identity* (plain JSON: what was trained on what, with which settings) in its metadata.
Nothing is pickled. Batches are a pure function of the step (:class:`~expertise.train.EpochSampler`)
and the learning rate a function of the step, so a run resumed from step k gives the same weights
as one that was never interrupted (on the CPU, up to the usual floating-point determinism).

A checkpoint of another identity (other settings, another member or task) or one that cannot be
read is never loaded: the run says why and starts again from step 0.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from expertise import reading
from expertise.errors import ConfigError
from expertise.io import atomic_save_safetensors

if TYPE_CHECKING:
    from expertise.train import TrainStats

FORMAT = "expertise-checkpoint-1"


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ (for the 'other settings' message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "identity"]


class Checkpoint:
    """Where and how often :func:`~expertise.train.fit` checkpoints: the file ``path``, the run's
    ``identity`` (plain JSON; a checkpoint of another identity is not resumed), every
    ``every_steps`` steps (default: a tenth of the run) and at least every ``every_seconds``."""

    def __init__(self, path: Path, identity: dict[str, Any], every_steps: int | None = None,
                 every_seconds: float = 300.0, log: Callable[[str], None] = print) -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, allow_nan=False))
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.log = log
        self.resumed_from = 0  # the step the last restore() resumed from (0: from the start)
        self._last_save = time.monotonic()

    # -- reading ---------------------------------------------------------------------------------
    def _read(self) -> tuple[dict[str, str], dict[str, torch.Tensor]] | str:
        """(metadata, tensors), or why the file is not a usable checkpoint."""
        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
            if meta.get("format") != FORMAT:
                return f"it is not a checkpoint of this version (format {meta.get('format')!r})"
            return meta, load_file(str(self.path))
        except (SafetensorError, OSError, ValueError) as e:
            return f"it cannot be read ({type(e).__name__}: {e})"

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer, stats: TrainStats, total_steps: int,
                device: torch.device) -> int:
        """Load the checkpoint into ``model``, ``opt`` and ``stats`` and return the step to continue
        from; 0 (nothing loaded, with a line saying why) when there is none or it does not fit."""
        self.resumed_from = 0
        self._last_save = time.monotonic()
        if not self.path.exists():
            return 0
        read = self._read()
        if isinstance(read, str):
            self.log(f"checkpoint {self.path}: {read}; starting again from step 0")
            return 0
        meta, tensors = read
        try:
            identity = reading.loads_json(meta.get("identity", "null"), str(self.path))
            step, images, seconds = int(meta["step"]), int(meta["images"]), float(meta["seconds"])
        except (KeyError, TypeError, ValueError, ConfigError):
            self.log(f"checkpoint {self.path}: its metadata is malformed; starting again from step 0")
            return 0
        if identity != self.identity:
            diff = ", ".join(differences(identity, self.identity)[:5])
            self.log(f"checkpoint {self.path} was made with other settings (differs in: {diff}); starting again from step 0")
            return 0
        if not 0 < step < total_steps or images < 0 or not math.isfinite(seconds):
            self.log(f"checkpoint {self.path}: step {step} is not within this run of {total_steps} steps; starting again from step 0")
            return 0
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        momentum = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        losses = tensors.get("stats.losses")
        try:
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(model_state, strict=True)
            state = {int(k.split(".")[1]): {"momentum_buffer": v} for k, v in momentum.items()}
            groups = opt.state_dict()["param_groups"]
            n_params = sum(len(g["params"]) for g in groups)
            if any(not 0 <= i < n_params for i in state) or losses is None or losses.ndim != 1 or len(losses) != step:
                raise ValueError("optimizer state or losses do not fit")
            opt.load_state_dict({"state": state, "param_groups": groups})
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            model.load_state_dict(before, strict=True)  # leave the model as it was given
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            self.log(f"checkpoint {self.path} does not fit this model ({first}); starting again from step 0")
            return 0
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        if device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        stats.losses = [float(x) for x in losses.tolist()]
        stats.steps, stats.images, stats.seconds = step, images, seconds
        self.resumed_from = step
        self.log(f"resuming from the checkpoint at step {step} of {total_steps} ({self.path})")
        return step

    # -- writing ---------------------------------------------------------------------------------
    def due(self, steps_done: int, total_steps: int) -> bool:
        """Whether to checkpoint after ``steps_done`` steps (never after the last one: the run is over)."""
        if steps_done >= total_steps:
            return False
        every = self.every_steps or max(1, total_steps // 10)
        return steps_done % every == 0 or time.monotonic() - self._last_save >= self.every_seconds

    def save(self, steps_done: int, model: nn.Module, opt: torch.optim.Optimizer, stats: TrainStats,
             device: torch.device) -> None:
        """Write the state after ``steps_done`` steps, atomically (one file)."""
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().to("cpu").clone()
                                            for k, v in model.state_dict().items()}
        for i, s in opt.state_dict()["state"].items():
            if s.get("momentum_buffer") is not None:
                tensors[f"optim.{i}.momentum_buffer"] = s["momentum_buffer"].detach().to("cpu").clone()
        tensors["rng.torch"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        tensors["stats.losses"] = torch.tensor(stats.losses, dtype=torch.float64)
        meta = {"format": FORMAT, "identity": json.dumps(self.identity, sort_keys=True), "step": str(steps_done),
                "images": str(stats.images), "seconds": repr(float(stats.seconds))}
        atomic_save_safetensors(self.path, tensors, metadata=meta)
        self._last_save = time.monotonic()

    def clear(self) -> None:
        """Delete the checkpoint (the run it belongs to has finished and is kept)."""
        self.path.unlink(missing_ok=True)
