"""Transfer: fine-tune a pool member on a task with a new zero-initialised head, the whole network
tuned (paper 000, section 5.1), and measure test accuracy."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from expertise.data.tasks import Split, Task
from expertise.errors import ConfigError
from expertise.models.backbones import prepare
from expertise.models.forward import forward_batches
from expertise.runtime import derive_seed
from expertise.train import EpochSampler, TrainConfig, fit, softmax_loss

if TYPE_CHECKING:
    from expertise.checkpoint import Checkpoint


@dataclass(frozen=True)
class FinetuneResult:
    test_accuracy: float
    train_seconds: float
    images: int
    final_loss: float

    def to_json(self) -> dict:
        return {"test_accuracy": self.test_accuracy, "train_seconds": round(self.train_seconds, 3),
                "images": self.images, "final_loss": self.final_loss}


class SplitBatches:
    """Seeded batches of (prepared images, labels) from a task split, prepared once up front."""

    def __init__(self, split: Split, prep, batch_size: int, seed: int) -> None:
        self.x = prepare(split.images, prep)
        self.y = split.labels
        self.sampler = EpochSampler(np.arange(len(split)), batch_size, seed)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.batch(step))
        return self.x[idx], self.y[idx]


def finetune(member: nn.Module, train: Split, num_classes: int, cfg: TrainConfig, seed: int,
             device: torch.device = torch.device("cpu"), progress: bool = True, desc: str = "fine-tune",
             checkpoint: Checkpoint | None = None) -> tuple[nn.Module, dict]:
    """A copy of ``member`` with a new zero-initialised head of ``num_classes``, every weight tuned.
    With a ``checkpoint`` the fine-tune resumes from it (same identity) and checkpoints periodically."""
    if not hasattr(member, "reset_head"):
        raise ConfigError(f"{type(member).__name__} cannot be fine-tuned: it has no reset_head(num_classes)")
    model = copy.deepcopy(member)
    model.reset_head(num_classes)
    for p in model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(derive_seed(seed, "finetune"))
    batches = SplitBatches(train, model.preprocessing, cfg.batch_size, derive_seed(seed, "finetune", "data"))
    stats = fit(model, batches, cfg, softmax_loss, device=device, desc=desc, show_progress=progress, checkpoint=checkpoint)
    return model, stats.to_json()


def correct_count(model: nn.Module, split: Split, device: torch.device = torch.device("cpu"), batch_size: int = 500) -> int:
    """How many of ``split``'s images the model classifies correctly (top-1)."""
    logits = forward_batches(model, split.images, ("logits",), batch_size, device)["logits"]
    return int((logits.argmax(1) == split.labels).sum())


def accuracy(model: nn.Module, split: Split, device: torch.device = torch.device("cpu"), batch_size: int = 500) -> float:
    return correct_count(model, split, device, batch_size) / len(split) if len(split) else float("nan")


def finetune_and_test(member: nn.Module, task: Task, cfg: TrainConfig, seed: int,
                      device: torch.device = torch.device("cpu"), progress: bool = True, desc: str | None = None) -> FinetuneResult:
    """Fine-tune on the task's 1,000 train+val images and report test accuracy."""
    t0 = time.perf_counter()
    model, stats = finetune(member, task.trainval, task.num_classes, cfg, seed, device, progress,
                            desc or f"fine-tune {task.name}")
    return FinetuneResult(accuracy(model, task.test, device), time.perf_counter() - t0, stats["images"], stats["final_loss"])
