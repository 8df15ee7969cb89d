"""Selection over a library: :func:`run_selection` looks a strategy up in the registry
(:mod:`expertise.select.registry`, which says what each strategy reads), embeds only the members
it reads, ranks, and reports the cost of each stage. Adapter experts of one bank are embedded in
one pass that computes the shared stem once."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from expertise.data.tasks import Task
from expertise.errors import ConfigError
from expertise.library import Library
from expertise.models.adapters import embed_images_with_experts
from expertise.runtime import RunContext, derive_seed
from expertise.select.embed import EmbeddingCache, EmbedStats, PoolEmbeddings, cache_key, embed_pool, upstream_head
from expertise.select.halving import SEARCHES, HalvingReport, halving_selection
from expertise.select.proxy_registry import get_proxy
from expertise.select.registry import Inputs, get_strategy, proxy_strategies, source_probabilities
from expertise.select.strategies import Selection
from expertise.select.uncertainty import DEFAULT_RESAMPLES, PerImage, Uncertainty, check_resamples, paired_bootstrap

POOL_KINDS = ("baseline", "full_expert", "adapter_expert", "external")


def pool_names(library: Library) -> list[str]:
    """Every member that can be fine-tuned on a task (the EPN is a router, not a pool member)."""
    return [m.name for m in library.members() if m.kind in POOL_KINDS]


@dataclass
class SelectionRun:
    """A strategy's ranking of the pool for one task, with the proxy used and what it cost, and,
    for a strategy that reads a proxy, how sure its scores are (``uncertainty``; None when the
    bootstrap was turned off or the strategy reads no proxy)."""

    selection: Selection
    task: str
    proxy: str | None
    embed: EmbedStats = field(default_factory=EmbedStats)
    members_embedded: list[str] = field(default_factory=list)
    images_per_member: int = 0
    uncertainty: Uncertainty | None = None
    search: HalvingReport | None = None  # --search halving: its rounds and cost against full scoring

    @property
    def seconds(self) -> dict[str, float]:
        s = dict(self.selection.seconds)
        s["total"] = sum(v for k, v in s.items())
        return s

    @property
    def label(self) -> str:
        """``knn_loo`` for a proxy strategy, ``hybrid(knn_loo)``, or the strategy's name."""
        strategy = self.selection.strategy
        if self.proxy is None:
            return strategy
        return self.proxy if strategy == self.proxy else f"{strategy}({self.proxy})"

    def embedded_by(self, units: list) -> SelectionRun:
        """This run with the embedding its ``embed`` units did just before it (``units``: their
        :class:`~expertise.store.Unit` s; those computed now, not read back) counted as its own: the
        images, the seconds, and those members no longer counted as read from the cache."""
        now = [u for u in units if u.computed]
        if not now:
            return self
        images = sum(int(u.images.get("embed", 0)) for u in now)
        seconds = sum(float(u.seconds.get("embed", 0.0)) for u in now)
        stats = EmbedStats(self.embed.seconds + seconds, self.embed.images + images, max(0, self.embed.cached - len(now)))
        sel = self.selection
        spent = {**sel.seconds, "embed": sel.seconds.get("embed", 0.0) + seconds}
        return SelectionRun(Selection(sel.strategy, sel.ranking, sel.picks, spent, sel.images), self.task, self.proxy,
                            stats, self.members_embedded, self.images_per_member, self.uncertainty, self.search)

    def to_json(self) -> dict:
        sel = self.selection.to_json()
        sel["ranking"] = [[n, None if not math.isfinite(s) else s] for n, s in sel["ranking"]]
        return {
            **sel, "task": self.task, "strategy": self.label, "proxy": self.proxy, "seconds": self.seconds,
            "members_embedded": self.members_embedded, "images_per_member": self.images_per_member,
            # The cost of the selection on a cold cache: every needed member sees every image once.
            "images_needed": self.images_per_member * len(self.members_embedded),
            "embedded_now": self.embed.images, "cached_members": self.embed.cached,
            "uncertainty": None if self.uncertainty is None else self.uncertainty.to_json(),
            "search": "full" if self.search is None else self.search.to_json(),
        }


def _check_budget(budget: int, pool: list[str]) -> None:
    if not pool:
        raise ConfigError("the pool is empty: add members to the library first")
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= len(pool):
        raise ConfigError(f"budget must be an integer between 1 and the pool size {len(pool)}, got {budget!r}")


def run_selection(library: Library, task: Task, strategy: str = "proxy", budget: int = 1, proxy: str = "knn_loo",
                  names: list[str] | None = None, ctx: RunContext = RunContext(), batch_size: int = 500,
                  resamples: int = DEFAULT_RESAMPLES, search: str = "full") -> SelectionRun:
    """Rank the pool (``names``, default :func:`pool_names`) for ``task`` with ``strategy`` and
    pick ``budget`` members. ``proxy`` is the task-aware score of the strategies that read features
    (``proxy`` and ``hybrid``). ``ctx`` gives the embedding cache (none: embed in memory), the
    device, the progress flag and the seed (the random strategy's draw per task, and the
    bootstrap's). ``resamples``: paired bootstrap resamples of the proxy's scores over the task's
    images (:mod:`expertise.select.uncertainty`; 0: none); the ranking and picks do not depend on it."""
    spec = get_strategy(strategy)
    resamples = check_resamples(resamples)
    if spec.uses_proxy:
        get_proxy(proxy)  # an unknown proxy fails before anything is embedded
    pool = list(names) if names is not None else pool_names(library)
    for n in pool:
        library.info(n)  # unknown names fail with a did-you-mean
    _check_budget(budget, pool)
    if search != "full":
        return _halving(library, task, spec.name, proxy, budget, pool, ctx, batch_size, search)
    embedded = spec.members_to_embed(library, pool)
    cache = ctx.cache or EmbeddingCache(None)
    emb = _embed(library, task, cache, embedded, batch_size, ctx.device, ctx.progress) if embedded else None
    per_image: dict[str, PerImage] | None = {} if spec.uses_proxy and resamples else None
    sel = spec.rank(Inputs(library, task, pool, budget, proxy, ctx.seed, emb, per_image))
    used_proxy = proxy if spec.uses_proxy else None
    unc = None
    if per_image is not None:
        scores = sel.scores()
        unc = paired_bootstrap(proxy, {n: scores[n] for n in pool}, per_image, task.trainval.labels.numpy(), resamples,
                               derive_seed(ctx.seed, "bootstrap", task.name, proxy))
    if emb is None:
        return SelectionRun(sel, task.name, used_proxy, uncertainty=unc)
    n_images = len(task.trainval)
    sel = Selection(sel.strategy, sel.ranking, sel.picks, {"embed": emb.stats.seconds, **sel.seconds}, n_images)
    return SelectionRun(sel, task.name, used_proxy, emb.stats, list(embedded), n_images, unc)


def _halving(library: Library, task: Task, strategy: str, proxy: str, budget: int, pool: list[str], ctx: RunContext,
             batch_size: int, search: str) -> SelectionRun:
    """``search="halving"``: a strategy that reads a proxy (``proxy``, ``hybrid``) with its
    task-aware ranking made by successive halving (:mod:`.halving`) instead of full scoring; the
    strategy ranks from it as usual (``hybrid``: the task-agnostic top-1, then the halving ranking).
    No bootstrap, since the members' scores come from samples of different sizes."""
    if search not in SEARCHES:
        raise ConfigError(f"unknown search {search!r}; choose one of: {', '.join(SEARCHES)}")
    spec = get_strategy(strategy)
    if not spec.uses_proxy:
        raise ConfigError(f"--search {search} ranks by a proxy: use it with a strategy that reads one "
                          f"({', '.join(proxy_strategies())}), not {strategy!r}")
    aware, report, stats = halving_selection(library, task, proxy, budget, pool, ctx, batch_size)
    sel = spec.rank(Inputs(library, task, pool, budget, proxy, ctx.seed, None, aware=aware))
    return SelectionRun(sel, task.name, proxy, stats, list(pool), len(task.trainval), None, report)


def _embed(library: Library, task: Task, cache: EmbeddingCache, names: list[str], batch_size: int,
           device: torch.device, progress: bool) -> PoolEmbeddings:
    t0 = time.perf_counter()
    shared = prefill_adapter_banks(library, task, cache, names, batch_size, device)
    emb = embed_pool(names, library.load, library.verified_hash, task, cache, "trainval", batch_size, device, progress,
                     preprocessing=lambda n: library.info(n).preprocessing)
    emb.stats.cached -= shared
    emb.stats.images += shared * len(task.trainval)
    emb.stats.seconds = time.perf_counter() - t0
    return emb


@torch.inference_mode()
def prefill_adapter_banks(library: Library, task: Task, cache: EmbeddingCache, names: list[str], batch_size: int,
                          device: torch.device) -> int:
    """Embed the task with the adapter experts among ``names`` that are not cached yet, one pass
    per bank: each batch is prepared and its stem computed once, then every expert applies its own
    adapters and ignores the others' (paper 000, section 5). Features and upstream logits go to
    the cache, where :func:`embed_pool` finds them. Returns how many members were embedded.
    Without a cache there is nowhere to hand the features over, so nothing is done."""
    if cache.root is None:
        return 0
    banks: dict[str, list[str]] = {}
    for n in names:
        info = library.info(n)
        bank = info.extra.get("bank")
        if info.kind == "adapter_expert" and isinstance(bank, str) and \
                not cache.has(library.verified_hash(n), cache_key(task, info.preprocessing), "trainval"):
            banks.setdefault(bank, []).append(n)
    done = 0
    for bank_path, members in banks.items():
        if len(members) < 2:
            continue  # nothing to share: embed_pool loads the one expert as usual
        bank = library.load_adapter_bank(Path(bank_path).stem)
        nodes = [str(library.info(n).extra["node"]) for n in members]
        feats = embed_images_with_experts(bank, task.trainval.images, nodes, batch_size, device)
        head = upstream_head(bank.expert(nodes[0]))
        for n, node in zip(members, nodes):
            entry = {"features": feats[node]}
            if head is not None:
                entry["upstream_logits"] = head.to("cpu")(feats[node]).float()
            cache.put(library.verified_hash(n), cache_key(task, library.info(n).preprocessing), "trainval", entry)
            done += 1
    return done


def ranking_table(run: SelectionRun, library: Library) -> list[dict]:
    """Rows for display: rank, member, kind, domain, score (None when unscored), picked; and from
    the bootstrap (None without one): interval, tied_with_best, best (the top score), at_chance."""
    picks = set(run.selection.picks)
    unc = run.uncertainty.members if run.uncertainty is not None else {}
    best = run.uncertainty.best if run.uncertainty is not None else None
    rows = []
    for i, (n, s) in enumerate(run.selection.ranking, 1):
        u = unc.get(n)
        rows.append({"rank": i, "member": n, "kind": library.info(n).kind, "domain": library.info(n).domain,
                     "score": s if math.isfinite(s) else None, "picked": n in picks,
                     "interval": None if u is None else u.interval, "tied_with_best": None if u is None else u.tied_with_best,
                     "best": n == best, "at_chance": None if u is None else u.at_chance})
    return rows


__all__ = ["POOL_KINDS", "SelectionRun", "pool_names", "ranking_table", "run_selection", "source_probabilities"]
