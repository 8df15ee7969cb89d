"""Selection strategies: each ranks a pool for a task and returns ``budget`` distinct members with
their scores and the cost it spent (a :class:`Selection`). Every strategy is deterministic.

- ``proxy`` (:func:`select_by_proxy`): a transferability proxy on each member's embeddings, e.g.
  kNN leave-one-out accuracy (paper 000, section 5);
- ``random`` (:func:`random_selection`): a seeded permutation;
- ``task_agnostic`` (:func:`task_agnostic`): upstream accuracy alone (paper 002, section 2);
- ``label_matching`` (:func:`label_matching`): KL divergence between the task's predicted upstream
  labels and each expert's label prior (paper 000, section 5);
- ``domain_prediction`` (:func:`domain_prediction`): geometric mean of the expert prediction
  network's probabilities (paper 000, section 5; the EPN is in :mod:`expertise.upstream.epn`);
- ``hybrid`` (:func:`hybrid`): task-agnostic top-1 plus task-aware top-(B-1) (paper 002, sec. 5.3).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from expertise.errors import ConfigError, DataError
from expertise.library import MemberInfo

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
    _check_scored_pool(len(features), budget)
    t0 = time.perf_counter()
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    scores = {m: proxy(f.numpy() if isinstance(f, torch.Tensor) else f, y, name=m) for m, f in features.items()}
    return select_by_scores(scores, budget, name or getattr(proxy, "__name__", "proxy"), time.perf_counter() - t0)


def _check_scored_pool(size: int, budget: int) -> None:
    if not size:
        raise ConfigError("the pool is empty: add members to the library first")
    if not 1 <= budget <= size:
        raise ConfigError(f"budget must be between 1 and the pool size {size}, got {budget}")


def select_by_scores(scores: Mapping[str, float], budget: int, name: str, seconds: float) -> Selection:
    """The :class:`Selection` of proxy ``scores`` already computed (e.g. by
    :func:`expertise.select.scoring.score_pool`) in ``seconds``: the top ``budget``."""
    _check_scored_pool(len(scores), budget)
    ranking = rank(dict(scores))
    return Selection(strategy=name, ranking=tuple(ranking), picks=tuple(m for m, _ in ranking[:budget]),
                     seconds={"score": seconds})


# ---------------------------------------------------------------------------------------------
# Strategies beyond the proxy: random, task-agnostic, label matching, domain prediction, hybrid.
# ---------------------------------------------------------------------------------------------

# Floor for EPN probabilities before the log: a member the EPN rules out for one image costs
# log(1e-12) ~ -27.6 there instead of -inf, so one such image cannot veto a member on its own.
PROB_FLOOR = 1e-12
# Score of a member whose upstream accuracy is unknown: below any accuracy in [0, 1], and finite so
# a Selection stays plain JSON.
UNKNOWN_ACCURACY = -1.0


def _check_pool(names: Sequence[str], budget: int, what: str = "pool") -> list[str]:
    """The pool as a list of distinct names; raises when it is empty, repeats a name, or when
    ``budget`` is not an int in [1, pool size]."""
    names = list(names)
    if not names:
        raise ConfigError(f"the {what} is empty: add members to the library first")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"the {what} names {dupes} more than once; pass each member once")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= len(names):
        raise ConfigError(f"budget must be an integer between 1 and the {what} size {len(names)}, got {budget!r}")
    return names


def _selection(strategy: str, ranking: Sequence[tuple[str, float]], budget: int, t0: float,
               images: int = 0) -> Selection:
    ranking = tuple((n, float(s)) for n, s in ranking)
    return Selection(strategy=strategy, ranking=ranking, picks=tuple(n for n, _ in ranking[:budget]),
                     seconds={"score": time.perf_counter() - t0}, images=images)


def random_selection(names: Sequence[str], budget: int, seed: int) -> Selection:
    """A seeded random permutation of the pool (the floor every strategy must beat).

    Scores count down from the pool size (first = len(names), last = 1), so ``rank`` of the scores
    reproduces the permutation. The same (names, seed) always gives the same ranking.
    """
    t0 = time.perf_counter()
    names = _check_pool(names, budget)
    perm = np.random.default_rng(int(seed)).permutation(len(names))
    return _selection("random", [(names[i], len(names) - k) for k, i in enumerate(perm)], budget, t0)


def task_agnostic(infos: Sequence[MemberInfo], budget: int) -> Selection:
    """Rank by upstream accuracy alone, without looking at the task (paper 002, section 2).

    Order: higher ``upstream_accuracy`` first (None counts as lowest); ties go to more
    ``upstream_images``, then more ``parameters`` (the bigger, better-fed model), then pool order.
    The score is the accuracy, or ``UNKNOWN_ACCURACY`` (-1) when it is None.
    """
    t0 = time.perf_counter()
    infos = list(infos)
    _check_pool([i.name for i in infos], budget)

    def key(pos_info: tuple[int, MemberInfo]) -> tuple:
        pos, info = pos_info
        acc = info.upstream_accuracy
        if acc is not None and not math.isfinite(acc):
            raise DataError(f"member {info.name!r} has upstream accuracy {acc}; re-evaluate it on the upstream holdout")
        return (acc is None, -(acc or 0.0), -info.upstream_images, -info.parameters, pos)

    ordered = [info for _, info in sorted(enumerate(infos), key=key)]
    ranking = [(i.name, UNKNOWN_ACCURACY if i.upstream_accuracy is None else i.upstream_accuracy) for i in ordered]
    return _selection("task_agnostic", ranking, budget, t0)


def _as_distribution(v: np.ndarray | torch.Tensor, eps: float, name: str, length: int | None = None) -> np.ndarray:
    """float64 [L] vector of non-negative masses -> (v + eps) / sum(v + eps), a distribution with
    no zero entry (so KL stays finite)."""
    x = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if x.dtype.kind not in "biuf" or x.ndim != 1 or x.size == 0:
        raise DataError(f"{name}: expected a non-empty 1-D numeric vector over upstream label nodes, got {x.dtype} {x.shape}")
    if length is not None and x.size != length:
        raise DataError(f"{name}: has {x.size} label nodes but the task distribution has {length}; "
                        "compute both over the same hierarchy's label_nodes")
    x = x.astype(np.float64)
    if not np.isfinite(x).all() or (x < 0).any():
        raise DataError(f"{name}: label masses must be finite and non-negative")
    x = x + eps
    return x / x.sum()


def task_label_distribution(upstream_probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """float64 [L]: the mean over the task's N images of the generic model's predicted upstream
    label probabilities ``upstream_probs`` [N, L] (sigmoid outputs, one column per label node).

    It is on the scale of ``Library.label_prior`` (a mean multi-hot label), so the two compare
    directly in :func:`label_matching`.
    """
    p = upstream_probs.detach().cpu().numpy() if isinstance(upstream_probs, torch.Tensor) else np.asarray(
        upstream_probs)
    if p.dtype.kind not in "biuf" or p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise DataError(f"upstream probabilities must be a non-empty numeric [N, L] array, got {p.dtype} {p.shape}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError("upstream probabilities must lie in [0, 1]; apply a sigmoid to the generic model's logits first")
    return p.mean(axis=0)


def label_matching(task_label_dist: np.ndarray | torch.Tensor, priors: Mapping[str, np.ndarray | torch.Tensor],
                   budget: int = 1, eps: float = 1e-6) -> Selection:
    """Pick the members whose upstream label prior is closest to the task's labels (paper 000, sec. 5).

    ``task_label_dist`` [L] comes from :func:`task_label_distribution`; ``priors[name]`` [L] is
    ``Library.label_prior(name)`` (the baseline B's prior is the whole upstream distribution).
    Both are mean multi-hot vectors over the hierarchy's label nodes, not distributions: each is
    smoothed by adding ``eps`` to every entry and normalised to sum 1, so that no entry is 0 and the
    divergence is finite even for an expert that never saw a label.

    Score = -KL(p_task || q_expert) = -sum_l p_l log(p_l / q_l), higher is better (0 = identical).
    The task is the reference distribution: the KL is large where the task has labels the expert
    gives little mass to (an expert that never saw the task's labels is penalised heavily), while
    an expert's extra labels that the task lacks cost little. That is what transfer needs: the
    expert must cover the task; knowing more than the task is harmless. (KL(q || p) would instead
    punish a broad expert, B included, for every label the task lacks.)
    """
    t0 = time.perf_counter()
    names = _check_pool(list(priors), budget)
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise ConfigError(f"eps must be a small positive number, e.g. 1e-6; got {eps!r}")
    p = _as_distribution(task_label_dist, eps, "task label distribution")
    scores = {}
    for n in names:
        q = _as_distribution(priors[n], eps, f"label prior of {n!r}", length=p.size)
        scores[n] = -float(np.sum(p * (np.log(p) - np.log(q))))
    return _selection("label_matching", rank(scores, names), budget, t0)


def domain_prediction(epn_probs: np.ndarray | torch.Tensor, expert_names: Sequence[str], budget: int = 1) -> Selection:
    """Pick the members the expert prediction network routes the task's images to (paper 000, sec. 5).

    ``epn_probs`` [N, E]: the EPN's probability that image n belongs to expert e's domain (column e
    is ``expert_names[e]``). Score = mean_n log(max(p_ne, 1e-12)): the log of the geometric mean
    probability over the task's images, so an expert must fit most images, not a few very well.
    Ties keep ``expert_names`` order.
    """
    t0 = time.perf_counter()
    names = _check_pool(expert_names, budget, "EPN's expert list")
    p = epn_probs.detach().cpu().numpy() if isinstance(epn_probs, torch.Tensor) else np.asarray(epn_probs)
    if p.dtype.kind not in "biuf" or p.ndim != 2 or p.shape[0] == 0:
        raise DataError(f"EPN probabilities must be a non-empty numeric [N, E] array, got {p.dtype} {p.shape}")
    if p.shape[1] != len(names):
        raise DataError(f"EPN probabilities have {p.shape[1]} columns but {len(names)} expert names; "
                        "pass the names of the nodes the EPN was trained on, in its order")
    p = p.astype(np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError("EPN probabilities must lie in [0, 1]; apply a sigmoid to the EPN's logits first")
    mean_log = np.log(np.clip(p, PROB_FLOOR, 1.0)).mean(axis=0)
    scores = {n: float(s) for n, s in zip(names, mean_log)}
    return _selection("domain_prediction", rank(scores, names), budget, t0, images=int(p.shape[0]))


def hybrid(agnostic: Selection, aware: Selection, budget: int) -> Selection:
    """Paper 002, section 5.3: the task-agnostic top-1 plus the task-aware top-(budget - 1).

    The aware ranking is walked in order, skipping the agnostic pick, so no member is picked twice
    (when both top-1s agree, the aware runner-up gets the slot). The ranking lists the picks first,
    then every other member in task-aware order; every member keeps its task-aware score, so the
    ranking is not sorted by score. ``budget`` 1 gives the task-agnostic top-1 alone. Both
    selections must rank the same members.
    """
    t0 = time.perf_counter()
    aware_names = _check_pool([n for n, _ in aware.ranking], budget, "task-aware ranking")
    agnostic_names = [n for n, _ in agnostic.ranking]
    if sorted(agnostic_names) != sorted(aware_names):
        raise ConfigError("the task-agnostic and task-aware selections rank different pools "
                          f"({sorted(set(agnostic_names) ^ set(aware_names))[:5]} differ); rank the same members with both")
    first = agnostic_names[0]
    rest = [n for n in aware_names if n != first]
    aware_scores = aware.scores()
    ranking = [(n, aware_scores[n]) for n in [first, *rest]]
    sel = _selection("hybrid", ranking, budget, t0, images=aware.images)
    seconds = {f"agnostic.{k}": v for k, v in agnostic.seconds.items()}
    seconds.update({f"aware.{k}": v for k, v in aware.seconds.items()})
    seconds["combine"] = sel.seconds["score"]
    return Selection(sel.strategy, sel.ranking, sel.picks, seconds, sel.images)
