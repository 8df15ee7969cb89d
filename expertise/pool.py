"""Register external pre-trained models in a library (``expertise pool add``), beside or instead of
our own experts: a timm architecture with a local safetensors checkpoint, a Hugging Face timm model
(a downloaded folder or a Hub id), or timm's own pretrained weights. See
:mod:`expertise.models.external` for what the member is made of."""

from __future__ import annotations

import re
from pathlib import Path

from expertise.errors import ConfigError
from expertise.library import Library, MemberInfo
from expertise.models.external import (ExternalModel, ExternalSource, from_checkpoint, from_hf_folder, from_hf_hub,
                                       from_timm_pretrained)


def external_name(source: ExternalSource) -> str:
    """A default member name: ``ext.<architecture>`` (plus the pretrained tag when there is one)."""
    base = source.architecture + (f".{source.pretrained_tag}" if source.pretrained_tag else "")
    return "ext." + re.sub(r"[^A-Za-z0-9._-]", "_", base)[:120]


def load_external(timm_name: str | None = None, checkpoint: Path | None = None, hf: str | None = None,
                  pretrained: bool = False, size: int | None = None) -> tuple[ExternalModel, ExternalSource]:
    """Build the external model one set of options names (exactly one source)."""
    if hf is not None:
        if timm_name or checkpoint or pretrained:
            raise ConfigError("--hf names the model and its weights; do not combine it with --timm, --checkpoint or --pretrained")
        return from_hf_folder(Path(hf), size) if Path(hf).is_dir() else _hub(hf, size)
    if not timm_name:
        raise ConfigError("name a model: --timm ARCH with --checkpoint FILE.safetensors or --pretrained, or --hf FOLDER_OR_ID")
    if checkpoint is not None and pretrained:
        raise ConfigError("--checkpoint and --pretrained both give weights; pass one")
    if checkpoint is not None:
        return from_checkpoint(timm_name, checkpoint, size)
    if pretrained:
        return from_timm_pretrained(timm_name, size)
    raise ConfigError(f"--timm {timm_name} needs weights: --checkpoint FILE.safetensors or --pretrained "
                      "(an untrained network is no pool member)")


def _hub(repo_id: str, size: int | None) -> tuple[ExternalModel, ExternalSource]:
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")):
        raise ConfigError(f"--hf {repo_id!r} is neither a folder nor a Hugging Face id like 'timm/resnet50.a1_in1k'")
    return from_hf_hub(repo_id, size)


def add_external(library: Library, model: ExternalModel, source: ExternalSource, name: str | None = None,
                 overwrite: bool = False) -> MemberInfo:
    """Store ``model`` as a member of kind ``external``: no parent, no expert domain, no label prior
    (its classifier's labels are not the library's hierarchy); ``extra`` records its source."""
    info = MemberInfo(
        name=name or external_name(source), kind="external", parent=None, domain=None, upstream_images=0,
        parameters=0, embedding_dim=0, upstream_accuracy=None, preprocessing={}, architecture=source.architecture,
        extra={**source.to_json(), "upstream_classes": 0 if model.head is None else model.head.out_features},
    )
    return library.add(info, model, overwrite=overwrite)
