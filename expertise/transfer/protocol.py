"""The transfer evaluation protocol (paper 000, section 6.3): what a chosen member is worth on a task.

For one member and one task:

1. **Hyperparameter selection** (a *sweep*): fine-tune the member on the task's 800 training
   images with every point of a small grid around the preset's fine-tune config, and score each
   on the 200 validation images. The best validation accuracy wins; ties go to the first grid
   point, so the choice is deterministic.
2. **Final re-training**: fine-tune the member with the chosen setting on all 1,000 images
   (``task.trainval``) and measure test accuracy; ``retrains`` times with different seeds.
3. Repeat 1-2 ``sweeps`` times with different seeds and report the **median** test accuracy over
   all ``sweeps x retrains`` outcomes. The paper runs 10 sweeps x 3 retrains (median of 30,
   :meth:`SweepConfig.paper`); the default here is 1 x 1 so a CPU run stays affordable. A grid
   of a single point skips step 1 (there is nothing to choose) and goes straight to the retrains.

The grid. The paper uses VTAB-1k's recommended sweep (its appendix E.2, not part of our copy);
here the grid is relative to the preset's fine-tune :class:`~expertise.train.TrainConfig`: every
learning-rate factor times every step-count factor (warm-up scaled with the steps), learning
rate outermost. The default ``lr_factors=(1.0, 0.3, 3.0)`` puts the preset's own learning rate
first, so a tie keeps the preset's setting.

Resumption. Every fine-tune (task x member x setting x seed x phase) is one unit in a
:class:`~expertise.store.RecordStore`: a killed run resumes and never repeats a finished
unit, and the member is loaded only when some unit actually has to be computed. A unit's identity
is the member's name and weight hash, the task's name and data fingerprint, the train config, the
phase and the seeds; the device is not part of it (a unit finished on a GPU is reused on a CPU).

Plans. :func:`protocol_plan` is the protocol as batches of fine-tune units (every sweep setting of
every sweep at once, then every retrain), each runnable from its record config alone
(:func:`run_finetune`); :func:`transfer_protocol` runs them here one after another, and
``expertise.transfer.units`` hands them to an executor (a Ray cluster fans the sweep out).

Divergence. A setting whose loss becomes non-finite is recorded as a finished, *diverged* unit
with accuracy None: in a sweep it never wins (if every setting diverges, lower the base learning
rate); a diverged retrain is left out of the median and counted in ``ProtocolResult.diverged``.

The fine-tune and evaluate functions are injectable (``finetune_fn``, ``evaluate_fn``) so the
selection logic can be tested with known validation accuracies.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from expertise.store import RecordStore, Unit, UnitResult
from expertise.data.tasks import Split, Task
from expertise.errors import ConfigError
from expertise.runtime import RunContext, derive_seed
from expertise.train import TrainConfig
from expertise.transfer.finetune import accuracy, finetune

if TYPE_CHECKING:
    from expertise.config import Preset
    from expertise.library import Library

PROTOCOL_VERSION = 1
SWEEP_KIND, RETRAIN_KIND = "transfer_sweep", "transfer_retrain"

# finetune_fn(member, train split, num_classes, cfg, seed, device, progress, desc) -> (tuned model, stats)
# with stats["images"] (images trained on) and optionally "final_loss"/"steps": expertise.transfer.finetune.
FinetuneFn = Callable[[nn.Module, Split, int, TrainConfig, int, torch.device, bool, str], tuple[nn.Module, dict]]
# evaluate_fn(tuned model, split, device) -> accuracy in [0, 1]: expertise.transfer.accuracy.
EvaluateFn = Callable[[nn.Module, Split, torch.device], float]
KEPT_RETRAIN = {"sweep": 0, "retrain": 0}  # the retrain whose tuned model a Keeper keeps


class Keeper(Protocol):
    """Keeps the tuned model of one retrain (sweep 0, retrain 0: the first model trained on all
    1,000 images with the chosen setting; chosen on validation, never on test) beside the records.
    ``wants(key)``: the model of the unit ``key`` is not kept yet, so the unit is computed even when
    its record exists; ``save(key, model, config, accuracy)`` keeps it (``config`` the unit's)."""

    def wants(self, key: str) -> bool: ...

    def save(self, key: str, model: nn.Module, config: dict[str, Any], accuracy: float) -> None: ...


def _factors(values: Sequence[float], what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a list of positive numbers, got {values!r}") from None
    if not out or any(not (math.isfinite(v) and v > 0) for v in out):
        raise ConfigError(f"{what} must be a non-empty list of positive, finite numbers, got {values!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{what} lists a factor twice: {values!r}")
    return out


@dataclass(frozen=True)
class GridPoint:
    """One sweep setting: the factors applied to the base config and the resulting config."""

    lr_factor: float
    step_factor: float
    cfg: TrainConfig

    def to_json(self) -> dict[str, Any]:
        return {"lr_factor": self.lr_factor, "step_factor": self.step_factor, "lr": self.cfg.lr, "steps": self.cfg.steps}


@dataclass(frozen=True)
class SweepConfig:
    """The protocol's size: the grid (``lr_factors`` x ``step_factors`` around the base fine-tune
    config), how many independent sweeps, and how many retrains per sweep."""

    lr_factors: tuple[float, ...] = (1.0, 0.3, 3.0)
    step_factors: tuple[float, ...] = (1.0,)
    sweeps: int = 1
    retrains: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_factors", _factors(self.lr_factors, "lr_factors"))
        object.__setattr__(self, "step_factors", _factors(self.step_factors, "step_factors"))
        for name in ("sweeps", "retrains"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")

    @classmethod
    def paper(cls, **overrides: Any) -> SweepConfig:
        """The paper's repetition counts: 10 sweeps x 3 retrains, the median of 30 outcomes."""
        return cls(**{"sweeps": 10, "retrains": 3, **overrides})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SweepConfig:
        """The inverse of :meth:`to_json` (lists become tuples); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown sweep settings {unknown}; a sweep has {sorted(known)}")
        return cls(**d)

    def grid(self, base: TrainConfig) -> list[GridPoint]:
        """Every setting, learning rate outermost; steps are rounded (at least 1) and warm-up is
        scaled with them, so the schedule keeps its shape."""
        points = []
        for lf in self.lr_factors:
            for sf in self.step_factors:
                steps = max(1, int(round(base.steps * sf)))
                warmup = min(steps, int(round(base.warmup_steps * sf)))
                cfg = dataclasses.replace(base, lr=base.lr * lf, steps=steps, warmup_steps=warmup)
                points.append(GridPoint(lf, sf, cfg))
        return points

    @property
    def num_finetunes(self) -> int:
        """Fine-tunes one protocol run costs: every grid point per sweep plus the retrains (a grid of
        one point has nothing to choose, so it costs no sweep fine-tunes)."""
        points = len(self.lr_factors) * len(self.step_factors)
        return self.sweeps * ((points if points > 1 else 0) + self.retrains)

    def to_json(self) -> dict[str, Any]:
        return {"lr_factors": list(self.lr_factors), "step_factors": list(self.step_factors),
                "sweeps": self.sweeps, "retrains": self.retrains}


@dataclass(frozen=True)
class ProtocolResult:
    """The protocol's outcome for one member on one task.

    ``test_accuracy`` is the median over every retrain that did not diverge;
    ``test_accuracies`` lists all outcomes in (sweep, retrain) order (None: diverged);
    ``chosen`` holds, per sweep, the winning setting and every grid point's validation accuracy.
    ``seconds`` and ``images`` total the cost of every unit (as recorded, whether computed now or
    read back), so a resumed run reports the same cost; ``phase_seconds``/``phase_images`` split
    them into "sweep" and "retrain". ``units_computed`` + ``units_reused`` is the unit count."""

    member: str
    task: str
    test_accuracy: float
    test_accuracies: tuple[float | None, ...]
    chosen: tuple[dict[str, Any], ...]
    seconds: float
    images: int
    phase_seconds: dict[str, float]
    phase_images: dict[str, int]
    units_computed: int
    units_reused: int
    diverged: int

    @property
    def finite_accuracies(self) -> list[float]:
        return [a for a in self.test_accuracies if a is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "member": self.member, "task": self.task, "test_accuracy": self.test_accuracy,
            "test_accuracies": list(self.test_accuracies), "chosen": [dict(c) for c in self.chosen],
            "seconds": round(self.seconds, 3), "images": self.images,
            "phase_seconds": {k: round(v, 3) for k, v in self.phase_seconds.items()},
            "phase_images": dict(self.phase_images), "units_computed": self.units_computed,
            "units_reused": self.units_reused, "diverged": self.diverged,
        }


class _LazyMember:
    """Loads the member on first use only: a fully resumed run never touches the weights."""

    def __init__(self, load: Callable[[], nn.Module]) -> None:
        self._load = load
        self._model: nn.Module | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def __call__(self) -> nn.Module:
        if self._model is None:
            self._model = self._load()
        return self._model


def _finite_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _finite_or_raise(accs: list[float | None], what: str, cfg: TrainConfig, sweep: SweepConfig) -> list[float]:
    """The accuracies of the fine-tunes that did not diverge; an error that says what to lower when none is left."""
    finite = [a for a in accs if a is not None]
    if not finite:
        raise ConfigError(f"{what}; lower the fine-tune learning rate (now {cfg.lr:g}) or the lr_factors {list(sweep.lr_factors)}")
    return finite


@dataclass(frozen=True)
class FinetuneRequest:
    """One fine-tune of the protocol as :func:`protocol_plan` asks for it: its record ``kind`` and
    ``config`` (the unit's identity: member and task by hash, phase, seeds, train settings), its
    ``key`` in the store, a line that names it, whether its tuned model goes to the keeper
    (``keep``) and whether it runs although recorded (``redo``: the keeper lacks its model)."""

    kind: str
    config: dict[str, Any]
    key: str
    desc: str
    keep: bool = False
    redo: bool = False


def train_config(d: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a unit config's ``train`` (its ``to_json``)."""
    return TrainConfig.from_json(d)


def run_finetune(config: dict[str, Any], member: Callable[[], nn.Module], task: Task, device: torch.device,
                 progress: bool, desc: str, finetune_fn: FinetuneFn = finetune, evaluate_fn: EvaluateFn = accuracy,
                 keeper: Keeper | None = None, key: str | None = None) -> UnitResult:
    """Run one fine-tune unit of the protocol from its config alone: a sweep setting trains on the
    800 and scores on the 200, a retrain trains on all 1,000 and scores on test. A non-finite loss
    is a finished, diverged unit. With a ``keeper`` the tuned model is kept under ``key``."""
    cfg, unit_seed = train_config(config["train"]), int(config["unit_seed"])
    sweep_phase = config["phase"] == "sweep"
    train, evaluate = (task.train, task.val) if sweep_phase else (task.trainval, task.test)
    split_name = "val" if sweep_phase else "test"
    model = member()
    t0 = time.perf_counter()
    try:
        tuned, stats = finetune_fn(model, train, task.num_classes, cfg, unit_seed, device, progress, desc)
    except FloatingPointError as e:
        return UnitResult({"accuracy": None, "split": split_name, "diverged": True, "error": str(e)},
                          images={"finetune": 0, "evaluate": 0},
                          seconds={"finetune": time.perf_counter() - t0, "evaluate": 0.0})
    t1 = time.perf_counter()
    acc = float(evaluate_fn(tuned, evaluate, device))
    t2 = time.perf_counter()
    if not (math.isfinite(acc) and 0.0 <= acc <= 1.0):
        raise ConfigError(f"evaluate_fn returned {acc!r}; an accuracy must be a fraction in [0, 1]")
    if keeper is not None:
        keeper.save(str(key), tuned, config, acc)
    metrics = {"accuracy": acc, "split": split_name, "diverged": False,
               "final_loss": _finite_or_none(stats.get("final_loss")), "steps": int(stats.get("steps", cfg.steps))}
    return UnitResult(metrics, images={"finetune": int(stats.get("images", 0)), "evaluate": len(evaluate)},
                      seconds={"finetune": t1 - t0, "evaluate": t2 - t1})


ProtocolPlan = Generator[list[FinetuneRequest], list[Unit], ProtocolResult]


def protocol_plan(member_name: str, member_hash: str, task: Task, base_cfg: TrainConfig, sweep: SweepConfig,
                  seed: int, store: RecordStore, log: Callable[[str], None] | None = None,
                  keeper_wants: Callable[[str], bool] | None = None) -> ProtocolPlan:
    """The protocol as a plan of fine-tune units: it yields the fine-tunes that can run together
    (every sweep setting of every sweep, then every retrain with each sweep's chosen setting), is
    sent their finished :class:`~expertise.store.Unit` in the same order, and returns the
    :class:`ProtocolResult`. Whoever drives it runs the units (in this process or on a cluster);
    the plan only reads the store (to see whether a kept retrain must run again: ``keeper_wants``)."""
    if len(task.train) == 0 or len(task.val) == 0 or len(task.test) == 0:
        raise ConfigError(f"task {task.name!r} needs non-empty train, val and test splits for the transfer protocol")
    grid = sweep.grid(base_cfg)
    ident = {"protocol": PROTOCOL_VERSION, "member": member_name, "member_hash": member_hash, "task": task.name,
             "task_fingerprint": task.fingerprint(), "seed": int(seed)}
    say = log or (lambda _line: None)

    def request(kind: str, phase: str, cfg: TrainConfig, unit_seed: int, extra: dict[str, int], desc: str) -> FinetuneRequest:
        config = {**ident, "phase": phase, **extra, "unit_seed": unit_seed, "train": cfg.to_json()}
        key = store.key(kind, config)
        keep = keeper_wants is not None and kind == RETRAIN_KIND and extra == KEPT_RETRAIN
        prior = store.get(kind, config) if keep and keeper_wants(key) else None  # type: ignore[misc]
        return FinetuneRequest(kind, config, key, desc, keep, redo=prior is not None and not prior.get("diverged"))

    def told(units: list[Unit], requests: list[FinetuneRequest]) -> None:
        for done, req in zip(units, requests):
            acc = done.metrics.get("accuracy")
            say(f"{'ran' if done.computed else 'kept'} {req.desc}: {done.metrics.get('split')} accuracy "
                f"{'diverged' if acc is None else f'{acc:.4f}'}")

    sweeps: list[FinetuneRequest] = []
    if len(grid) > 1:
        for i in range(sweep.sweeps):
            sweep_seed = derive_seed(seed, "protocol", "sweep", i)
            sweeps += [request(SWEEP_KIND, "sweep", point.cfg, sweep_seed, {"sweep": i},
                               f"sweep {i} lr {point.cfg.lr:g} steps {point.cfg.steps} {member_name} on {task.name}")
                       for point in grid]
    swept = (yield sweeps) if sweeps else []
    told(swept, sweeps)
    chosen: list[dict[str, Any]] = []
    choice: list[int] = []
    for i in range(sweep.sweeps):
        if len(grid) == 1:  # nothing to choose between: no sweep fine-tunes, straight to the retrains
            choice.append(0)
            chosen.append({"sweep": i, **grid[0].to_json(), "val_accuracy": None, "val_accuracies": [None]})
            continue
        val_accs = [_finite_or_none(u.metrics.get("accuracy")) for u in swept[i * len(grid):(i + 1) * len(grid)]]
        finite = _finite_or_raise(val_accs, f"every sweep setting diverged for {member_name} on {task.name} "
                                  f"(sweep {i})", base_cfg, sweep)
        best = max(finite)
        b = next(k for k, a in enumerate(val_accs) if a == best)  # ties: the first grid point
        choice.append(b)
        chosen.append({"sweep": i, **grid[b].to_json(), "val_accuracy": best, "val_accuracies": val_accs})
    retrains = [request(RETRAIN_KIND, "retrain", grid[b].cfg, derive_seed(seed, "protocol", "retrain", i, j),
                        {"sweep": i, "retrain": j},
                        f"retrain {i}.{j} lr {grid[b].cfg.lr:g} steps {grid[b].cfg.steps} {member_name} on {task.name}")
                for i, b in enumerate(choice) for j in range(sweep.retrains)]
    retrained = yield retrains
    told(retrained, retrains)
    units = [*swept, *retrained]
    phase_seconds = {"sweep": 0.0, "retrain": 0.0}
    phase_images = {"sweep": 0, "retrain": 0}
    for done, req in zip(units, [*sweeps, *retrains]):
        phase = req.config["phase"]
        phase_seconds[phase] += done.total_seconds
        phase_images[phase] += done.total_images
    test_accs = [_finite_or_none(u.metrics.get("accuracy")) for u in retrained]
    finite_test = _finite_or_raise(test_accs, f"every retrain diverged for {member_name} on {task.name}", base_cfg, sweep)
    computed = sum(u.computed for u in units)
    return ProtocolResult(
        member=member_name, task=task.name, test_accuracy=float(np.median(np.asarray(finite_test, dtype=np.float64))),
        test_accuracies=tuple(test_accs), chosen=tuple(chosen),
        seconds=float(sum(phase_seconds.values())), images=int(sum(phase_images.values())),
        phase_seconds=phase_seconds, phase_images=phase_images,
        units_computed=computed, units_reused=len(units) - computed, diverged=len(test_accs) - len(finite_test),
    )


def transfer_protocol(member_name: str, load_member: Callable[[], nn.Module], member_hash: str, task: Task,
                      base_cfg: TrainConfig, sweep: SweepConfig, ctx: RunContext,
                      finetune_fn: FinetuneFn = finetune, evaluate_fn: EvaluateFn = accuracy,
                      log: Callable[[str], None] | None = None, keeper: Keeper | None = None) -> ProtocolResult:
    """Run (or resume) the protocol for ``member_name`` on ``task`` in this process, one fine-tune
    after another: :func:`protocol_plan` driven here; see the module docstring.

    ``load_member()`` returns the pool member (called at most once, and only if some unit has to be
    computed); ``member_hash`` identifies its weights (``Library.verified_hash``), so retrained
    members never reuse stale units. ``base_cfg`` is the preset's fine-tune config the grid is
    built around; ``ctx`` gives the record store (required), the device, the progress flag and the
    seed every unit's seed is derived from. ``log`` gets one line per unit. A ``keeper`` keeps the
    tuned model of the first retrain (:class:`Keeper`); that unit is recomputed when its record
    exists but the keeper lacks its model.
    """
    store, device = ctx.require_store(), torch.device(ctx.device)
    member = _LazyMember(load_member)
    plan = protocol_plan(member_name, member_hash, task, base_cfg, sweep, ctx.seed, store, log,
                         keeper.wants if keeper is not None else None)

    def run(req: FinetuneRequest) -> Unit:
        return store.run_unit(req.kind, req.config, lambda: run_finetune(
            req.config, member, task, device, ctx.progress, req.desc, finetune_fn, evaluate_fn,
            keeper if req.keep else None, req.key), recompute=req.redo)

    try:
        requests = next(plan)
        while True:
            requests = plan.send([run(r) for r in requests])
    except StopIteration as stop:
        return stop.value


DEMO_SWEEP = SweepConfig(lr_factors=(1.0,))  # the preset's fine-tune settings, one retrain


def finetune_member(library: Library, member: str, task: Task, preset: Preset, ctx: RunContext) -> ProtocolResult:
    """Fine-tune ``member`` on the task's 1,000 train+val images with the preset's settings and
    test it: the transfer protocol without a sweep, one retrain. Its unit lives in ``store``, so
    the demo's fine-tunes are reused by ``expertise bench`` on the same folder, and the other way round.
    ``ctx`` gives the store, device and progress flag; the seed is the preset's."""
    return transfer_protocol(member, lambda: library.load(member), library.verified_hash(member), task, preset.finetune,
                             DEMO_SWEEP, ctx.with_(seed=preset.seed))
