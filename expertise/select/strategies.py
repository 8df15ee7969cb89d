"""Selection strategies: each ranks a pool for a task and returns ``budget`` distinct members with
their scores and the cost it spent. This module holds the performance-proxy strategy (paper 000,
section 5: kNN leave-one-out accuracy on each member's embeddings)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from expertise.errors import ConfigError

Proxy = Callable[..., float]


@dataclass(frozen=True)
class Selection:
    strategy: str
    ranking: tuple[tuple[str, float], ...]   # every member, best first
    picks: tuple[str, ...]                   # the first ``budget`` distinct members
    seconds: dict[str, float] = field(default_factory=dict)
    images: int = 0

    @property
    def best(self) -> str:
        return self.picks[0]

    def scores(self) -> dict[str, float]:
        return dict(self.ranking)

    def to_json(self) -> dict:
        return {"strategy": self.strategy, "picks": list(self.picks), "ranking": [list(r) for r in self.ranking],
                "seconds": self.seconds, "images": self.images}


def rank(scores: Mapping[str, float], order: list[str] | None = None) -> list[tuple[str, float]]:
    """Highest score first; equal scores keep pool order (``order``, default insertion order), so
    ties are broken deterministically in favour of the earlier member (the baseline comes first)."""
    order = order or list(scores)
    pos = {n: i for i, n in enumerate(order)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], pos[kv[0]]))


def select_by_proxy(features: Mapping[str, torch.Tensor | np.ndarray], labels: torch.Tensor | np.ndarray,
                    proxy: Proxy, budget: int = 1, name: str | None = None) -> Selection:
    """Score every member's features with ``proxy`` (higher is better) and pick the top ``budget``."""
    if not features:
        raise ConfigError("the pool is empty: add members to the library first")
    if not 1 <= budget <= len(features):
        raise ConfigError(f"budget must be between 1 and the pool size {len(features)}, got {budget}")
    t0 = time.perf_counter()
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    scores = {m: proxy(f.numpy() if isinstance(f, torch.Tensor) else f, y, name=m) for m, f in features.items()}
    ranking = rank(scores)
    return Selection(
        strategy=name or getattr(proxy, "__name__", "proxy"), ranking=tuple(ranking),
        picks=tuple(m for m, _ in ranking[:budget]), seconds={"score": time.perf_counter() - t0},
    )
