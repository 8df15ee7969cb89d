"""Register external pre-trained models in a library (``expertise pool add``), beside or instead of
our own experts: a timm architecture with a local safetensors checkpoint, a Hugging Face model
(a downloaded folder or a Hub id in the local cache; timm's layout or transformers'), or timm's own
pretrained weights. See :mod:`expertise.models.external` (timm) and
:mod:`expertise.models.hf_transformers` for what the member is made of, and
:mod:`expertise.pool_file` for pools kept in a file.

What task-agnostic search reads is stored in the member's manifest entry (:class:`PoolMetadata`):
``upstream_images`` (the size of its upstream dataset) and ``upstream_accuracy``, which for an
external member is its ImageNet top-1 accuracy as a fraction (given in percent, as model cards
quote it); the upstream dataset's name and free notes go to ``extra``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from torch import nn

from expertise import schema
from expertise.errors import ConfigError
from expertise.library import Library, MemberInfo
from expertise.models.external import (ExternalSource, from_checkpoint, from_hf_folder, from_timm_pretrained,
                                       hub_folder)


@dataclass(frozen=True)
class PoolMetadata:
    """What a pool file (or ``pool add``'s options) says about a member beyond its weights: the
    upstream dataset's name and size, ImageNet top-1 accuracy in percent, notes."""

    upstream_dataset: str | None = None
    upstream_images: int = 0
    imagenet_top1: float | None = None  # percent, e.g. 80.4
    notes: str | None = None

    def __post_init__(self) -> None:
        check_metadata("metadata", self.upstream_dataset, self.upstream_images, self.imagenet_top1, self.notes)

    @classmethod
    def checked(cls, where: str, **fields: Any) -> PoolMetadata:
        """Built from raw values (a pool file's), each checked with ``where`` in its error."""
        check_metadata(where, **fields)
        return cls(**fields)

    def extra(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.upstream_dataset is not None:
            out["upstream_dataset"] = self.upstream_dataset
        if self.imagenet_top1 is not None:
            out["imagenet_top1"] = self.imagenet_top1
        if self.notes is not None:
            out["notes"] = self.notes
        return out

    @classmethod
    def of(cls, info: MemberInfo) -> PoolMetadata:
        """What a stored member's manifest entry says (for ``pool export``)."""
        extra = info.extra
        return cls(extra.get("upstream_dataset"), info.upstream_images, extra.get("imagenet_top1"), extra.get("notes"))


def check_metadata(where: str, upstream_dataset: Any = None, upstream_images: Any = 0, imagenet_top1: Any = None,
                   notes: Any = None) -> None:
    if upstream_dataset is not None:
        schema.string(upstream_dataset, f"{where}: upstream_dataset", 128)
    schema.integer(upstream_images, f"{where}: upstream_images", 0, 1 << 50)
    if imagenet_top1 is not None:
        if not isinstance(imagenet_top1, bool) and isinstance(imagenet_top1, (int, float)) and 0 <= imagenet_top1 < 1:
            raise ConfigError(f"{where}: imagenet_top1 is a percentage (e.g. 80.4 for 80.4%), got {imagenet_top1}")
        schema.number(imagenet_top1, f"{where}: imagenet_top1", 1.0, 100.0)
    if notes is not None:
        schema.string(notes, f"{where}: notes", 2000)


def external_name(source: ExternalSource) -> str:
    """A default member name: ``ext.<architecture>`` (plus the pretrained tag when there is one);
    for a transformers model ``ext.<folder or repository name>``."""
    if source.format == "transformers":
        base = PurePosixPath(source.location.replace("\\", "/").rstrip("/")).name or source.architecture
    else:
        base = source.architecture + (f".{source.pretrained_tag}" if source.pretrained_tag else "")
    return "ext." + re.sub(r"[^A-Za-z0-9._-]", "_", base)[:120]


def load_external(timm_name: str | None = None, checkpoint: Path | None = None, hf: str | None = None,
                  pretrained: bool = False, size: int | None = None) -> tuple[nn.Module, ExternalSource]:
    """Build the external model one set of options names (exactly one source)."""
    if hf is not None:
        if timm_name or checkpoint or pretrained:
            raise ConfigError("--hf names the model and its weights; do not combine it with --timm, --checkpoint or --pretrained")
        # a folder is recorded as an absolute path, so the manifest (and pool export) names it wherever it is read
        return load_hf_folder(Path(hf).expanduser().resolve(), size) if Path(hf).expanduser().is_dir() else _hub(hf, size)
    if not timm_name:
        raise ConfigError("name a model: --timm ARCH with --checkpoint FILE.safetensors or --pretrained, or --hf FOLDER_OR_ID")
    if checkpoint is not None and pretrained:
        raise ConfigError("--checkpoint and --pretrained both give weights; pass one")
    if checkpoint is not None:
        return from_checkpoint(timm_name, Path(checkpoint).expanduser().resolve(), size)
    if pretrained:
        return from_timm_pretrained(timm_name, size)
    raise ConfigError(f"--timm {timm_name} needs weights: --checkpoint FILE.safetensors or --pretrained "
                      "(an untrained network is no pool member)")


def load_hf_folder(folder: Path, size: int | None = None, location: str | None = None) -> tuple[nn.Module, ExternalSource]:
    """A Hugging Face model folder in transformers' layout (``model_type`` in its config.json) or
    in timm's (``architecture``)."""
    from expertise.models.hf_transformers import from_folder, is_transformers_folder

    if is_transformers_folder(folder):
        return from_folder(folder, size, location)
    return from_hf_folder(folder, size, location)


def is_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith(("/", ".", "~")) and not text.endswith("/")


def _hub(repo_id: str, size: int | None) -> tuple[nn.Module, ExternalSource]:
    if not is_hub_id(repo_id):
        raise ConfigError(f"--hf {repo_id!r} is neither a folder nor a Hugging Face id like 'timm/resnet50.a1_in1k' "
                          "or 'google/vit-base-patch16-224'")
    return load_hf_folder(hub_folder(repo_id), size, location=repo_id)


def add_external(library: Library, model: nn.Module, source: ExternalSource, name: str | None = None,
                 overwrite: bool = False, metadata: PoolMetadata | None = None) -> MemberInfo:
    """Store ``model`` as a member of kind ``external``: no parent, no expert domain, no label prior
    (its classifier's labels are not the library's hierarchy); ``extra`` records its source and
    the metadata. Its ImageNet top-1 (percent) becomes ``upstream_accuracy`` (a fraction), which
    the ``task_agnostic`` strategy ranks by."""
    meta = metadata or PoolMetadata()
    head = getattr(model, "head", None)
    info = MemberInfo(
        name=name or external_name(source), kind="external", parent=None, domain=None,
        upstream_images=meta.upstream_images, parameters=0, embedding_dim=0,
        upstream_accuracy=None if meta.imagenet_top1 is None else meta.imagenet_top1 / 100.0,
        preprocessing={}, architecture=source.architecture,
        extra={**source.to_json(), "upstream_classes": 0 if head is None else head.out_features, **meta.extra()},
    )
    return library.add(info, model, overwrite=overwrite)
