"""``expertise demo``: the whole pipeline of paper 000 (figure 1) on the embedded world.

Upstream: baseline B, the top-K full experts and the expert prediction network. Selection: kNN
leave-one-out accuracy of every member on each task's 1,000 images, beside the pick of every other
strategy. Transfer: fine-tune B and the kNN pick, test both. Writes ``OUT/results.md``,
``OUT/results.json``, ``OUT/knn.png`` and ``OUT/world.png``. The training and embedding are units
(:mod:`expertise.units`) run on one executor, so ``--jobs`` runs them side by side; choosing and
the report happen here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from expertise.config import Preset
from expertise.data.loaders import load_sklearn_digits
from expertise.data.world import save_preview
from expertise.io import atomic_write_json, atomic_write_text
from expertise.runtime import RunContext
from expertise.store import RecordStore
import expertise.wiring  # noqa: F401  every built-in unit kind
from expertise.bench.units import embed_plan
from expertise.plots import pyplot, save_figure, short_name
from expertise.records import make_record
from expertise.select.embed import EmbeddingCache
from expertise.select.registry import default_rows, get_strategy
from expertise.select.run import run_selection
from expertise.transfer.protocol import DEMO_SWEEP
from expertise.transfer.units import protocol_units
from expertise.units import LocalExecutor, WorkerContext, drive, task_ref
from expertise.upstream.baseline import baseline_name
from expertise.upstream.build import build_library

if TYPE_CHECKING:
    from expertise.units.plan import Executor


# The strategies whose picks the demo shows, from the registry's default rows: (label, strategy, proxy, budget).
DEMO_STRATEGIES: tuple[tuple[str, str, str, int], ...] = tuple(
    (row.label + (f", B={row.demo_budget}" if row.demo_budget > 1 else ""), strategy.name, row.proxy or "", row.demo_budget)
    for row, strategy in default_rows())



def run_demo(preset: Preset, out: Path, library_path: Path | None = None, device: torch.device = torch.device("cpu"),
             progress: bool = True, log=print, executor: Executor | None = None) -> dict[str, Any]:
    """The demo into ``out``: every stage's work as units on ``executor`` (default: in this process,
    one after another; ``--jobs N``: N at a time in worker processes), its report written at the end."""
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    executor = executor or LocalExecutor()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    ctx = RunContext(device, preset.seed, progress, log)
    library, world, names = build_library(preset, Path(library_path or out / "library"), ctx, executor=executor)
    timings["upstream"] = time.perf_counter() - t0
    save_preview(world, out / "world.png")
    base = baseline_name(preset.backbone)
    domain_of_member = {n: library.info(n).domain for n in names}

    task_names = list(preset.tasks or (*world.task_names, "sklearn_digits"))
    cache = EmbeddingCache(library.path / "cache")  # the library's one cache, shared with select, transfer and bench
    store = RecordStore(out)
    worker = WorkerContext(device, progress).seed_with([library])
    tasks = [load_sklearn_digits(preset.world.resolution, preset.seed) if t == "sklearn_digits" else world.task(t)
             for t in task_names]
    worker.seed_with(tasks=tasks)

    # Selection: every member's features of every task embedded as units (into the cache), then ranked here.
    t0 = time.perf_counter()
    readers = sorted({m for _, strategy, _, _ in DEMO_STRATEGIES for m in get_strategy(strategy).members_to_embed(library, names)}
                     | set(names), key=library.names().index)
    embedded = drive([embed_plan(library, task, readers, cache, preset.seed, preset.embed_batch) for task in tasks],
                     executor, store, worker, progress, desc="embed units", log=log)
    # resamples=0: the demo reports scores and picks, which the bootstrap of the scores never changes
    runs = [run_selection(library, task, "proxy", 1, "knn_loo", names, ctx.with_(cache=cache), preset.embed_batch,
                          resamples=0)
            .embedded_by([u for u in units if u.config["member"] in names])
            for task, units in zip(tasks, embedded)]
    timings["select"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    picks: list[dict[str, list[str]]] = []
    for task in tasks:
        picks.append({label: list(run_selection(library, task, strategy, budget, proxy or "knn_loo", names,
                                                ctx.with_(cache=cache, progress=False), preset.embed_batch,
                                                resamples=0).selection.picks)
                      for label, strategy, proxy, budget in DEMO_STRATEGIES})
    timings["other_strategies"] = time.perf_counter() - t0

    # Transfer: B and the kNN pick fine-tuned on every task, as protocol units (a pick that is B runs once).
    t0 = time.perf_counter()
    plans = [protocol_units(library, member, task, task_ref(task, preset.seed), preset.finetune, DEMO_SWEEP,
                            preset.seed, store) for task, run in zip(tasks, runs) for member in (base, run.selection.best)]
    results = drive(plans, executor, store, worker, progress, desc="fine-tune units", log=log)
    timings["finetune"] = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    for i, (task, run) in enumerate(zip(tasks, runs)):
        tname, res_b, res_sel = task.name, results[2 * i], results[2 * i + 1]
        scores = run.selection.scores()
        chosen = run.selection.best
        domain = world.domain_of_task(tname) if tname in world.task_names else None
        matched = next((n for n in names if domain_of_member[n] == domain), None)
        row = {
            "task": tname, "group": task.group, "classes": task.num_classes, "domain": domain,
            "knn": scores, "selected": chosen, "matched_expert": matched, "picks": picks[i],
            "test_baseline": res_b.test_accuracy, "test_selected": res_sel.test_accuracy,
            "select_seconds": run.seconds, "embedded_images": run.embed.images,
        }
        rows.append(row)
        log(f"{tname:>18}: kNN B {scores[base]:.3f}"
            + (f", matched expert {scores[matched]:.3f}" if matched else "")
            + f"; selected {chosen} -> test {res_sel.test_accuracy:.3f} (B {res_b.test_accuracy:.3f})")
    timings["total"] = time.perf_counter() - t_start
    result = make_record("demo", preset.to_json(), {"tasks": rows, "members": names, "takeaway": takeaway(rows, base)},
                         timings)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", results_markdown(rows, names, base, timings, preset.name))
    plot_knn(rows, names, out / "knn.png")
    plot_gain(rows, base, out / "gain.png")
    log(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'gain.png'} and {out / 'knn.png'} in "
        f"{timings['total']:.0f}s")
    return result


def results_markdown(rows: list[dict], names: list[str], base: str, timings: dict[str, float], preset: str) -> str:
    lines = [f"# expertise demo (`{preset}` preset)", ""]
    lines += ["## Selection and transfer", "",
              "kNN = leave-one-out 1-NN accuracy on the task's 1,000 train+val images; test = accuracy on the test split "
              "after fine-tuning on those 1,000 images.", "",
              "| task | group | kNN B | kNN domain expert | selected | kNN selected | test B | test selected |",
              "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        m = r["matched_expert"]
        matched = "" if m is None else f"{r['knn'][m]:.3f} ({short_name(m)})"
        lines.append(
            f"| {r['task']} | {r['group']} | {r['knn'][base]:.3f} | {matched} "
            f"| {short_name(r['selected'])} | {r['knn'][r['selected']]:.3f} | {r['test_baseline']:.3f} | {r['test_selected']:.3f} |"
        )
    nat = [r for r in rows if r["group"] == "natural" and r["matched_expert"]]
    wins = sum(r["knn"][r["matched_expert"]] > r["knn"][base] for r in nat)
    lines += ["", f"On {wins} of {len(nat)} natural tasks with a domain-matched expert, that expert's kNN accuracy beats B's.", ""]
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    lines += [f"Mean test accuracy over {len(rows)} tasks: B {mean('test_baseline'):.3f}, selected {mean('test_selected'):.3f}.", ""]
    if rows:
        lines += [takeaway(rows, base), ""]
    labels = list(rows[0]["picks"]) if rows and "picks" in rows[0] else []
    if labels:
        lines += ["## The pick of every strategy", "",
                  "Each strategy ranks the same pool (domain prediction and label matching without the task's labels; "
                  "task-agnostic and random without its images).", "",
                  "| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for r in rows:
            lines.append(f"| {r['task']} | " + " | ".join(", ".join(short_name(n) for n in r["picks"][k]) for k in labels) + " |")
        lines.append("")
    lines += ["## kNN accuracy of every member", "", "| task | " + " | ".join(short_name(n) for n in names) + " |",
              "|---|" + "---:|" * len(names)]
    for r in rows:
        best = max(r["knn"].values())
        cells = [f"**{r['knn'][n]:.3f}**" if r["knn"][n] == best else f"{r['knn'][n]:.3f}" for n in names]
        lines.append(f"| {r['task']} | " + " | ".join(cells) + " |")
    lines += ["", "## Wall time", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    return "\n".join(lines) + "\n"


def takeaway(rows: list[dict], base: str) -> str:
    """The one sentence a user should take away, from what the demo measured: the mean gain in test
    accuracy of fine-tuning the kNN pick instead of B, on the natural tasks (all tasks when there is
    none). The demo fine-tunes only B and the pick, so a random expert's expectation is
    ``expertise bench``'s to measure (it fine-tunes every member)."""
    natural = [r for r in rows if r["group"] == "natural"]
    chosen, where = (natural, f"the {len(natural)} natural tasks") if natural else (rows, f"all {len(rows)} tasks")
    n = len(chosen)
    if n == 0:
        return "The demo ran no task, so it has no gain to report."
    gain = 100 * sum(r["test_selected"] - r["test_baseline"] for r in chosen) / n
    sel = 100 * sum(r["test_selected"] for r in chosen) / n
    b = 100 * sum(r["test_baseline"] for r in chosen) / n
    same = sum(r["selected"] == base for r in chosen)
    return (f"Choosing by kNN gave {gain:+.1f} points over B on {where} (mean test accuracy {sel:.1f}% against "
            f"{b:.1f}%; kNN chose B itself on {same} of them). The demo fine-tunes only B and the kNN pick; "
            "'expertise bench' measures a random expert and the oracle, with paired intervals over tasks and seeds.")


def plot_knn(rows: list[dict], names: list[str], path: Path) -> None:
    """Heat map of kNN accuracy, tasks x members, the selected member outlined."""
    plt = pyplot()
    import numpy as np

    data = np.array([[r["knn"][n] for n in names] for r in rows])
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(names), 1.0 + 0.45 * len(rows)))
    im = ax.imshow(data - data.mean(1, keepdims=True), cmap="RdBu", vmin=-0.05, vmax=0.05, aspect="auto")
    for i, r in enumerate(rows):
        for j, n in enumerate(names):
            ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    fontweight="bold" if n == r["selected"] else "normal")
    ax.set_xticks(range(len(names)), [short_name(n) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r['task']} ({r['group']})" for r in rows], fontsize=8)
    ax.set_title("kNN leave-one-out accuracy per task and member\n(colour: difference from the task's mean, clipped at ±0.05; bold: selected)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    save_figure(fig, path)


def plot_gain(rows: list[dict], base: str, path: Path) -> None:
    """What choosing gains: each task's test accuracy after fine-tuning B and after fine-tuning the
    kNN pick, tasks grouped, the axis from 0 to 1."""
    plt = pyplot()
    order = sorted(rows, key=lambda r: (["natural", "specialized", "structured"].index(r["group"])
                                        if r["group"] in ("natural", "specialized", "structured") else 3))
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.32 * len(order)))
    for i, r in enumerate(order):
        b, s = r["test_baseline"], r["test_selected"]
        ax.plot([b, s], [i, i], color="#2a9d8f" if s >= b else "#e76f51", lw=2.5, zorder=1)
        ax.scatter([b], [i], color="#7f7f7f", s=28, zorder=2, label="B (the generalist)" if i == 0 else None)
        ax.scatter([s], [i], color="#264653", s=28, zorder=3, label="the kNN pick" if i == 0 else None)
    ax.set_yticks(range(len(order)), [f"{r['task']} ({r['group']})" for r in order], fontsize=8)
    ax.set_xlim(0, 1.01)
    ax.set_xlabel("test accuracy after fine-tuning on 1,000 images")
    nat = [r for r in rows if r["group"] == "natural"]
    gain = 100 * sum(r["test_selected"] - r["test_baseline"] for r in nat) / len(nat) if nat else float("nan")
    ax.set_title(f"Fine-tuning the member kNN picks instead of B: {gain:+.1f} points on the natural tasks",
                 fontsize=9)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, frameon=True)
    fig.tight_layout()
    save_figure(fig, path)
