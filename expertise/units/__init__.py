"""Units of work as plain data, one registry of unit kinds, plans of units and the executors that run
them (in this process, or as Ray tasks); see docs/architecture.md and docs/distributed.md."""

from expertise.units.context import WorkerContext
from expertise.units.executors import EXECUTORS, LocalExecutor, open_executor
from expertise.units.plan import Plan, batch_plan, drive
from expertise.units.registry import KINDS, UnitKind, execute, get_kind, register_kind
from expertise.units.spec import UnitSpec, load_task_ref, task_ref

__all__ = ["EXECUTORS", "KINDS", "LocalExecutor", "Plan", "UnitKind", "UnitSpec", "WorkerContext", "batch_plan", "drive", "execute",
           "get_kind", "load_task_ref", "open_executor", "register_kind", "task_ref"]
