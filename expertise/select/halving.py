"""Successive halving: a proxy's ranking of a large pool for a fraction of the embedding cost
(``expertise select --search halving``).

Full scoring embeds every member on all N train+val images. Halving scores every member on a
subsample, keeps the best 1/``eta`` of them (never fewer than the budget), grows the sample by
``eta`` and scores the survivors again, until the sample is the whole set; the survivors are ranked
by their score on all N images, the members dropped earlier after them (those dropped later first,
each group by the score it was dropped with). The samples are prefixes of one seeded stratified
order of the images (``data.loaders.stratified_order``), so each round embeds only the images the
survivors have not seen yet, and every class is present from the first round. With M members and
``eta`` = 2 the rounds use about N / 2^(R-1), ..., N / 2, N images (R = ceil(log2(M / budget)), the
first at least :data:`MIN_IMAGES`), the last with at most 2 x budget members: for 12 members and a
budget of 1, 12, 6, 3 and 2 members on N/8, N/4, N/2 and N images, about 4N images embedded
instead of full scoring's 12N.

Features come from the library's embedding cache when a member's full pass is there (nothing is
embedded for it); a member that reaches the last round leaves its full pass in the cache, so a later
full scoring (or halving) reuses it. Halving agrees with full scoring when the best member's
advantage shows on the small samples; ``tests/test_halving.py`` checks a pool with a clear winner,
and the report gives the images embedded and the seconds against what full scoring embeds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from expertise.data.loaders import stratified_order
from expertise.data.ragged import take
from expertise.data.tasks import Task
from expertise.errors import ConfigError
from expertise.library import Library
from expertise.models.forward import forward_batches, upstream_head
from expertise.runtime import RunContext, derive_seed
from expertise.select.embed import EmbeddingCache, EmbedStats, cache_key
from expertise.select.proxy_registry import get_proxy
from expertise.select.registry import UNSCORED, source_probabilities
from expertise.select.strategies import Selection

SEARCHES = ("full", "halving")
ETA = 2
MIN_IMAGES = 50  # the first round's sample, at least (and at least 4 per class)


@dataclass(frozen=True)
class Round:
    """One round: the sample size, the members scored on it, the images embedded for it (summed
    over members, new images only), its seconds, and each member's score."""

    images: int
    scores: dict[str, float]
    embedded: int
    seconds: float

    def to_json(self) -> dict:
        return {"images": self.images, "members": list(self.scores), "embedded": self.embedded,
                "seconds": round(self.seconds, 3),
                "scores": {n: None if not math.isfinite(s) else s for n, s in self.scores.items()}}


@dataclass
class HalvingReport:
    """What a halving search cost against full scoring (``full_images``: every member on all N)."""

    rounds: list[Round] = field(default_factory=list)
    full_images: int = 0

    @property
    def images_embedded(self) -> int:
        return sum(r.embedded for r in self.rounds)

    def to_json(self) -> dict:
        return {"search": "halving", "eta": ETA, "images_embedded": self.images_embedded,
                "full_scoring_images": self.full_images, "rounds": [r.to_json() for r in self.rounds]}

    def line(self) -> str:
        sizes = ", ".join(f"{r.images:,}" for r in self.rounds)
        members = " -> ".join(str(len(r.scores)) for r in self.rounds)
        seconds = sum(r.seconds for r in self.rounds)
        return (f"halving: {len(self.rounds)} round(s) on {sizes} images ({members} members): {self.images_embedded:,} "
                f"images embedded in {seconds:.1f}s; full scoring embeds {self.full_images:,}")


def sample_sizes(n: int, members: int, budget: int, num_classes: int, eta: int = ETA) -> list[int]:
    """The rounds' sample sizes: growing by ``eta`` up to ``n``, enough rounds that the last (on all
    ``n``) scores at most ``eta`` x ``budget`` members, the first at least max(MIN_IMAGES, 4 per
    class) images (rounds that would fall below it are merged)."""
    rounds = max(1, math.ceil(math.log(max(members / max(budget, 1), 1.0), eta)))
    floor = min(n, max(MIN_IMAGES, 4 * num_classes))
    sizes = sorted({max(floor, math.ceil(n / eta ** (rounds - 1 - r))) for r in range(rounds)})
    return sizes


class _Features:
    """Each member's features (and upstream source probabilities) on the first ``have`` images of
    the order, grown as rounds need more."""

    def __init__(self, library: Library, task: Task, order: np.ndarray, cache: EmbeddingCache,
                 batch_size: int, device: torch.device, source: bool) -> None:
        self.library, self.task, self.order, self.cache = library, task, order, cache
        self.batch_size, self.device, self.source = batch_size, device, source
        self.parts: dict[str, dict[str, torch.Tensor]] = {}
        self.stats = EmbedStats()

    def _cached(self, name: str) -> dict[str, torch.Tensor] | None:
        key = cache_key(self.task, self.library.info(name).preprocessing)
        entry = self.cache.get(self.library.verified_hash(name), key, "trainval")
        if entry is None:
            return None
        idx = torch.from_numpy(self.order)
        return {k: v[idx] for k, v in entry.items()}

    def get(self, name: str, size: int) -> tuple[dict[str, torch.Tensor], int]:
        """The member's outputs on the first ``size`` images of the order, and how many images were
        embedded to get them."""
        have = self.parts.get(name)
        if have is None and (have := self._cached(name)) is not None:
            self.parts[name] = have
            self.stats.cached += 1
        n_have = 0 if have is None else have["features"].shape[0]
        if n_have >= size:
            return {k: v[:size] for k, v in have.items()}, 0  # type: ignore[union-attr]
        model = self.library.load(name)
        outputs = ("features", "upstream_logits") if self.source and upstream_head(model) is not None else ("features",)
        rows = torch.from_numpy(self.order[n_have:size])
        new = forward_batches(model, take(self.task.trainval.images, rows), outputs, self.batch_size, self.device)
        merged = new if have is None else {k: torch.cat([have[k], new[k]]) for k in new}
        self.parts[name] = merged
        self.stats.images += size - n_have
        if size == len(self.order):  # a full pass: into the cache, in the task's own order
            inverse = torch.from_numpy(np.argsort(self.order))
            self.cache.put(self.library.verified_hash(name),
                           cache_key(self.task, self.library.info(name).preprocessing), "trainval",
                           {k: v[inverse] for k, v in merged.items()})
        return merged, size - n_have


def _score(library: Library, spec, outputs: dict[str, torch.Tensor], labels: torch.Tensor, name: str) -> float:
    if spec.input == "features":
        kwargs = {"n_train": int(round(0.8 * len(labels)))} if spec.needs_split else {}
        return float(spec.fn(outputs["features"], labels, name=name, **kwargs))
    if "upstream_logits" not in outputs:
        return UNSCORED  # no upstream head: LEEP and NCE cannot score it
    return float(spec.fn(source_probabilities(library, outputs["upstream_logits"]), labels.numpy(), name=name))


def halving_selection(library: Library, task: Task, proxy: str, budget: int, pool: list[str],
                      ctx: RunContext = RunContext(), batch_size: int = 500) -> tuple[Selection, HalvingReport, EmbedStats]:
    """Rank ``pool`` for ``task`` by ``proxy`` with successive halving (see the module docstring)."""
    spec = get_proxy(proxy)
    if not 1 <= budget <= len(pool):
        raise ConfigError(f"--budget must be between 1 and the pool size {len(pool)}, got {budget}")
    t_start = time.perf_counter()
    labels_all = task.trainval.labels
    order = stratified_order(labels_all.numpy(), derive_seed(ctx.seed, "halving", task.name))
    feats = _Features(library, task, order, ctx.cache or EmbeddingCache(None), batch_size, torch.device(ctx.device),
                      spec.input != "features")
    report = HalvingReport(full_images=len(pool) * len(order))
    survivors, dropped = list(pool), []
    sizes = sample_sizes(len(order), len(pool), budget, task.num_classes)
    for i, size in enumerate(sizes):
        t0 = time.perf_counter()
        labels = labels_all[torch.from_numpy(order[:size])]
        scores, embedded = {}, 0
        for name in survivors:
            outputs, new = feats.get(name, size)
            embedded += new
            scores[name] = _score(library, spec, outputs, labels, name)
        report.rounds.append(Round(size, scores, embedded, time.perf_counter() - t0))
        ranked = sorted(survivors, key=lambda n: (-scores[n], pool.index(n)))
        if i == len(sizes) - 1:
            survivors = ranked
            break
        keep = max(budget, math.ceil(len(survivors) / ETA))
        survivors = ranked[:keep]
        dropped = [(n, scores[n]) for n in ranked[keep:]] + dropped  # later rounds' losers first
    final = report.rounds[-1].scores
    ranking = tuple([(n, final[n]) for n in survivors] + dropped)
    seconds = time.perf_counter() - t_start
    selection = Selection(proxy, ranking, tuple(n for n, _ in ranking[:budget]),
                          {"halving": seconds}, len(order))
    feats.stats.seconds = seconds
    return selection, report, feats.stats
