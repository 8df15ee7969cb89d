"""The one forward path: uint8 images in, a model's named outputs out.

Everything that runs a model over images without training it (embedding a task for selection, the
EPN's probabilities, upstream leaf accuracy, DAT's target logits, an adapter bank's shared-stem
embedding, test accuracy after fine-tuning) goes through :func:`run_batches`. It validates the
images (one uint8 tensor, or ragged at their source sizes), moves each batch of uint8 images to
the device and prepares it there with the model's own preprocessing (resize, crop, normalise:
:mod:`expertise.models.preprocess`; the float copy of a large split never sits in memory), and
runs under ``torch.inference_mode``. On CUDA the inputs are
channels-last and the forward runs under bf16 autocast; on CPU neither, so CPU results are plain
float32 and do not depend on which caller asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from expertise.data.ragged import Images
from expertise.data.ragged import check_images as _check
from expertise.errors import ConfigError
from expertise.models.preprocess import Preprocessing, prepare
from expertise.runtime import autocast

# features: pre-logits ``embed(x)`` [N, D]; upstream_logits: the upstream head on those features
# [N, L]; logits: the model's own forward ``model(x)`` (its current head: upstream, task or EPN);
# probabilities: the sigmoid of those logits (the EPN's per-expert probabilities).
OUTPUTS = ("features", "upstream_logits", "logits", "probabilities")

Step = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def upstream_head(model: nn.Module) -> nn.Module | None:
    """The module that maps a member's ``embed()`` output to its upstream logits, when it has one
    (``model.upstream_head``, or an ExpertModel's head while it is still the upstream head). With
    it, one pass yields both the features and the upstream predictions that label matching, LEEP
    and NCE need, instead of a second forward pass."""
    head = getattr(model, "upstream_head", None)
    if head is not None:
        return head
    if getattr(model, "has_upstream_head", False):
        return getattr(model, "head", None)
    return None


def check_images(images: Images) -> Images:
    """``images`` as a uint8 tensor [N, 3, H, W] (or ragged), or a DataError that says what was given."""
    return _check(images, "a forward pass")


@torch.inference_mode()
def run_batches(model: nn.Module, images: Images, step: Step, batch_size: int = 500,
                device: torch.device = torch.device("cpu"), preprocessing: Preprocessing | None = None
                ) -> dict[str, torch.Tensor]:
    """``step`` on every batch of uint8 images [N, 3, H, W] (or ragged), prepared on ``device`` with
    ``preprocessing`` (default: ``model.preprocessing``): each output float32 on the CPU,
    concatenated over batches.
    Empty ``images`` still run one empty batch, so every output has its shape [0, ...]."""
    x = check_images(images)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    prep: Preprocessing = preprocessing or model.preprocessing  # type: ignore[assignment]
    model.to(device).eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, max(len(x), 1), batch_size):
        batch = prepare(x[i:i + batch_size], prep, device)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            out = step(batch)
        for name, value in out.items():
            parts.setdefault(name, []).append(value.float().cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def forward_batches(model: nn.Module, images: Images, outputs: Sequence[str] = ("features",),
                    batch_size: int = 500, device: torch.device = torch.device("cpu")) -> dict[str, torch.Tensor]:
    """The ``outputs`` (names from ``OUTPUTS``) of a pool member on uint8 images [N, 3, H, W], each
    float32 [N, ...] on the CPU. Features and upstream logits come from one ``embed`` per batch;
    logits and probabilities from one ``model(x)``."""
    wanted = tuple(outputs)
    unknown = [o for o in wanted if o not in OUTPUTS]
    if not wanted or unknown:
        raise ConfigError(f"unknown outputs {unknown}; ask for some of {OUTPUTS}")
    head = upstream_head(model) if "upstream_logits" in wanted else None
    if "upstream_logits" in wanted and head is None:
        raise ConfigError(f"{type(model).__name__} has no upstream head, so it has no upstream logits")

    def step(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "features" in wanted or head is not None:
            f = model.embed(x)  # type: ignore[operator]
            if head is not None:
                out["upstream_logits"] = head(f)
            out["features"] = f
        if "logits" in wanted or "probabilities" in wanted:
            logits = model(x)
            out["logits"] = logits
            out["probabilities"] = torch.sigmoid(logits.float())
        return {o: out[o] for o in wanted}

    return run_batches(model, images, step, batch_size, device)
