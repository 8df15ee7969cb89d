"""The expert prediction network (EPN) of paper 000, section 5 (domain prediction).

The EPN learns the hard-coded upstream routing: from an image alone, which experts' domains
(hierarchy nodes) it belongs to. It is trained once upstream, on the same data as the experts; at
transfer time :func:`epn_probabilities` scores a task's images and
:func:`expertise.select.strategies.domain_prediction` picks the expert with the highest geometric
mean probability. Domains nest and overlap in the hierarchy (an image under ``animal/cat`` is in
both domains), so the EPN is multi-label: one sigmoid per node, trained with
:func:`expertise.train.multilabel_loss`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from expertise.data.hierarchy import Hierarchy
from expertise.data.upstream_data import UpstreamData
from expertise.errors import ConfigError, DataError
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.models.forward import check_images, forward_batches
from expertise.runtime import RunContext, derive_seed
from expertise.train import TrainConfig, fit, multilabel_loss
from expertise.upstream.baseline import UpstreamBatches

if TYPE_CHECKING:
    from expertise.checkpoint import Checkpoint
    from expertise.upstream.baseline import Holdout, Upstream


def _check_nodes(hierarchy: Hierarchy, nodes: Sequence[str]) -> tuple[str, ...]:
    nodes = tuple(nodes)
    if not nodes:
        raise ConfigError("the EPN needs at least one expert domain (hierarchy node) to predict")
    if len(set(nodes)) != len(nodes):
        raise ConfigError(f"expert domains repeat: {sorted({n for n in nodes if nodes.count(n) > 1})}; list each once")
    unknown = [n for n in nodes if n not in hierarchy.parents]
    if unknown:
        raise DataError(f"expert domains {unknown[:5]} are not nodes of the upstream hierarchy")
    return nodes


def leaf_routes(hierarchy: Hierarchy, nodes: Sequence[str]) -> np.ndarray:
    """float32 [num_leaves, E]: 1 where leaf l lies under node e (the root covers every leaf).

    Routing depends only on an image's leaf, so this table turns leaf ids into targets cheaply.
    """
    nodes = _check_nodes(hierarchy, nodes)
    cols = [hierarchy.leaves_under(n) for n in nodes]  # the root covers every leaf
    return np.stack(cols, axis=1).astype(np.float32)


def routing_targets(data: UpstreamData | Holdout, nodes: Sequence[str], indices: np.ndarray | None = None) -> torch.Tensor:
    """float32 [N, E] (N = all images, or ``len(indices)``): 1 where the image is in node e's slice,
    i.e. ``data.slice(nodes[e])`` contains it. Rows may hold several 1s, since domains overlap."""
    if not isinstance(data, UpstreamData):  # a dataset on disk: from each image's labels
        return data.routing_targets(_check_nodes(data.hierarchy, nodes), indices)
    table = leaf_routes(data.hierarchy, nodes)
    if indices is None:
        return torch.from_numpy(table[data.leaf_ids])
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(data))):
        raise DataError(f"{data.name}: indices must be a 1-D integer array within [0, {len(data)})")
    return torch.from_numpy(table[data.leaf_ids[idx.astype(np.int64)]])


def train_epn(train: Upstream, nodes: Sequence[str], backbone: str, cfg: TrainConfig, seed: int,
              device: torch.device = torch.device("cpu"), progress: bool = True,
              checkpoint: Checkpoint | None = None) -> ExpertModel:
    """An EPN: ``ExpertModel(BACKBONES[backbone], num_outputs=E)`` trained from scratch on every
    upstream image with a sigmoid loss on its routing targets (output e = "in ``nodes[e]``'s slice").

    The returned model carries ``epn_nodes`` (the E nodes, in output order) and ``epn_stats``
    (the :class:`expertise.train.TrainStats`); store the nodes with the model (e.g. in its library
    entry's ``extra``) to map outputs back to experts.
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if len(train) == 0:
        raise DataError(f"{train.name}: no upstream images to train the EPN on")
    nodes = _check_nodes(train.hierarchy, nodes)
    torch.manual_seed(derive_seed(seed, "epn", "init"))
    model = ExpertModel(BACKBONES[backbone], num_outputs=len(nodes))
    everything, data_seed = np.arange(len(train)), derive_seed(seed, "epn", "data")
    if isinstance(train, UpstreamData):
        routes = leaf_routes(train.hierarchy, nodes)
        source = contextlib.nullcontext(UpstreamBatches(train, everything, cfg.batch_size, model.preprocessing, data_seed,
                                                        targets=lambda idx: torch.from_numpy(routes[train.leaf_ids[idx]])))
    else:
        source = train.batches(everything, cfg.batch_size, model.preprocessing, data_seed, cfg.steps, nodes=nodes)
    with source as batches:
        stats = fit(model, batches, cfg, multilabel_loss, device=device, desc="EPN", show_progress=progress,
                    checkpoint=checkpoint)
    model.epn_nodes = tuple(nodes)  # type: ignore[assignment]
    model.epn_stats = stats  # type: ignore[assignment]
    return model


def epn_probabilities(model: ExpertModel, images: torch.Tensor | np.ndarray, batch_size: int = 500,
                      device: torch.device = torch.device("cpu")) -> np.ndarray:
    """float64 [N, E]: sigmoid of the EPN's outputs for uint8 images [N, 3, H, W], through the one
    forward path."""
    images = check_images(images)
    if model.head is None:
        raise ConfigError("this model has no output head; it is not an EPN (train one with train_epn)")
    return forward_batches(model, images, ("probabilities",), batch_size, device)["probabilities"].double().numpy()


def epn_name(backbone: str) -> str:
    return f"{backbone}.epn"


def routing_accuracy(model: ExpertModel, data: Holdout, nodes: Sequence[str], batch_size: int = 500,
                     device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """How well the EPN reproduces the hard-coded routing on ``data`` (the upstream holdout):
    ``node_accuracy``, the fraction of (image, node) decisions right at probability 0.5, and
    ``exact``, the fraction of images whose every decision is right."""
    if len(data) == 0:
        return {"node_accuracy": float("nan"), "exact": float("nan")}
    idx = np.arange(len(data))
    probs = epn_probabilities(model, data.images(idx), batch_size, device)
    right = (probs >= 0.5) == (routing_targets(data, nodes).numpy() > 0.5)
    return {"node_accuracy": float(right.mean()), "exact": float(right.all(axis=1).mean())}


def epn_settings(nodes: Sequence[str], cfg: TrainConfig, seed: int) -> dict:
    """What an EPN is trained with, kept in its manifest entry: a stored EPN is reused only for these."""
    return {"nodes": list(nodes), "train": cfg.to_json(), "seed": seed}


def reuse_epn(library, name: str, settings: dict, log) -> str:
    """The stored EPN ``name``, when it was trained with ``settings``; one line otherwise."""
    from expertise.errors import LibraryError

    extra = library.info(name).extra
    if {k: extra.get(k) for k in settings} != json.loads(json.dumps(settings)):
        raise LibraryError(f"the library's EPN {name!r} was trained on other expert domains or settings; "
                           f"remove it (Library.remove({name!r})) or use another --library")
    log(f"EPN {name} already in the library: reusing it")
    return name


def epn_member(train: Upstream, holdout: Holdout, nodes: Sequence[str], backbone: str, cfg: TrainConfig,
               ctx: RunContext, checkpoint: Checkpoint | None = None):
    """The EPN trained (with ``ctx``'s seed, device, progress and log) and measured on the holdout:
    its manifest entry and the model, ready to store."""
    from expertise.library import MemberInfo

    t0 = time.perf_counter()
    name = epn_name(backbone)
    settings = epn_settings(nodes, cfg, ctx.seed)
    model = train_epn(train, nodes, backbone, cfg, ctx.seed, ctx.device, ctx.progress, checkpoint)
    acc = routing_accuracy(model, holdout, nodes, device=ctx.device)
    ctx.log(f"EPN {name}: holdout routing decisions {acc['node_accuracy']:.3f} right, every decision right on "
            f"{acc['exact']:.3f} of images ({time.perf_counter() - t0:.0f}s)")
    info = MemberInfo(
        name=name, kind="epn", parent=None, domain=None, upstream_images=len(train), parameters=0, embedding_dim=0,
        upstream_accuracy=None, preprocessing={}, files={}, architecture=backbone,
        extra={**settings, "stats": model.epn_stats.to_json(), "holdout_routing": acc},
    )
    return info, model
