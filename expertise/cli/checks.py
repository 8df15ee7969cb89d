"""Checks of command-line options, run at the top of each command before any task is loaded, any
world rendered or any model run: a bad option costs a second, not the minutes of work before the
stage that reads it. Each check raises :class:`~expertise.errors.ConfigError` (one line, exit 2)
and reuses the registries that define what is valid (strategies, proxies, presets, pools)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from expertise.errors import ConfigError

if TYPE_CHECKING:
    from expertise.config import Preset
    from expertise.library import Library


def preset(name: str, overrides: Sequence[str] | None) -> Preset:
    """The preset with its ``--set`` overrides applied (unknown preset or setting: one line)."""
    from expertise.config import get_preset, parse_overrides

    cfg = get_preset(name, parse_overrides(list(overrides or [])))
    if cfg.num_experts < 1:
        raise ConfigError(f"num_experts must be at least 1, got {cfg.num_experts}")
    return cfg


def device(name: str) -> None:
    """``auto``, ``cpu``, or a CUDA device this machine has: :func:`expertise.runtime.resolve_device`,
    the one place a device name is judged."""
    from expertise.runtime import resolve_device

    resolve_device(name)


def strategy(name: str, proxy: str) -> None:
    """A registered strategy and proxy (the proxy is checked even where the strategy ignores it: a
    typo is a typo)."""
    from expertise.select.proxy_registry import get_proxy
    from expertise.select.registry import get_strategy

    get_strategy(name)
    get_proxy(proxy)


def choice(value: str, choices: Iterable[str], option: str) -> None:
    allowed = list(choices)
    if value not in allowed:
        raise ConfigError(f"{option} {value!r}: choose one of {', '.join(allowed)}")


def at_least(value: float | None, low: float, option: str) -> None:
    """``value >= low`` (None: the option was not given)."""
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
        raise ConfigError(f"{option} must be at least {low:g}, got {value!r}")


def search(value: str, strategy_name: str) -> None:
    """``--search``: full, or halving with a strategy that reads a proxy (proxy, hybrid)."""
    from expertise.select.halving import SEARCHES
    from expertise.select.registry import proxy_strategies

    if value not in SEARCHES:
        raise ConfigError(f"unknown --search {value!r}; choose one of: {', '.join(SEARCHES)}")
    if value != "full" and strategy_name not in proxy_strategies():
        raise ConfigError(f"--search {value} ranks by a proxy: use it with a strategy that reads one "
                          f"(--strategy {' or '.join(proxy_strategies())}), not {strategy_name!r}")


def max_side(value: int) -> None:
    """``--max-side``: whole pixels in the loaders' range."""
    from expertise.data.loaders import check_max_side

    check_max_side(value)


def positive(value: float | None, option: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} must be a positive number, got {value!r}")


def factors(text: str, option: str = "--lr-factors") -> tuple[float, ...]:
    """Comma-separated positive numbers, e.g. ``1,0.3,3``."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated numbers, e.g. 1,0.3,3; got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{option} takes comma-separated positive numbers, e.g. 1,0.3,3; got {text!r}")
    return values


def budget(value: int, library: Library) -> None:
    """1 <= budget <= the library's pool size (every member but the EPN)."""
    from expertise.select.run import pool_names

    from expertise.errors import LibraryError

    size = len(pool_names(library))
    if size == 0:
        raise LibraryError(f"the library at {library.path} has no pool members; run 'expertise upstream --library {library.path}' first")
    if not 1 <= value <= size:
        raise ConfigError(f"--budget must be between 1 and the pool size {size}, got {value}")


def member(name: str, library: Library) -> None:
    """A pool member of the library (unknown: a did-you-mean from the library)."""
    from expertise.select.run import POOL_KINDS

    info = library.info(name)
    if info.kind not in POOL_KINDS:
        raise ConfigError(f"{name!r} is a {info.kind}, not a pool member; choose one of 'expertise library ls {library.path}'")


def suite(spec: str, task_names: Sequence[str]) -> None:
    """A benchmark suite names only tasks that exist (checked before the first one is rendered)."""
    from expertise.data.loaders import BUILTIN_TASKS
    from expertise.data.tasks import GROUPS

    if spec == "builtin" or spec in GROUPS:
        return
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"suite {spec!r} names no task; use builtin, {', '.join(GROUPS)} or TASK,TASK,...")
    known = [*task_names, *BUILTIN_TASKS]
    for n in names:
        if n not in known and not Path(n).is_dir():
            raise ConfigError(f"suite {spec!r}: unknown task {n!r}; use a built-in task ({', '.join(known)}) "
                              "or the path of an existing ImageFolder directory")


# -- one call per command, at the top of the command's function ----------------------------------
def build_options(preset_name: str, overrides: Sequence[str] | None, device_name: str, kind: str | None = None,
                  kinds: Iterable[str] = (), num_experts: int | None = None) -> None:
    """``demo``, ``upstream``, ``experts``."""
    if kind is not None:
        choice(kind, kinds, "--kind")
    at_least(num_experts, 1, "--num-experts")
    items = [*(overrides or []), *([f"num_experts={num_experts}"] if num_experts is not None else [])]
    preset(preset_name, items)
    device(device_name)


def select_options(library: Path | None, strategy_name: str, proxy: str, budget_value: int, device_name: str,
                   pool: Path | None = None) -> None:
    """``select``: the strategy, its proxy, the device, then the budget against the library's pool
    (or, with ``pool``, a pool file instead of a library: read and checked whole, the budget
    against its members)."""
    from expertise.library import Library

    strategy(strategy_name, proxy)
    device(device_name)
    if (library is None) == (pool is None):
        raise ConfigError("give --library LIB (a library) or --pool FILE (a pool file: its library is made in a cache "
                          "folder), not both" if library is not None else
                          "give --library LIB (a library) or --pool FILE (a pool file, docs/pools.md)")
    if pool is not None:
        from expertise.pool_file import read

        size = len(read(pool))
        if not 1 <= budget_value <= size:
            raise ConfigError(f"--budget must be between 1 and the pool size {size}, got {budget_value}")
        return
    budget(budget_value, Library.open(library))


def finetune_options(library: Path, member_name: str, preset_name: str, overrides: Sequence[str] | None,
                     device_name: str) -> None:
    from expertise.library import Library

    preset(preset_name, overrides)
    device(device_name)
    member(member_name, Library.open(library))


def transfer_options(library: Path, strategy_name: str, proxy: str, budget_value: int, lr_factors: str, sweeps: int,
                     retrains: int, preset_name: str, overrides: Sequence[str] | None, device_name: str) -> None:
    factors(lr_factors)
    at_least(sweeps, 1, "--sweeps")
    at_least(retrains, 1, "--retrains")
    preset(preset_name, overrides)
    select_options(library, strategy_name, proxy, budget_value, device_name)


def dat_options(upstream: str, sampler: str, weighting: str, init: str, size: int | None, temperature: float,
                preset_name: str, overrides: Sequence[str] | None, device_name: str) -> None:
    from expertise.dat import INITS, SAMPLERS, WEIGHTINGS

    if upstream != "world":
        raise ConfigError(f"--upstream {upstream!r}: DAT re-samples the upstream data a library was built on; "
                          "use --upstream world (and --data for a dataset on disk)")
    choice(sampler, SAMPLERS, "--sampler")
    choice(weighting, WEIGHTINGS, "--weighting")
    choice(init, INITS, "--init")
    at_least(size, 1, "--size")
    positive(temperature, "--temperature")
    preset(preset_name, overrides)
    device(device_name)


def jobs(value: int | None, threads: int | None, cfg: Preset | None = None, name: str = "local") -> tuple[int, int]:
    """``--jobs`` (and the threads each job takes): at least 1, at most what the memory holds
    (estimated per worker from the preset), 1 under torchrun (each rank trains in its process), and
    only for the local executor. Returns (jobs, threads per job)."""
    from expertise import distributed
    from expertise.units.processes import check_memory, resolve_jobs

    if name != "local":
        if value is not None:
            raise ConfigError(f"--jobs is the local executor's; --executor {name} sizes its workers itself "
                              "(--ray-cpus for a local Ray)")
        return 1, threads or 1
    if distributed.world() > 1:
        if value is not None and value != 1:
            raise ConfigError("under torchrun each rank trains every unit in its own process, data-parallel with the "
                              "others: drop --jobs")
        return 1, threads or 1
    n, per = resolve_jobs(value, threads)
    check_memory(n, cfg)
    return n, per


def executor(name: str, ray_address: str | None, workers: int | None, data_parallel: bool = False) -> None:
    """``--executor``, ``--ray-address`` and ``--ray-cpus``: a known executor; the Ray options only with
    ``ray``; Ray installed; and a cluster address (``--ray-address``, else ``RAY_ADDRESS``) that answers.
    ``data_parallel``: a command that also runs under torchrun, where Ray is refused."""
    from expertise.units.executors import EXECUTORS, ray_address as cluster

    choice(name, EXECUTORS, "--executor")
    at_least(workers, 1, "--ray-cpus")
    if name == "local":
        for option, value in (("--ray-address", ray_address), ("--ray-cpus", workers)):
            if value is not None:
                raise ConfigError(f"{option} is an option of --executor ray; add --executor ray or drop {option}")
        return
    if data_parallel:
        from expertise import distributed

        if distributed.world() > 1:
            raise ConfigError("--executor ray runs each expert as a Ray task; under torchrun each expert trains "
                              "data-parallel instead: use one or the other")
    from expertise.units.ray_executor import check_address, import_ray

    import_ray()
    address = cluster(ray_address)
    if address is not None:
        if workers is not None:
            raise ConfigError(f"--ray-cpus sizes a local Ray, but the units go to the cluster at {address} (--ray-address "
                              "or RAY_ADDRESS), which has its own workers; drop --ray-cpus or the address")
        check_address(address)


def bench_options(strategies: Sequence[str] | None, pools: Sequence[str] | None, lr_factors: str, sweeps: int,
                  retrains: int, preset_name: str, overrides: Sequence[str] | None, device_name: str,
                  seeds: str | None = None) -> None:
    """``bench``, before the library is read (the suite is checked against the library's world
    with :func:`suite`, before any task is rendered)."""
    from expertise.bench.pools import parse_pool
    from expertise.bench.runner import parse_strategies
    from expertise.bench.seeds import parse_seeds

    parse_strategies(strategies)
    if seeds is not None:
        parse_seeds(seeds)
    for spec in pools or ():
        parse_pool(spec)
    factors(lr_factors)
    at_least(sweeps, 1, "--sweeps")
    at_least(retrains, 1, "--retrains")
    preset(preset_name, overrides)
    device(device_name)
