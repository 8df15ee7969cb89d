"""How a model-search strategy is scored, and how scores are summarised with confidence intervals.

Definitions (paper 002, section 3). A strategy ``m`` with budget ``B`` returns ``B`` distinct
members ``S_m``; all of them are fine-tuned, and the strategy is worth the best of their test
accuracies, ``s(m) = max_{s_i in S_m} t(s_i, D)``. The ORACLE is the best fine-tuned test accuracy
of any member of the pool, ``max_{m_i in M} t(m_i, D)``. Then

* absolute regret (eq. 1): ``ORACLE - s(m)``;
* relative delta of two strategies (eq. 2):
  ``Delta(m1, m2) = (s(m1) - s(m2)) / (1 - min(s(m1), s(m2)))``, in [-1, 1];
* relative regret ``r(m) = Delta(ORACLE, m) = (ORACLE - s(m)) / (1 - min(ORACLE, s(m)))``
  (eq. 2 with ``s(m1)`` replaced by the ORACLE), which is ``(ORACLE - s(m)) / (1 - s(m))``
  whenever the strategy does not beat the oracle. Dividing by the error left (rather than by the
  accuracy) makes a point of accuracy on an easy task count for more than one on a hard task, so
  tasks of different difficulty are comparable.

The expectations in eq. 1 are estimated by the caller: a member's ``t(m, D)`` here is whatever
accuracy the caller passes, in this project the median test accuracy of the transfer protocol
(:mod:`expertise.transfer.protocol`). Every accuracy is a fraction in [0, 1]; a value above 1 is
refused, since it is almost always a percentage passed by mistake.

Summaries follow paper 000 (Tables 1-2): the mean over the tasks of each VTAB group and over all
tasks (the VTAB convention: "all" is the mean over tasks, not the mean of the three group means),
with 95% percentile-bootstrap confidence intervals.

Everything is pure numpy in float64 and deterministic under its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np

from expertise.data.tasks import GROUPS
from expertise.errors import ConfigError, DataError
from expertise.runtime import derive_seed

ALL = "all"
SUMMARY_KEYS: tuple[str, ...] = (*GROUPS, ALL)
# Most elements one vectorised bootstrap chunk may hold (resamples x sample size), to bound memory.
_CHUNK_ELEMENTS = 4_000_000


class CI(NamedTuple):
    """A point estimate with the bounds of its confidence interval; unpacks as ``(mean, lo, hi)``."""

    estimate: float
    lo: float
    hi: float


# -- regret (paper 002, eq. 1-2) -----------------------------------------------------------------

def _accuracies(x: float | Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what} must be finite accuracies, got {x!r}")
    if np.any(a < 0) or np.any(a > 1):
        raise DataError(f"{what} must be accuracies as fractions in [0, 1] (not percentages), got {x!r}")
    return a


def _out(a: np.ndarray) -> float | np.ndarray:
    return float(a) if a.ndim == 0 else a


def regret(selected_acc: float | Sequence[float] | np.ndarray,
           oracle_acc: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Absolute regret ``ORACLE - s(m)`` (paper 002, eq. 1): the test accuracy lost by fine-tuning
    the strategy's picks instead of the pool's best member. Broadcasts over arrays; a float for
    scalar input."""
    s = _accuracies(selected_acc, "selected_acc")
    o = _accuracies(oracle_acc, "oracle_acc")
    return _out(o - s)


def relative_delta(a: float | Sequence[float] | np.ndarray,
                   b: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Relative delta of strategy values (paper 002, eq. 2):
    ``Delta(a, b) = (a - b) / (1 - min(a, b))``, in [-1, 1]; positive when ``a`` is better.

    Antisymmetric: ``Delta(a, b) == -Delta(b, a)``. When both are 1 (no error left to lose) the
    delta is 0. Broadcasts over arrays; a float for scalar input."""
    a_ = _accuracies(a, "a")
    b_ = _accuracies(b, "b")
    den = 1.0 - np.minimum(a_, b_)
    num = a_ - b_
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return _out(np.asarray(out, dtype=np.float64))


def relative_regret(selected_acc: float | Sequence[float] | np.ndarray,
                    oracle_acc: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Relative regret ``r(m) = Delta(ORACLE, s(m))`` (paper 002, eq. 2 with ``s(m1)`` := ORACLE):
    ``(ORACLE - s(m)) / (1 - min(ORACLE, s(m)))``; 0 when the strategy found the best member,
    and the fraction of the remaining error it gave up otherwise."""
    return relative_delta(oracle_acc, selected_acc)


def oracle_accuracy(accuracies: Mapping[str, float], pool: Sequence[str] | None = None) -> float:
    """The ORACLE of eq. 1: the best fine-tuned accuracy of any member of ``pool`` (default: every
    member in ``accuracies``)."""
    names = list(accuracies) if pool is None else list(pool)
    if not names:
        raise DataError("the oracle needs the fine-tuned accuracy of at least one pool member")
    missing = [n for n in names if n not in accuracies]
    if missing:
        raise DataError(f"no fine-tuned accuracy for pool members {missing[:5]}; fine-tune them first (oracle run)")
    return float(np.max(_accuracies([accuracies[n] for n in names], "accuracies")))


def _ranking_names(ranking: Sequence[str] | Sequence[tuple[str, float]]) -> list[str]:
    names = [r[0] if isinstance(r, (tuple, list)) else r for r in ranking]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"a ranking must list distinct members; {dup} appear more than once")
    return [str(n) for n in names]


def _budgets(budgets: Sequence[int] | int | None, k: int) -> list[int]:
    if budgets is None:
        return list(range(1, k + 1))
    bs = [budgets] if isinstance(budgets, (int, np.integer)) else list(budgets)
    for b in bs:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= k:
            raise ConfigError(f"a budget must be an integer between 1 and {k} (the number of ranked members), got {b!r}")
    return [int(b) for b in bs]


def budget_curve(ranking: Sequence[str] | Sequence[tuple[str, float]], accuracies: Mapping[str, float],
                 budgets: Sequence[int] | int | None = None) -> np.ndarray:
    """``s(m)`` as a function of the budget: for each ``B`` the best fine-tuned accuracy among the
    first ``B`` members of ``ranking`` (paper 002, eq. 1: all ``B`` picks are fine-tuned and the
    best is kept). ``ranking`` is best first: names, or ``(name, score)`` pairs as in
    ``Selection.ranking``. ``budgets`` defaults to 1..K (K = len(ranking)). Non-decreasing in B."""
    names = _ranking_names(ranking)
    bs = _budgets(budgets, len(names))
    need = names[:max(bs)]
    missing = [n for n in need if n not in accuracies]
    if missing:
        raise DataError(f"no fine-tuned accuracy for ranked members {missing[:5]}; fine-tune them first")
    running = np.maximum.accumulate(_accuracies([accuracies[n] for n in need], "accuracies"))
    return np.array([running[b - 1] for b in bs], dtype=np.float64)


def regret_curve(ranking: Sequence[str] | Sequence[tuple[str, float]], accuracies: Mapping[str, float],
                 budgets: Sequence[int] | int | None = None, relative: bool = True,
                 oracle: float | None = None) -> np.ndarray:
    """Regret per budget: :func:`relative_regret` (default) or :func:`regret` of
    :func:`budget_curve` against ``oracle`` (default: the best accuracy in ``accuracies``, i.e. the
    pool is every member that has an accuracy)."""
    values = budget_curve(ranking, accuracies, budgets)
    best = oracle_accuracy(accuracies) if oracle is None else float(oracle)
    fn = relative_regret if relative else regret
    return np.asarray(fn(values, np.full_like(values, best)), dtype=np.float64)


def zero_regret_fraction(per_task_regrets: Mapping[str, Sequence[float]] | np.ndarray,
                         budgets: Sequence[int] | int | None = None, tol: float = 1e-12) -> np.ndarray:
    """Fraction of tasks on which the strategy picked the best member (regret <= ``tol``) within
    budget B, for each requested B (paper 002, Figure 7: "optimal picks as a function of the
    computational budget").

    ``per_task_regrets`` maps task -> regrets by budget (index 0 is B=1), e.g. from
    :func:`regret_curve`; or is an array [tasks, K]. ``budgets`` defaults to 1..K."""
    if isinstance(per_task_regrets, Mapping):
        rows = [np.asarray(v, dtype=np.float64).reshape(-1) for v in per_task_regrets.values()]
    else:
        arr = np.asarray(per_task_regrets, dtype=np.float64)
        if arr.ndim != 2:
            raise DataError(f"per-task regrets must be [tasks, budgets], got shape {arr.shape}")
        rows = list(arr)
    if not rows:
        raise DataError("zero_regret_fraction needs the regrets of at least one task")
    k = min(len(r) for r in rows)
    if k == 0:
        raise DataError("every task needs its regret for at least budget B=1")
    bs = _budgets(budgets, k)
    mat = np.stack([r[:k] for r in rows])
    if not np.all(np.isfinite(mat)):
        raise DataError("per-task regrets must be finite")
    hit = mat[:, [b - 1 for b in bs]] <= tol
    return hit.mean(axis=0).astype(np.float64)


# -- bootstrap and group summaries (paper 000, Tables 1-2) ---------------------------------------

def _check_level(n_resamples: int, level: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ConfigError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ConfigError(f"the confidence level must lie strictly between 0 and 1 (e.g. 0.95), got {level!r}")


def _apply_stat(stat: Callable[..., object], samples: np.ndarray) -> np.ndarray:
    """``stat`` over the last axis of [R, n] samples, vectorised where ``stat`` takes ``axis``."""
    try:
        out = np.asarray(stat(samples, axis=-1), dtype=np.float64)
        if out.shape == samples.shape[:-1]:
            return out
    except TypeError:
        pass
    return np.array([float(stat(row)) for row in samples], dtype=np.float64)


def _resample_stat(values: np.ndarray, stat: Callable[..., object], n_resamples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``stat`` of ``n_resamples`` with-replacement resamples of ``values``, in bounded chunks."""
    n = len(values)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = _apply_stat(stat, values[idx])
    return out


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable[..., object] = np.mean,
                 n_resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> CI:
    """Percentile bootstrap: ``stat(values)`` and the ``(1-level)/2`` and ``(1+level)/2`` quantiles of
    ``stat`` over ``n_resamples`` with-replacement resamples (paper 000 reports 95% bootstrapped
    intervals). ``stat`` is vectorised when it accepts ``axis=`` (numpy reductions do).
    Deterministic under ``seed``."""
    _check_level(n_resamples, level)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise DataError("bootstrap_ci needs at least one value")
    if not np.all(np.isfinite(v)):
        raise DataError("bootstrap_ci needs finite values; drop or fix the NaN/inf entries first")
    rng = np.random.default_rng(derive_seed(seed, "bootstrap_ci"))
    boot = _resample_stat(v, stat, int(n_resamples), rng)
    lo, hi = _percentiles(boot, float(level))
    return CI(float(np.asarray(stat(v), dtype=np.float64)), lo, hi)


def group_means(per_task: Mapping[str, float | Sequence[float]], groups: Mapping[str, str],
                n_resamples: int = 10_000, level: float = 0.95, seed: int = 0,
                resample: Literal["auto", "runs", "tasks", "both"] = "auto",
                per_task_stat: Callable[..., object] = np.median) -> dict[str, CI]:
    """Mean over the tasks of each VTAB group and over all tasks, each with a bootstrap CI
    (paper 000, Tables 1-2). Returns ``{"natural", "specialized", "structured", "all"} -> CI``;
    a group without tasks gets ``CI(nan, nan, nan)``. "all" is the mean over *tasks* (the VTAB
    convention), not the mean of the three group means.

    ``per_task`` maps task -> a value, or -> the outcomes of its repeated runs (e.g. the 30 test
    accuracies of the protocol). A task's value is ``per_task_stat`` of its runs (default the
    median, as in paper 000: "the median accuracy over 30 runs is used"). ``resample`` picks what
    the bootstrap resamples:

    * ``"runs"``: each task's runs, with replacement, independently per task; the tasks are kept
      fixed. This is the variability of paper 000's intervals (fine-tuning and sweep randomness).
    * ``"tasks"``: the tasks of each group (their per-task values), with replacement: the
      variability of the task sample.
    * ``"both"``: the tasks of each group with replacement, then the runs of each drawn task with
      replacement (a task drawn twice gets two independent resamples of its runs): the two-level
      bootstrap of task sample and run-to-run variability together.
    * ``"auto"`` (default): ``"runs"`` when some task has more than one run, else ``"tasks"``.

    ``groups`` maps task -> group; every task of ``per_task`` needs one. Deterministic under
    ``seed``; the order of ``per_task`` does not matter.
    """
    _check_level(n_resamples, level)
    if not per_task:
        raise DataError("group_means needs at least one task")
    tasks = sorted(per_task)
    missing = [t for t in tasks if t not in groups]
    if missing:
        raise DataError(f"no group for tasks {missing[:5]}; pass groups={{task: group}} (task.group)")
    bad = sorted({groups[t] for t in tasks} - set(GROUPS))
    if bad:
        raise DataError(f"unknown task groups {bad}; a group is one of {GROUPS}")
    runs = {t: np.asarray(per_task[t], dtype=np.float64).reshape(-1) for t in tasks}
    for t, r in runs.items():
        if r.size == 0 or not np.all(np.isfinite(r)):
            raise DataError(f"task {t!r} needs at least one finite value, got {per_task[t]!r}")
    if resample == "auto":
        resample = "runs" if any(r.size > 1 for r in runs.values()) else "tasks"
    if resample not in ("runs", "tasks", "both"):
        raise ConfigError(f"resample must be 'auto', 'runs', 'tasks' or 'both', got {resample!r}")
    point = {t: float(np.asarray(per_task_stat(r), dtype=np.float64)) for t, r in runs.items()}
    members = {g: [t for t in tasks if groups[t] == g] for g in GROUPS}
    members[ALL] = tasks
    out: dict[str, CI] = {}
    if resample == "runs":
        rng = np.random.default_rng(derive_seed(seed, "group_means", "runs"))
        boot = {t: _resample_stat(runs[t], per_task_stat, int(n_resamples), rng) for t in tasks}
        for key in SUMMARY_KEYS:
            ts = members[key]
            if not ts:
                out[key] = CI(float("nan"), float("nan"), float("nan"))
                continue
            lo, hi = _percentiles(np.mean([boot[t] for t in ts], axis=0), float(level))
            out[key] = CI(float(np.mean([point[t] for t in ts])), lo, hi)
    elif resample == "both":
        for key in SUMMARY_KEYS:
            ts = members[key]
            if not ts:
                out[key] = CI(float("nan"), float("nan"), float("nan"))
                continue
            rng = np.random.default_rng(derive_seed(seed, "group_means", "both", key))
            boot = _two_level([runs[t] for t in ts], per_task_stat, int(n_resamples), rng)
            lo, hi = _percentiles(boot, float(level))
            out[key] = CI(float(np.mean([point[t] for t in ts])), lo, hi)
    else:
        for key in SUMMARY_KEYS:
            ts = members[key]
            if not ts:
                out[key] = CI(float("nan"), float("nan"), float("nan"))
                continue
            out[key] = bootstrap_ci([point[t] for t in ts], np.mean, n_resamples, level, derive_seed(seed, "group_means", key))
    return out


def _two_level(runs: Sequence[np.ndarray], stat: Callable[..., object], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Mean over ``len(runs)`` tasks drawn with replacement of ``stat`` of each drawn task's runs
    drawn with replacement, for ``n_resamples`` resamples: [n_resamples]."""
    n = len(runs)
    drawn = rng.integers(0, n, size=(n_resamples, n))
    values = np.empty((n_resamples, n), dtype=np.float64)
    for slot in range(n):
        for t in range(n):
            hit = drawn[:, slot] == t
            count = int(hit.sum())
            if count:
                values[hit, slot] = _resample_stat(runs[t], stat, count, rng)
    return values.mean(axis=1)
