"""The benchmark on the local executor against Ray on the same machine: `make bench-executors`, or
`.venv/bin/python -m perf.executors [--preset tiny] [--workers 2] [--repeats 1] [--library DIR]
[--tasks NAME,...] [--warmup-tasks K] [--quick] [--render]`.

Runs ``run_bench`` (the preset's fine-tune settings, one retrain per member and task, every default
strategy and pool: what ``expertise bench --preset tiny`` runs) on the built-in suite into a fresh
folder each time, once per repeat with the local executor (the process's default threads) and with
Ray (a local Ray of ``--workers`` CPUs, one unit and one thread per CPU), and reports from the runs'
own records:

- the wall time of each (the median of the repeats; Ray's start, paid once per run of a command, and
  its first run, whose workers still import torch, apart: the whole suite, or with ``--warmup-tasks K``
  its first K tasks, so that a preset whose suite takes an hour is not run three times);
- the units run and their summed seconds as the units measured them;
- the overhead per unit: the time the executor's workers were not running unit code, per unit,
  ``(workers x wall - summed unit seconds) / units`` (``workers`` is 1 for the local executor): Ray's
  scheduling and transfer, rebuilding a task and opening the library in each worker, and every wait
  of a unit on another (a selection on its embeddings, a retrain on its sweep);
- the cost model ``wall(N) ~ coordinator + (summed unit seconds + units x overhead) / N`` that these
  numbers give for N workers, as long as the suite has N units ready at once.

The library is ``--library`` or built once (resumable) in ``runs/perf_executors/library`` with the
preset; ``--tasks`` runs a subset of the built-in suite. Run it on an otherwise idle machine. Writes
perf/executors.md (the ``tiny`` preset) or perf/executors_PRESET.md and splices it into BENCHMARKS.md (``--quick``, a check that the script runs, builds a small library in a temporary
folder, runs one task once and only prints). The measurement is saved beside the section as
perf/executors[_PRESET].json, from which ``--render`` lays the section out again without running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from expertise.bench.runner import run_bench, suite_tasks
from expertise.config import get_preset
from expertise.runtime import RunContext, default_threads
from expertise.transfer.protocol import SweepConfig
from perf.timing import machine, splice_section

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"baseline.steps": "20", "expert.steps": "8", "epn.steps": "10", "num_experts": "2", "adapter.steps": "6",
         "finetune.steps": "3", "finetune.warmup_steps": "1"}
EXECUTED = ("embed", "selection", "transfer_sweep", "transfer_retrain")  # a protocol record is the coordinator's sum


def library_for(preset, path: Path):
    from expertise.upstream.build import build_library

    lib, world, _ = build_library(preset, path, RunContext(progress=False, log=lambda *a: None))
    return lib, world


def unit_seconds(out: Path) -> tuple[int, float]:
    """Units run and their summed seconds, from the run's records."""
    n, total = 0, 0.0
    for p in (out / "units").glob("*.json"):
        rec = json.loads(p.read_text())
        if rec["kind"] in EXECUTED:
            n += 1
            total += float(sum(rec["seconds"].values()))
    return n, total


def one_run(lib, tasks, preset, out: Path, executor) -> tuple[float, int, float]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run_bench(lib, tasks, out, preset.finetune, SweepConfig(lr_factors=(1.0,)), ctx=RunContext(progress=False, log=lambda *a: None),
              batch_size=preset.embed_batch, executor=executor)
    wall = time.perf_counter() - t0
    return (wall, *unit_seconds(out))


def measure(lib, tasks, preset, scratch: Path, workers: int, repeats: int, warmup: int | None = None) -> dict:
    import ray

    from expertise.units.ray_executor import RayExecutor

    from expertise.units.processes import ProcessExecutor

    local = [one_run(lib, tasks, preset, scratch / "local", None) for _ in range(repeats)]
    jobs = []
    for _ in range(repeats):  # each run starts its workers, as a command does: their start is counted
        executor = ProcessExecutor(workers, threads=1, progress=False)
        try:
            jobs.append(one_run(lib, tasks, preset, scratch / "jobs", executor))
        finally:
            executor.close()
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="warning")
    start = time.perf_counter() - t0
    try:
        first = one_run(lib, tasks[:warmup], preset, scratch / "ray", RayExecutor())
        warm = [one_run(lib, tasks, preset, scratch / "ray", RayExecutor()) for _ in range(repeats)]
    finally:
        ray.shutdown()
    return {"local": local, "jobs": jobs, "ray_first": first, "ray": warm, "ray_start": start,
            "warmup_tasks": len(tasks[:warmup])}


def _median(runs: list[tuple[float, int, float]]) -> tuple[float, int, float]:
    return (statistics.median(r[0] for r in runs), runs[0][1], statistics.median(r[2] for r in runs))


def part_name(preset: str) -> str:
    """A preset's section and file name: ``executors`` for the tiny preset (the first one measured),
    else ``executors_PRESET``, so each preset keeps its own section (perf/NAME.md, its markers)."""
    return "executors" if preset.startswith("tiny") else f"executors_{preset}"


def markers(preset: str) -> tuple[str, str]:
    name = part_name(preset)
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def section(m: dict, preset: str) -> str:
    """The section of measurement ``m``: :func:`measure`'s result with the run's settings (``tasks``:
    their names, ``subset``: whether ``--tasks`` chose them, ``workers``, ``repeats``, ``threads``,
    ``library``: ``--library`` or None), as saved in perf/executors_PRESET.json."""
    tasks, workers, repeats, threads, subset = m["tasks"], m["workers"], m["repeats"], m["threads"], m["subset"]
    library = None if m["library"] is None else Path(m["library"])
    (lw, ln, ls), (rw, rn, rs) = _median(m["local"]), _median(m["ray"])
    fw = m["ray_first"][0]
    local_over = (lw - ls) / ln * 1000
    ray_over = (workers * rw - rs) / rn * 1000
    runs = "one run" if repeats == 1 else f"the median of {repeats} runs"
    start_marker, end_marker = markers(preset)
    n = len(tasks)
    which = (f"{n} built-in task{'s' if n != 1 else ''}" if not subset else
             f"{n} task{'s' if n != 1 else ''} of the built-in suite ({', '.join(tasks)})")
    first = ("its first run" if m["warmup_tasks"] == n else
             f"its first run, on {m['warmup_tasks']} task{'s' if m['warmup_tasks'] != 1 else ''},")
    every = {k: ", ".join(f"{r[0]:.1f}" for r in m[k]) for k in ("local", "ray", "jobs") if k in m}
    lines = [
        start_marker, f"## The benchmark on worker processes and on Ray against one process (`{preset}`)", "",
        f"Regenerate with {command(preset, tasks if subset else None, m['warmup_tasks'], n, library)} on an otherwise idle machine. "
        f"`run_bench` on {which} with the `{preset}` preset (one retrain per member and task, every default strategy "
        f"and pool), into a fresh folder each run: the local executor with {threads} torch thread{'s' if threads != 1 else ''}, and Ray on the same "
        f"machine with {workers} workers (one unit, one CPU and one thread each); {os.cpu_count()} cores, "
        f"{machine()}, torch {torch.__version__}. Each wall time is {runs} (every run in "
        f"brackets); unit seconds are what the units measured themselves, from the run's records.", "",
        "| executor | wall (s) | units run | summed unit seconds | overhead per unit (ms) |",
        "|---|---:|---:|---:|---:|",
        f"| local, {threads} thread{'s' if threads != 1 else ''} | {lw:.1f} [{every['local']}] | {ln} | {ls:.1f} | {local_over:.0f} |",
        *([] if "jobs" not in m else [
            f"| local, --jobs {workers} (worker processes of one thread) | {_median(m['jobs'])[0]:.1f} [{every['jobs']}] | "
            f"{_median(m['jobs'])[1]} | {_median(m['jobs'])[2]:.1f} | "
            f"{(workers * _median(m['jobs'])[0] - _median(m['jobs'])[2]) / _median(m['jobs'])[1] * 1000:.0f} |"]),
        f"| Ray, {workers} workers | {rw:.1f} [{every['ray']}] | {rn} | {rs:.1f} | {ray_over:.0f} |", "",
        *([] if "jobs" not in m else [
            f"`--jobs {workers}` / one job: **{_median(m['jobs'])[0] / lw:.2f}x** (its workers' start and their "
            "rendering of the world counted)."]),
        f"Ray / local wall time: **{rw / lw:.2f}x**. Starting the local Ray took {m['ray_start']:.1f} s and {first} "
        f"{fw:.1f} s (its workers import torch and open the library once), neither counted above. Overhead per unit is "
        f"`(workers x wall - summed unit seconds) / units`: time a worker was not running unit code (Ray's scheduling, "
        "rebuilding the task and library in a worker, waiting for a unit's inputs). Both executors use every core: the "
        f"local one runs one unit at a time on {threads} thread{'s' if threads != 1 else ''}, Ray {workers} units at a time on one "
        f"thread each. The same units summed {rs / ls:.2f}x the local run's seconds on one thread, so {threads} threads made "
        f"a unit {rs / ls:.2f}x faster where {workers} one-thread units side by side do {workers}x the work: on one machine "
        "the ratio holds that thread effect as well as Ray's cost (the overhead column), and says nothing of what more "
        "machines gain. One thread per unit also changes a fine-tune's floating-point results (a thread count changes "
        "the order of the convolutions' sums), so the two runs' accuracies differ as any two thread counts' do; with "
        "the local executor on one thread (`--threads 1`) the records are identical, as the tests check. "
        f"With N workers of their own, the wall time is about "
        f"`{lw - ls:.1f} s + ({rs:.1f} s + {rn} x {ray_over / 1000:.3f} s) / N` while N units are ready at once (the "
        "coordinator's planning and report, then the units spread over the workers).", "", end_marker,
    ]
    return "\n".join(lines)


def command(preset: str, tasks: list[str] | None, warmup: int, n: int, library: Path | None = None) -> str:
    """The command that regenerates a section (``library``: the one given with ``--library``)."""
    if preset.startswith("tiny") and tasks is None and warmup == n and library is None:
        return "`make bench-executors` (`python -m perf.executors`)"
    args = [f"--preset {preset}"]
    if library is not None:
        path = library.resolve()
        args.append(f"--library {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if tasks is not None:
        args.append("--tasks " + ",".join(tasks))
    if warmup != n:
        args.append(f"--warmup-tasks {warmup}")
    return f"`python -m perf.executors {' '.join(args)}`"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="preset of the library and of the benchmark's fine-tunes")
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray (one unit each)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per executor (the median is reported)")
    ap.add_argument("--library", type=Path, default=None, help="library to benchmark (default: built in runs/perf_executors)")
    ap.add_argument("--tasks", default=None, help="comma-separated built-in tasks to run (default: the whole suite)")
    ap.add_argument("--warmup-tasks", type=int, default=None,
                    help="tasks of Ray's first (unreported) run, whose workers import torch (default: all)")
    ap.add_argument("--quick", action="store_true", help="a small library, one task, one run: checks the script, writes nothing")
    ap.add_argument("--render", action="store_true",
                    help="render the preset's section again from its saved perf/executors_PRESET.json, running nothing")
    args = ap.parse_args()
    if args.render:
        raw = ROOT / "perf" / f"{part_name(args.preset)}.json"
        if not raw.exists():
            raise SystemExit(f"--render: no {raw.relative_to(ROOT)}; measure the {args.preset!r} preset first")
        write(section(json.loads(raw.read_text()), args.preset), args.preset)
        return
    if args.warmup_tasks is not None and args.warmup_tasks < 1:
        raise SystemExit(f"--warmup-tasks must be at least 1, got {args.warmup_tasks}")
    threads = default_threads()
    torch.set_num_threads(threads)
    os.environ.setdefault("EXPERTISE_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.quick:
            preset = get_preset("tiny", QUICK)
            lib, world = library_for(preset, scratch / "library")
        else:
            preset = get_preset(args.preset)
            if args.library is not None:
                from expertise.library import Library
                from expertise.library.upstream_meta import world_of_library

                lib = Library.open(args.library)
                world = world_of_library(lib)
            else:
                lib, world = library_for(preset, ROOT / "runs" / "perf_executors" / "library")
        res = int(lib.info(lib.names()[0]).preprocessing["size"])
        tasks = pick_tasks(suite_tasks("builtin", world, res, 0), args.tasks)[: 1 if args.quick else None]
        m = measure(lib, tasks, preset, scratch, args.workers, 1 if args.quick else args.repeats, args.warmup_tasks)
    m |= {"tasks": [t.name for t in tasks], "subset": args.tasks is not None, "workers": args.workers,
          "repeats": 1 if args.quick else args.repeats, "threads": threads,
          "library": None if args.quick or args.library is None else str(args.library)}
    if args.quick:
        print(section(m, "tiny (quick)"))
        return
    # The raw measurement beside its section, so that --render gives the text again without rerunning.
    (ROOT / "perf" / f"{part_name(args.preset)}.json").write_text(json.dumps(m, indent=1) + "\n")
    write(section(m, args.preset), args.preset)


def write(text: str, preset: str) -> None:
    """Print a preset's section and splice it into perf/executors[_PRESET].md and BENCHMARKS.md."""
    print(text)
    start, end = markers(preset)
    splice_section(ROOT / "perf" / f"{part_name(preset)}.md", start, end, text)


def pick_tasks(tasks: list, names: str | None) -> list:
    """The suite's tasks named in ``names`` (comma-separated, in the suite's order), or all."""
    if names is None:
        return tasks
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {t.name for t in tasks})
    if unknown or not wanted:
        raise SystemExit(f"--tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; "
                         f"the built-in suite has {', '.join(t.name for t in tasks)}")
    return [t for t in tasks if t.name in wanted]


if __name__ == "__main__":
    main()
