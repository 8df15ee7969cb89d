"""Units as Ray tasks: ``--executor ray``.

Each unit is one Ray task that runs :func:`expertise.units.worker.run_unit_json` on its spec (plain
JSON) and returns its result (plain JSON); the coordinator writes the record. A task declares its
kind's resources (``num_cpus``, and ``num_gpus`` when the run's device is CUDA), and is retried
(``max_retries``) when its worker process dies; an error the unit raises is not retried (it would
only fail again) and comes back as the one line it is. Finished units stream back through
``ray.wait`` to the coordinator's one progress bar.

The cluster is ``--ray-address`` (else ``RAY_ADDRESS``), checked to answer before anything starts;
without one a local Ray is started with ``--ray-cpus`` CPUs and shut down at the end. Ray is imported
only here, and only when this executor is used: it is the optional ``ray`` extra.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from expertise.errors import ConfigError, ExpertiseError
from expertise.store import UnitResult
from expertise.units.registry import KINDS, get_kind

if TYPE_CHECKING:
    from expertise.units.context import WorkerContext
    from expertise.units.spec import UnitSpec

MAX_RETRIES = 3       # a unit whose worker died is run again, up to this many times
PROBE_TIMEOUT_S = 5.0  # how long an address may take to accept a connection
INSTALL = "--executor ray needs Ray: pip install 'expertise[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for Ray's own words (auto, local)."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    if text.startswith("ray://"):
        text = text[len("ray://"):]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address {address!r}: give HOST:PORT (the head node's GCS port, 6379 by default), "
                          "ray://HOST:PORT, or auto")
    return host.strip("[]"), int(port)


def check_address(address: str) -> None:
    """One line, at once, when nothing answers at ``address`` (Ray itself would wait for minutes)."""
    where = _host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"no Ray cluster answers at {address} ({reason}); start one there ('ray start --head'), "
                          "fix --ray-address or RAY_ADDRESS, or leave both unset to start a local Ray with --ray-cpus N") from None


class RayExecutor:
    """Units as Ray tasks on the cluster at ``address``, or on a local Ray of ``workers`` CPUs
    (default: every core). Connects on the first unit, so a run with every unit recorded starts nothing."""

    name = "ray"
    unit_progress = True

    def __init__(self, address: str | None = None, workers: int | None = None, max_retries: int = MAX_RETRIES) -> None:
        self.ray = import_ray()
        if address:
            check_address(address)
        self.address, self.workers, self.max_retries = address, workers, max_retries
        self._remote: Any = None
        self._started = False
        self._pending: dict[Any, tuple[int, UnitSpec]] = {}

    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
                else:
                    ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                             logging_level=logging.WARNING, log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - Ray raises bare Exception when its local node does not start in time
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                raise ConfigError(f"cannot start or reach {where}: {' '.join(str(e).split())[:300]}; check "
                                  "--ray-address / RAY_ADDRESS ('ray status' on the head node)") from None
            self._started = True
        from expertise.units.worker import run_unit_json

        self._remote = ray.remote(run_unit_json)

    def submit(self, token: int, spec: UnitSpec, ctx: WorkerContext) -> None:
        kind = get_kind(spec.kind)
        if self._remote is None:
            self._connect()
        resources = kind.resources(ctx.device.type)
        settings = {"device": ctx.device.type, "threads": max(1, int(kind.num_cpus)), "module": kind.module,
                    "known": KINDS.names()}
        ref = self._remote.options(**resources, max_retries=self.max_retries, retry_exceptions=False,
                                   name=f"expertise:{spec.kind}").remote(spec.to_json(), settings)
        self._pending[ref] = (token, spec)

    def next_done(self) -> tuple[int, UnitResult]:
        ray = self.ray
        ready, _ = ray.wait(list(self._pending), num_returns=1)
        token, spec = self._pending.pop(ready[0])
        try:
            out = ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:  # the unit raised: its own error, in its own words
            cause = getattr(e, "cause", None)
            if isinstance(cause, ExpertiseError):
                raise cause from None
            raise
        except ray.exceptions.RayError as e:  # its worker died every time, or the cluster went away
            raise ExpertiseError(f"unit {spec.describe()} did not finish on Ray after {self.max_retries + 1} tries "
                                 f"({type(e).__name__}); see the workers' logs ('ray logs'); finished units are kept, "
                                 "run the same command again to resume") from None
        return token, UnitResult(out["metrics"], out["images"], out["seconds"])

    def cancel(self) -> None:
        for ref in list(self._pending):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or its worker gone: nothing to cancel
                pass
        self._pending.clear()

    def close(self) -> None:
        self.cancel()
        if self._started:
            self.ray.shutdown()
            self._started = False
