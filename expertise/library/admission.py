"""What a writer checks before a model enters the library: its manifest entry completed from the
model (counts, embedding width, preprocessing, architecture) and checked against the library's
hierarchy, its label prior, and its state as independent CPU tensors."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from expertise.data.hierarchy import Hierarchy
from expertise.errors import LibraryError
from expertise.library.manifest import KINDS, MemberInfo
from expertise.models.backbones import count_parameters


def shareless_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as independent CPU tensors: safetensors refuses tensors that share memory
    (tied weights, views), so each one is cloned."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def complete_info(info: MemberInfo, model: nn.Module, hierarchy: Hierarchy | None) -> MemberInfo:
    """``info`` checked against the model and the library, its empty fields filled from the model."""
    if info.kind not in KINDS:
        raise LibraryError(f"member {info.name!r}: kind must be one of {KINDS}, got {info.kind!r}")
    if not callable(getattr(model, "member_config", None)):
        raise LibraryError(f"member {info.name!r}: the model has no member_config(); only pool members can be stored")
    if info.domain is not None and hierarchy is not None and info.domain not in hierarchy.parents:
        raise LibraryError(f"member {info.name!r}: domain {info.domain!r} is not a node of the library's hierarchy")
    # numpy scalars (np.float32 accuracies, np.int64 counts) are not JSON: store plain Python numbers.
    changes: dict[str, Any] = {
        "upstream_images": int(info.upstream_images), "parameters": int(info.parameters),
        "embedding_dim": int(info.embedding_dim),
        "upstream_accuracy": None if info.upstream_accuracy is None else float(info.upstream_accuracy),
    }
    if info.parameters == 0:
        changes["parameters"] = count_parameters(model)
    if info.embedding_dim == 0:
        dim = getattr(model, "num_features", None)
        if not isinstance(dim, int) or dim <= 0:
            raise LibraryError(f"member {info.name!r}: give embedding_dim, the model has no num_features")
        changes["embedding_dim"] = dim
    prep = getattr(model, "preprocessing", None)
    if prep is not None and hasattr(prep, "to_json"):
        if not info.preprocessing:
            changes["preprocessing"] = prep.to_json()
        elif info.preprocessing != prep.to_json():
            raise LibraryError(f"member {info.name!r}: preprocessing {info.preprocessing} differs from the model's {prep.to_json()}")
    if not info.architecture and hasattr(model, "backbone_config"):
        changes["architecture"] = model.backbone_config.name
    info = replace(info, **changes)
    try:
        json.dumps(info.to_json())
    except (TypeError, ValueError) as e:
        raise LibraryError(f"member {info.name!r}: its info is not JSON-serialisable ({e}); keep 'extra' to plain JSON values") from None
    return info

def check_prior(name: str, prior: torch.Tensor | None, hierarchy: Hierarchy | None) -> torch.Tensor | None:
    """``prior`` as float64 [num_label_nodes] on the CPU after checking it; None stays None."""
    if prior is None:
        return None
    prior = torch.as_tensor(prior).detach().to("cpu", torch.float64).clone()
    if prior.ndim != 1 or not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()):
        raise LibraryError(f"member {name!r}: a label prior must be a finite, non-negative vector [num_label_nodes]")
    if hierarchy is not None and prior.numel() != len(hierarchy.label_nodes):
        raise LibraryError(
            f"member {name!r}: label prior has {prior.numel()} entries, the hierarchy {len(hierarchy.label_nodes)} label nodes"
        )
    return prior
