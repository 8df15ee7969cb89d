"""The strategy registry: each selection strategy declares what it reads and how it ranks, like the
proxies' :class:`~expertise.select.proxies.ProxySpec`. :func:`expertise.select.run.run_selection`
looks a strategy up, computes only what it reads, and ranks; the CLI's help, the demo's rows and the
benchmark's default rows all come from here, so adding a strategy is one :func:`register` call.

What a strategy may read (``Strategy.reads``):

=======================  ========================================================================
``metadata``             the manifest: upstream accuracy, images, parameters (nothing runs)
``seed``                 a seed per task (so tasks get different draws)
``features``             one embedding pass of the task's 1,000 train+val images per pool member
                         (features and, from the same pass, upstream logits for LEEP and NCE)
``baseline_predictions`` B's upstream predictions on the task (one member embedded)
``label_priors``         every member's upstream label distribution, from the library
``epn_predictions``      the expert prediction network's routing probabilities (one pass)
=======================  ========================================================================

Members a strategy cannot score (no label prior, no EPN domain, no upstream head for LEEP) follow
the scored members in pool order with score ``-inf``, so every strategy ranks the whole pool and
budgets up to the pool size always work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from expertise.data.tasks import Task
from expertise.errors import LibraryError
from expertise.library import Library
from expertise.runtime import derive_seed
from expertise.select.embed import PoolEmbeddings
from expertise.registry import Registry
from expertise.select.proxy_registry import get_proxy
from expertise.select.scoring import score_pool
from expertise.select.source_proxies import leep_terms, nce_terms
from expertise.select.strategies import (
    Selection, domain_prediction, hybrid, label_matching, random_selection, select_by_proxy, select_by_scores,
    task_agnostic, task_label_distribution,
)
from expertise.select.uncertainty import PerImage

READS = frozenset({"metadata", "seed", "features", "baseline_predictions", "label_priors", "epn_predictions"})
UNSCORED = -math.inf


@dataclass(frozen=True)
class Inputs:
    """What :func:`~expertise.select.run.run_selection` computed for a strategy: the pool, the
    budget, the task-aware proxy, the seed, and the embeddings of the members it embeds.
    ``per_image``: when given, the task-aware proxy fills it with each scored member's per-image
    terms (:mod:`expertise.select.uncertainty`), where the proxy has them. ``aware``: the
    task-aware ranking already made by a search (``--search halving``), which :func:`score_proxy`
    returns instead of scoring the embeddings (there are none then)."""

    library: Library
    task: Task
    pool: list[str]
    budget: int
    proxy: str
    seed: int
    embeddings: PoolEmbeddings | None
    per_image: dict[str, PerImage] | None = None
    aware: Selection | None = None


@dataclass(frozen=True)
class Row:
    """A default row of the demo and the benchmark: its label, its proxy, where it stands among
    the rows, and the budget the demo shows it at."""

    label: str
    position: int
    proxy: str | None = None
    demo_budget: int = 1


@dataclass(frozen=True)
class Strategy:
    name: str
    reads: frozenset[str]
    help: str
    rank: Callable[[Inputs], Selection]
    rows: tuple[Row, ...]

    @property
    def uses_proxy(self) -> bool:
        """Whether the task-aware proxy decides its ranking (``--proxy`` applies)."""
        return "features" in self.reads

    def members_to_embed(self, library: Library, pool: list[str]) -> list[str]:
        """The members whose embedding pass it reads: the pool, B, the EPN, or none."""
        if "features" in self.reads:
            return pool
        if "baseline_predictions" in self.reads:
            return [first_of_kind(library, "baseline", self.name.replace("_", " "))]
        if "epn_predictions" in self.reads:
            return [first_of_kind(library, "epn", self.name.replace("_", " "))]
        return []


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register(name: str, reads: set[str], help: str, rows: tuple[Row, ...]):
    """Decorator: register ``rank(inputs) -> Selection`` as strategy ``name``."""
    unknown = set(reads) - READS
    if unknown:
        raise ValueError(f"strategy {name!r} reads unknown inputs {sorted(unknown)}; known: {sorted(READS)}")

    def deco(fn: Callable[[Inputs], Selection]) -> Callable[[Inputs], Selection]:
        STRATEGIES.register(name, Strategy(name, frozenset(reads), help, fn, rows))
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; one line naming the closest and every strategy otherwise."""
    return STRATEGIES.get(name)


def default_rows() -> list[tuple[Row, Strategy]]:
    """Every strategy's default rows, in row order: what the demo shows and the benchmark runs."""
    return sorted(((row, s) for s in STRATEGIES.values() for row in s.rows), key=lambda rs: rs[0].position)


def proxy_strategies() -> list[str]:
    """The strategies whose ranking a task-aware proxy decides (``--proxy``, ``--search halving``)."""
    return [n for n, s in STRATEGIES.items() if s.uses_proxy]


def strategies_help() -> str:
    return "; ".join(f"{s.name}: {s.help}" for s in STRATEGIES.values())


# -- helpers shared by the strategies ------------------------------------------------------------
def first_of_kind(library: Library, kind: str, what: str) -> str:
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
        x = h.leaf_logits(x)
    return torch.softmax(x, dim=1).numpy()


def complete(sel: Selection, pool: list[str], budget: int) -> Selection:
    """Append the members ``sel`` did not score, in pool order with score -inf; picks are the
    first ``budget`` of the whole ranking."""
    scored = {n for n, _ in sel.ranking}
    ranking = list(sel.ranking) + [(n, UNSCORED) for n in pool if n not in scored]
    return Selection(sel.strategy, tuple(ranking), tuple(n for n, _ in ranking[:budget]), sel.seconds, sel.images)


def _embeddings(i: Inputs) -> PoolEmbeddings:
    assert i.embeddings is not None, "run_selection embeds what the strategy reads"
    return i.embeddings


def scoring_workers(features: Iterable[object]) -> int:
    """Members scored at once: on the CPU, one per thread the run may use (each worker single-threaded:
    ``score_pool``'s parallel members beat parallel BLAS on a few cores, with the same scores; measured
    in BENCHMARKS.md, "Proxy scoring at pool scale"); features on an accelerator, 1 (batched there)."""
    on_cpu = all(not isinstance(f, torch.Tensor) or f.device.type == "cpu" for f in features)
    return max(1, torch.get_num_threads()) if on_cpu else 1


def score_proxy(i: Inputs) -> Selection:
    """The task-aware ranking: ``i.proxy`` on every pool member's embeddings. Feature proxies go
    through :func:`~expertise.select.scoring.score_pool` (one decomposition per member, on the
    features' device); LEEP and NCE read the members' upstream predictions. A ranking a search
    already made (``i.aware``) is returned as it is."""
    if i.aware is not None:
        return i.aware
    emb, task = _embeddings(i), i.task
    spec = get_proxy(i.proxy)
    if spec.input == "features":
        t0 = time.perf_counter()
        terms: dict[str, dict[str, PerImage]] | None = {} if i.per_image is not None else None
        feats = {n: emb.features[n] for n in i.pool}
        scores = score_pool(feats, task.trainval.labels, [i.proxy], n_train=len(task.train), per_image=terms,
                            workers=scoring_workers(feats.values()))
        sel = select_by_scores(scores[i.proxy], min(i.budget, len(i.pool)), i.proxy, time.perf_counter() - t0)
        if i.per_image is not None and terms:
            i.per_image.update(terms.get(i.proxy, {}))
        return complete(sel, i.pool, i.budget)
    inputs = {n: source_probabilities(i.library, emb.upstream_logits[n]) for n in i.pool if n in emb.upstream_logits}
    if not inputs:
        raise LibraryError(f"proxy {i.proxy!r} needs upstream predictions, and no pool member has an upstream head")
    sel = select_by_proxy(inputs, task.trainval.labels, spec.fn, min(i.budget, len(inputs)), name=i.proxy)
    if i.per_image is not None and i.proxy in SOURCE_TERMS:
        labels = task.trainval.labels.numpy()
        rows = np.arange(len(labels), dtype=np.int64)
        i.per_image.update({n: PerImage(SOURCE_TERMS[i.proxy](p, labels, n)[None], rows) for n, p in inputs.items()})
    return complete(sel, i.pool, i.budget)


# The per-image terms of the proxies of upstream predictions (feature proxies' come from score_pool).
SOURCE_TERMS = {"leep": leep_terms, "nce": nce_terms}


def _timed(sel: Selection, t0: float, n_images: int) -> Selection:
    return Selection(sel.strategy, sel.ranking, sel.picks, {"score": time.perf_counter() - t0}, n_images)


# -- the strategies, in the order their names are listed ------------------------------------------
@register("random", {"seed"}, "a seeded random permutation (per task)", (Row("random", 8),))
def _random(i: Inputs) -> Selection:
    return random_selection(i.pool, i.budget, derive_seed(i.seed, "random", i.task.name))


@register("task_agnostic", {"metadata"}, "upstream accuracy alone, the same for every task (paper 002)",
          (Row("task_agnostic", 6),))
def _task_agnostic(i: Inputs) -> Selection:
    return task_agnostic([i.library.info(n) for n in i.pool], i.budget)


@register("domain_prediction", {"epn_predictions"},
          "geometric mean of the expert prediction network's probabilities on the task (no labels)",
          (Row("domain_prediction", 5),))
def _domain_prediction(i: Inputs) -> Selection:
    emb = _embeddings(i)
    epn = next(iter(emb.features))  # the one member embedded: the EPN
    nodes = list(i.library.info(epn).extra.get("nodes", []))
    t0 = time.perf_counter()
    experts = [n for n in i.pool if i.library.info(n).domain in nodes and i.library.info(n).kind != "baseline"]
    if not experts:
        raise LibraryError(f"no pool member is an expert for a domain the EPN {epn!r} predicts ({nodes[:5]}); "
                           "build experts for those nodes or choose another strategy")
    probs = torch.sigmoid(emb.upstream_logits[epn].double()).numpy()
    cols = [nodes.index(i.library.info(n).domain) for n in experts]
    sel = domain_prediction(probs[:, cols], experts, min(i.budget, len(experts)))
    return complete(_timed(sel, t0, len(i.task.trainval)), i.pool, i.budget)


@register("label_matching", {"baseline_predictions", "label_priors"},
          "KL(task's predicted upstream labels || each expert's label prior) (no labels)",
          (Row("label_matching", 4),))
def _label_matching(i: Inputs) -> Selection:
    emb = _embeddings(i)
    base = next(iter(emb.features))  # the one member embedded: B
    if base not in emb.upstream_logits:
        raise LibraryError(f"the baseline {base!r} has no upstream head; label matching needs its upstream predictions")
    t0 = time.perf_counter()
    dist = task_label_distribution(torch.sigmoid(emb.upstream_logits[base].double()))
    priors = {n: p for n in i.pool if (p := i.library.label_prior(n)) is not None}
    if not priors:
        raise LibraryError("no member of the pool has a label prior; label matching needs upstream experts")
    sel = label_matching(dist, priors, min(i.budget, len(priors)))
    return complete(_timed(sel, t0, len(i.task.trainval)), i.pool, i.budget)


@register("proxy", {"features"}, "a transferability proxy on every member's embeddings (--proxy, default knn_loo)",
          (Row("knn_loo", 0, "knn_loo"), Row("linear_probe", 1, "linear_probe"), Row("logme", 2, "logme"),
           Row("leep", 3, "leep")))
def _proxy(i: Inputs) -> Selection:
    return score_proxy(i)


@register("hybrid", {"features", "metadata"}, "task-agnostic top-1 plus the proxy's top-(B-1) (paper 002)",
          (Row("hybrid(knn_loo)", 7, "knn_loo", demo_budget=2),))
def _hybrid(i: Inputs) -> Selection:
    return hybrid(task_agnostic([i.library.info(n) for n in i.pool], i.budget), score_proxy(i), i.budget)
