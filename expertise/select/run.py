"""Selection over a library: every strategy of :mod:`expertise.select.strategies` wired to what it
needs from the library and the task, with the cost of each stage.

What each strategy reads:

==================  ======================================================================
``random``          the pool's names and a seed (per task, so tasks get different draws)
``task_agnostic``   the manifest: upstream holdout accuracy, upstream images, parameters
``proxy``           one embedding pass of the task's 1,000 train+val images per member, then
                    the proxy (``knn_loo`` by default; ``leep`` and ``nce`` read the member's
                    upstream predictions from the same pass)
``label_matching``  the baseline B's upstream predictions on the task (one member embedded)
                    and every member's label prior
``domain_prediction`` the library's expert prediction network on the task (one pass)
``hybrid``          ``task_agnostic`` top-1 plus the ``proxy`` ranking
==================  ======================================================================

Members a strategy cannot score (no label prior, no EPN domain, no upstream head for LEEP) follow
the scored members in pool order with score ``-inf``, so every strategy ranks the whole pool and
budgets up to the pool size always work.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from expertise.data.tasks import Task
from expertise.errors import ConfigError, LibraryError
from expertise.library import Library
from expertise.runtime import derive_seed
from expertise.models.adapters import embed_images_with_experts
from expertise.select.embed import EmbeddingCache, EmbedStats, PoolEmbeddings, embed_pool, upstream_head
from expertise.select.proxies import get_proxy
from expertise.select.scoring import score_pool
from expertise.select.strategies import (
    STRATEGIES, Selection, domain_prediction, hybrid, label_matching, random_selection, rank, select_by_proxy,
    select_by_scores,
    task_agnostic, task_label_distribution,
)

POOL_KINDS = ("baseline", "full_expert", "adapter_expert", "external")
UNSCORED = -math.inf


def pool_names(library: Library) -> list[str]:
    """Every member that can be fine-tuned on a task (the EPN is a router, not a pool member)."""
    return [m.name for m in library.members() if m.kind in POOL_KINDS]


def _first_of_kind(library: Library, kind: str, what: str) -> str:
    for m in library.members():
        if m.kind == kind:
            return m.name
    raise LibraryError(f"the library at {library.path} has no {kind} member, which {what} needs; "
                       "build one with 'expertise upstream' (the EPN is trained with the experts)")


def source_probabilities(library: Library, logits: torch.Tensor) -> np.ndarray:
    """A member's upstream predictive distribution per image, float64 [N, Z], for LEEP and NCE.

    Our upstream heads are sigmoid heads over every hierarchy node, but the leaves are mutually
    exclusive (each upstream image has one leaf), so the distribution over source labels is the
    softmax over the leaf logits. A head of another width (an external classifier) is a softmax
    head over its own classes."""
    x = logits.double()
    h = library.hierarchy
    if h is not None and x.shape[1] == len(h.label_nodes):
        x = x[:, [h.label_index[leaf] for leaf in h.leaves]]
    return torch.softmax(x, dim=1).numpy()


@dataclass
class SelectionRun:
    """A strategy's ranking of the pool for one task, with the proxy used and what it cost."""

    selection: Selection
    task: str
    proxy: str | None
    embed: EmbedStats = field(default_factory=EmbedStats)
    members_embedded: list[str] = field(default_factory=list)
    images_per_member: int = 0

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

    def to_json(self) -> dict:
        sel = self.selection.to_json()
        sel["ranking"] = [[n, None if not math.isfinite(s) else s] for n, s in sel["ranking"]]
        return {
            **sel, "task": self.task, "strategy": self.label, "proxy": self.proxy, "seconds": self.seconds,
            "members_embedded": self.members_embedded, "images_per_member": self.images_per_member,
            # The cost of the selection on a cold cache: every needed member sees every image once.
            "images_needed": self.images_per_member * len(self.members_embedded),
            "embedded_now": self.embed.images, "cached_members": self.embed.cached,
        }


def _complete(sel: Selection, pool: list[str], budget: int) -> Selection:
    """Append the members ``sel`` did not score, in pool order with score -inf; picks are the
    first ``budget`` of the whole ranking."""
    scored = {n for n, _ in sel.ranking}
    ranking = list(sel.ranking) + [(n, UNSCORED) for n in pool if n not in scored]
    return Selection(sel.strategy, tuple(ranking), tuple(n for n, _ in ranking[:budget]), sel.seconds, sel.images)


def _check_budget(budget: int, pool: list[str]) -> None:
    if not pool:
        raise ConfigError("the pool is empty: add members to the library first")
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= len(pool):
        raise ConfigError(f"budget must be an integer between 1 and the pool size {len(pool)}, got {budget!r}")


def run_selection(library: Library, task: Task, strategy: str = "proxy", budget: int = 1, proxy: str = "knn_loo",
                  cache: EmbeddingCache | None = None, names: list[str] | None = None, seed: int = 0,
                  device: torch.device = torch.device("cpu"), batch_size: int = 500,
                  progress: bool = True) -> SelectionRun:
    """Rank the pool (``names``, default :func:`pool_names`) for ``task`` with ``strategy`` and
    pick ``budget`` members. ``proxy`` is the task-aware score of ``proxy`` and ``hybrid``."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    pool = list(names) if names is not None else pool_names(library)
    for n in pool:
        library.info(n)  # unknown names fail with a did-you-mean
    _check_budget(budget, pool)
    cache = cache or EmbeddingCache(None)
    embed = functools.partial(_embed, library, task, cache, batch_size=batch_size, device=device, progress=progress)
    n_images = len(task.trainval)
    uses_proxy = strategy in ("proxy", "hybrid")

    if strategy == "random":
        sel = random_selection(pool, budget, derive_seed(seed, "random", task.name))
        return SelectionRun(sel, task.name, None)
    if strategy == "task_agnostic":
        return SelectionRun(task_agnostic([library.info(n) for n in pool], budget), task.name, None)
    if uses_proxy:
        emb = embed(pool)
        aware = _score_proxy(library, task, proxy, emb, pool, budget)
        if strategy == "hybrid":
            sel = hybrid(task_agnostic([library.info(n) for n in pool], budget), aware, budget)
        else:
            sel = aware
        return _run(sel, task, proxy, emb, pool, n_images)
    if strategy == "label_matching":
        base = _first_of_kind(library, "baseline", "label matching")
        emb = embed([base])
        if base not in emb.upstream_logits:
            raise LibraryError(f"the baseline {base!r} has no upstream head; label matching needs its upstream predictions")
        t0 = time.perf_counter()
        dist = task_label_distribution(torch.sigmoid(emb.upstream_logits[base].double()))
        priors = {n: p for n in pool if (p := library.label_prior(n)) is not None}
        if not priors:
            raise LibraryError("no member of the pool has a label prior; label matching needs upstream experts")
        sel = label_matching(dist, priors, min(budget, len(priors)))
        sel = Selection(sel.strategy, sel.ranking, sel.picks, {"score": time.perf_counter() - t0}, n_images)
        return _run(_complete(sel, pool, budget), task, None, emb, [base], n_images)
    # domain_prediction
    epn = _first_of_kind(library, "epn", "domain prediction")
    nodes = list(library.info(epn).extra.get("nodes", []))
    emb = embed([epn])
    t0 = time.perf_counter()
    experts = [n for n in pool if library.info(n).domain in nodes and library.info(n).kind != "baseline"]
    if not experts:
        raise LibraryError(f"no pool member is an expert for a domain the EPN {epn!r} predicts ({nodes[:5]}); "
                           "build experts for those nodes or choose another strategy")
    probs = torch.sigmoid(emb.upstream_logits[epn].double()).numpy()
    cols = [nodes.index(library.info(n).domain) for n in experts]
    sel = domain_prediction(probs[:, cols], experts, min(budget, len(experts)))
    sel = Selection(sel.strategy, sel.ranking, sel.picks, {"score": time.perf_counter() - t0}, n_images)
    return _run(_complete(sel, pool, budget), task, None, emb, [epn], n_images)


def _embed(library: Library, task: Task, cache: EmbeddingCache, names: list[str], batch_size: int,
           device: torch.device, progress: bool) -> PoolEmbeddings:
    t0 = time.perf_counter()
    shared = prefill_adapter_banks(library, task, cache, names, batch_size, device)
    emb = embed_pool(names, library.load, library.member_hash, task, cache, "trainval", batch_size, device, progress)
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
    key = task.fingerprint()
    banks: dict[str, list[str]] = {}
    for n in names:
        info = library.info(n)
        bank = info.extra.get("bank")
        if info.kind == "adapter_expert" and isinstance(bank, str) and not cache.has(library.member_hash(n), key, "trainval"):
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
            cache.put(library.member_hash(n), key, "trainval", entry)
            done += 1
    return done


def _score_proxy(library: Library, task: Task, proxy: str, emb: PoolEmbeddings, pool: list[str],
                 budget: int) -> Selection:
    spec = get_proxy(proxy)
    if spec.input == "features":
        # One decomposition per member, on the features' device, batched there (the same scores
        # as spec.fn member by member).
        t0 = time.perf_counter()
        scores = score_pool({n: emb.features[n] for n in pool}, task.trainval.labels, [proxy], n_train=len(task.train))
        sel = select_by_scores(scores[proxy], min(budget, len(pool)), proxy, time.perf_counter() - t0)
        return _complete(sel, pool, budget)
    inputs = {n: source_probabilities(library, emb.upstream_logits[n]) for n in pool if n in emb.upstream_logits}
    if not inputs:
        raise LibraryError(f"proxy {proxy!r} needs upstream predictions, and no pool member has an upstream head")
    sel = select_by_proxy(inputs, task.trainval.labels, spec.fn, min(budget, len(inputs)), name=proxy)
    return _complete(sel, pool, budget)


def _run(sel: Selection, task: Task, proxy: str | None, emb: PoolEmbeddings, embedded: list[str],
         n_images: int) -> SelectionRun:
    seconds = {"embed": emb.stats.seconds, **sel.seconds}
    sel = Selection(sel.strategy, sel.ranking, sel.picks, seconds, n_images)
    return SelectionRun(sel, task.name, proxy, emb.stats, list(embedded), n_images)


def ranking_table(run: SelectionRun, library: Library) -> list[dict]:
    """Rows for display: rank, member, kind, domain, score (None when unscored), picked."""
    picks = set(run.selection.picks)
    return [{"rank": i, "member": n, "kind": library.info(n).kind, "domain": library.info(n).domain,
             "score": s if math.isfinite(s) else None, "picked": n in picks}
            for i, (n, s) in enumerate(run.selection.ranking, 1)]


__all__ = ["POOL_KINDS", "SelectionRun", "pool_names", "ranking_table", "rank", "run_selection", "source_probabilities"]
