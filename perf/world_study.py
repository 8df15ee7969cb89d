"""Does the embedded world give a pool worth choosing from? (issue 14, goals 1-3, one training seed)

Builds (or reuses) a library of B and the full experts through the normal upstream path
(``build_library``), then on every natural world task (or ``--tasks``) fine-tunes every pool member
with the preset's settings (``finetune_member``, the demo's one-retrain protocol) and scores the
pool with the kNN proxy (``run_selection``). Per task: the oracle (best member), the expected random
pick (the pool's mean), the worst member, B, the kNN pick and the task's domain expert; the summary
is per task group (natural, structured, ...). Writes ``perf/world_study/<label>.json`` and
regenerates ``perf/world_study.md`` from every JSON there.

    python -m perf.world_study --label v3-s1 --set world.seed=1     # the cpu preset, world seed 1
    python -m perf.world_study --label v2 --set world.domains=glyph,shape,texture \\
        --set world.domain_weights=0.3,1,1 --set expert.steps=600 --set expert.lr=0.03
    python -m perf.world_study --label v3-ft600 --library runs/demo/library \\
        --tasks blocks_count,glyph_digits --set finetune.steps=600 --set finetune.warmup_steps=60
    python -m perf.world_study --label v3-adapters --library runs/demo/library --kind adapter
    python -m perf.world_study --label v3-adapters-scaled --reuse-baseline runs/demo/library --kind adapter \\
        --set adapter_scaled=true                                     # a new bank on the demo's B
    python -m perf.world_study --annotate --label v3-adapters --library runs/demo/library  # upstream figures again
    python -m perf.world_study --report        # the table only, from the JSONs

The study's numbers come from one training seed; ``expertise bench --seeds`` gives the intervals.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from expertise.config import Preset, get_preset, parse_overrides
from expertise.data.world import WORLD_VERSION
from expertise.io import atomic_write_json, atomic_write_text
from expertise.library import UPSTREAM, Library
from expertise.runtime import RunContext, configure
from expertise.select.embed import EmbeddingCache
from expertise.select.run import run_selection
from expertise.store import RecordStore
from expertise.transfer.protocol import finetune_member
from expertise.upstream.baseline import baseline_name, leaf_accuracy
from expertise.library.upstream_meta import upstream_meta
from expertise.upstream.build import build_library

HERE = Path(__file__).resolve().parent
KINDS = {"full": "full_expert", "adapter": "adapter_expert"}  # --kind -> the members' manifest kind
RESULTS = HERE / "world_study"
TABLE = HERE / "world_study.md"


def seed_with_baseline(preset: Preset, source: Path, path: Path, log=print) -> None:
    """Start the library at ``path`` with B of the library at ``source`` (same world, backbone,
    baseline settings and seed, else an error), so a study of other expert settings skips B's
    training; ``build_library`` then trains only the experts. Writes the ``upstream.json`` that
    ``build_library`` would write."""
    src = Library.open(source)
    old = upstream_meta(src)
    settings = {"world": preset.to_json()["world"], "world_version": WORLD_VERSION, "backbone": preset.backbone,
                "baseline": preset.baseline.to_json(), "expert": preset.expert.to_json(), "seed": preset.seed}
    settings = json.loads(json.dumps(settings))  # as stored: lists, not tuples
    same = ("world", "world_version", "backbone", "baseline", "seed")
    if old is None or any(old["settings"].get(k) != settings[k] for k in same):
        raise SystemExit(f"{source} was built with another world, backbone, baseline or seed; B cannot be reused")
    base = baseline_name(preset.backbone)
    lib = Library.create(path, src.hierarchy)
    lib.write_meta(UPSTREAM, {"preset": preset.name, "world": settings["world"], "settings": settings})
    lib.add(src.info(base), src.load(base), label_prior=src.label_prior(base))
    log(f"B reused from {source}")


def study(preset_name: str, overrides: dict[str, str], out: Path, tasks: list[str] | None,
          reuse_baseline: Path | None = None, library_path: Path | None = None, kind: str = "full",
          log=print) -> dict[str, Any]:
    """``library_path``: a library built with the same upstream settings (``make demo``'s), whose
    members are used as they are (``build_library`` trains none), so a study of fine-tune settings
    costs only the fine-tunes; the fine-tunes' records go to ``out``. ``kind``: the experts of the
    pool beside B, "full" or "adapter" (the bank, trained with the preset's ``adapter`` settings
    unless the library holds one trained so)."""
    if kind not in KINDS:
        raise SystemExit(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    preset = get_preset(preset_name, overrides)
    device = configure(None, "cpu")
    ctx = RunContext(device, preset.seed, False, log)
    t0 = time.perf_counter()
    if reuse_baseline is not None and not (out / "library").exists():
        seed_with_baseline(preset, reuse_baseline, out / "library", log)
    library, world, names = build_library(preset, library_path or out / "library", ctx, kinds=(kind,))
    upstream_s = time.perf_counter() - t0
    assert world is not None
    pool = [n for n in names if library.info(n).kind in ("baseline", KINDS[kind])]
    base = pool[0]
    store, cache = RecordStore(out), EmbeddingCache(library.path / "cache")
    natural = [t for t in world.task_names if world.task(t).group == "natural"]
    rows, ft_s = [], 0.0
    for name in tasks or natural:
        task = world.task(name)
        run = run_selection(library, task, "proxy", 1, "knn_loo", pool, ctx.with_(cache=cache), preset.embed_batch, 0)
        knn = run.selection.scores()
        test = {}
        for member in pool:
            t1 = time.perf_counter()
            test[member] = finetune_member(library, member, task, preset, ctx.with_(store=store)).test_accuracy
            ft_s += time.perf_counter() - t1
        domain = world.domain_of_task(name)
        expert = next((m for m in pool if library.info(m).domain == domain), None)
        rows.append({"task": name, "group": task.group, "domain": domain, "knn": knn, "test": test, "knn_pick": run.selection.best,
                     "domain_expert": expert})
        log(f"{name}: " + ", ".join(f"{m.split('.', 1)[1]} {test[m]:.3f}" for m in pool))
    upstream = upstream_accuracies(library, pool, world.upstream("holdout").materialize(), ctx.device)
    return {"preset": preset.name, "overrides": overrides, "world_version": WORLD_VERSION, "kind": kind, "members": pool,
            "upstream_accuracy": upstream,
            "baseline_reused": reuse_baseline is not None, "library_reused": library_path is not None,
            "baseline": base, "upstream_seconds": upstream_s, "finetune_seconds": ft_s,
            "finetunes": len(rows) * len(pool), "finetune_steps": preset.finetune.steps, "tasks": rows}


def upstream_accuracies(library: Library, pool: list[str], holdout: Any, device: Any) -> dict[str, dict[str, Any]]:
    """Per member, its upstream holdout leaf accuracy over all leaves (``all``, as the library
    records it), on its own node's slice (``slice``) and B's on that slice (``b_slice``): whether
    the expert specialised (slice above B's) and forgot (all below B's). For an adapter expert
    also ``stream``: per adapter (stage), the RMS of the stream it joins and of what it adds, on
    up to 256 holdout images of its slice."""
    base = library.load(pool[0])
    out: dict[str, dict[str, Any]] = {}
    for m in pool:
        info = library.info(m)
        row: dict[str, Any] = {"all": info.upstream_accuracy, "slice": info.extra.get("slice_accuracy"), "b_slice": None}
        if info.kind != "baseline" and info.domain:
            idx = holdout.slice(info.domain)
            row["b_slice"] = leaf_accuracy(base, holdout, idx, device=device)
            if info.kind == "adapter_expert":
                row["stream"] = adapter_stream(library.load(m), holdout.images(idx[:256]))
        out[m] = row
    return out


def adapter_stream(expert: Any, images: Any) -> list[dict[str, float]]:
    """Per adapter of ``expert`` (an AdapterExpert), on uint8 ``images``: the RMS of its input
    ``x`` (the stream) and of what it adds, ``a(x) - x``."""
    import torch

    from expertise.models.backbones import prepare

    rows = []
    with torch.inference_mode():
        x = expert.backbone.stem(prepare(images, expert.preprocessing))
        for adapter, stage in zip(expert.adapters, expert.backbone.stages):
            y = adapter(x)
            rows.append({"stream": float(x.pow(2).mean().sqrt()), "added": float((y - x).pow(2).mean().sqrt())})
            x = stage(y)
    return rows


def annotate(path: Path, library_path: Path, preset_name: str, overrides: dict[str, str]) -> None:
    """Recompute a finished study's ``upstream_accuracy`` from its library (no fine-tune)."""
    from expertise.data.world import World

    r = json.loads(path.read_text())
    library = Library.open(library_path)
    world = World(get_preset(preset_name, overrides).world)
    r["upstream_accuracy"] = upstream_accuracies(library, r["members"], world.upstream("holdout").materialize(),
                                                 configure(None, "cpu"))
    atomic_write_json(path, r)


def groups(r: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The study's task rows by task group, in the order they first appear (rows written before
    the group was recorded are all natural tasks)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for t in r["tasks"]:
        out.setdefault(t.get("group", "natural"), []).append(t)
    return out


def summary(r: dict[str, Any], tasks: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Means over ``tasks`` (default: all of the study's), in accuracy points: oracle - random,
    oracle - worst, kNN - random, kNN - B, domain expert - B (tasks with one), the oracle and B."""
    base = r["baseline"]
    per = {k: [] for k in ("oracle_random", "oracle_worst", "knn_random", "knn_b", "expert_b", "oracle", "b")}
    for t in r["tasks"] if tasks is None else tasks:
        acc = np.array([t["test"][m] for m in r["members"]])
        pick = t["test"][t["knn_pick"]]
        per["oracle"].append(acc.max())
        per["b"].append(t["test"][base])
        per["oracle_random"].append(acc.max() - acc.mean())
        per["oracle_worst"].append(acc.max() - acc.min())
        per["knn_random"].append(pick - acc.mean())
        per["knn_b"].append(pick - t["test"][base])
        if t["domain_expert"]:
            per["expert_b"].append(t["test"][t["domain_expert"]] - t["test"][base])
    return {k: 100 * float(np.mean(v)) if v else float("nan") for k, v in per.items()}


def specialised(r: dict[str, Any]) -> float:
    """Mean over the study's experts of upstream own-slice accuracy minus B's there, in points (NaN
    when the study did not record it)."""
    up = r.get("upstream_accuracy") or {}
    d = [v["slice"] - v["b_slice"] for v in up.values() if v.get("slice") is not None and v.get("b_slice") is not None]
    return 100 * float(np.mean(d)) if d else float("nan")


def _signed(x: float) -> str:
    """A signed figure, or "-" where there is none (a group with no domain expert)."""
    return "-" if np.isnan(x) else f"{x:+.1f}"


def report() -> str:
    lines = ["# World study: is the pool worth choosing from? (world tasks, one training seed)", "",
             "Regenerate with `python -m perf.world_study --report`; each row is `perf/world_study/<label>.json`, "
             "written by `python -m perf.world_study --label LABEL [--set ...]` (see the module docstring).", "",
             "Points of test accuracy, mean over a study's tasks of one group. Targets (issue 14, cpu preset, "
             "natural tasks): oracle - random >= 4, oracle - worst >= 8, kNN - random > 0, kNN - B >= 1.5; "
             "on structured tasks, as in paper 000, no gain from choosing.", "",
             "Upstream, experts' own slice - B's: the mean over the pool's experts of each one's upstream holdout "
             "accuracy on its own node's slice minus B's there (how far they specialised; from the studies that "
             "record it).", "",
             "| label | world | settings | group | tasks | pool | B | oracle | oracle - random | oracle - worst "
             "| kNN - random | kNN - B | domain expert - B | upstream, own slice - B's | upstream s | fine-tunes (s) |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        sets = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "preset defaults"
        reused = " (library reused)" if r.get("library_reused") else " (B reused)" if r.get("baseline_reused") else ""
        for group, rows in groups(r).items():
            s = summary(r, rows)
            lines.append(f"| {path.stem} | v{r['world_version']} | {sets} | {group} | {len(rows)} | B + {len(r['members']) - 1} {r.get('kind', 'full')} "
                         f"| {s['b']:.1f} | {s['oracle']:.1f} | {s['oracle_random']:.1f} | {s['oracle_worst']:.1f} "
                         f"| {s['knn_random']:+.1f} | {s['knn_b']:+.1f} | {_signed(s['expert_b'])} | {_signed(specialised(r))} "
                         f"| {r['upstream_seconds']:.0f}{reused} "
                         f"| {r['finetunes']} x {r['finetune_steps']} steps ({r['finetune_seconds']:.0f}) |")
    lines += ["", "## Per task", ""]
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        short = [m.split(".", 1)[1] for m in r["members"]]
        lines += [f"### {path.stem}", "", "| task | " + " | ".join(short) + " | kNN pick |",
                  "|---|" + "---:|" * len(short) + "---|"]
        for t in r["tasks"]:
            best = max(t["test"].values())
            cells = [f"**{t['test'][m]:.3f}**" if t["test"][m] == best else f"{t['test'][m]:.3f}" for m in r["members"]]
            lines.append(f"| {t['task']} | " + " | ".join(cells) + f" | {t['knn_pick'].split('.', 1)[1]} |")
        up = r.get("upstream_accuracy")
        if up:  # upstream holdout leaf accuracy: over all leaves; on the member's own slice (B's there)
            lines.append("| *upstream, all leaves* | " + " | ".join(f"{up[m]['all']:.3f}" for m in r["members"]) + " | |")
            lines.append("| *upstream, own slice (B's)* | " + " | ".join(
                f"{up[m]['slice']:.3f} ({up[m]['b_slice']:.3f})" if None not in (up[m]["slice"], up[m]["b_slice"]) else "-"
                for m in r["members"]) + " | |")
            if any("stream" in up[m] for m in r["members"]):  # adapters: what each adds / the stream, per stage
                lines.append("| *adapter output / stream, per stage (%)* | " + " | ".join(
                    ", ".join(f"{100 * a['added'] / a['stream']:.1f}" for a in up[m]["stream"]) if "stream" in up[m] else "-"
                    for m in r["members"]) + " | |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", help="the row's name (perf/world_study/<label>.json)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, help="work folder (library, units); default /tmp/world_study/<label>")
    ap.add_argument("--tasks", default="", help="comma-separated tasks (default: every natural world task)")
    ap.add_argument("--reuse-baseline", type=Path, help="a library with B of the same world and baseline settings")
    ap.add_argument("--library", type=Path, help="use this library's members as they are (same upstream settings), "
                    "e.g. runs/demo/library: a study of fine-tune settings")
    ap.add_argument("--kind", default="full", choices=sorted(KINDS), help="the experts beside B in the pool")
    ap.add_argument("--annotate", action="store_true", help="recompute the upstream accuracies of the study --label "
                    "from its library (--library, else --out's or the default work folder's), then the report")
    ap.add_argument("--report", action="store_true", help="only regenerate perf/world_study.md")
    args = ap.parse_args()
    if args.annotate:
        if not args.label:
            ap.error("--annotate needs --label")
        out = args.out or Path("/tmp/world_study") / args.label
        annotate(RESULTS / f"{args.label}.json", args.library or out / "library", args.preset, parse_overrides(args.sets))
    elif not args.report:
        if not args.label:
            ap.error("--label is required unless --report")
        out = args.out or Path("/tmp/world_study") / args.label
        r = study(args.preset, parse_overrides(args.sets), out, [t for t in args.tasks.split(",") if t] or None,
                  args.reuse_baseline, args.library, args.kind)
        RESULTS.mkdir(exist_ok=True)
        atomic_write_json(RESULTS / f"{args.label}.json", r)
        print(json.dumps({"label": args.label, **{g: summary(r, rows) for g, rows in groups(r).items()}}))
    atomic_write_text(TABLE, report() + "\n")


if __name__ == "__main__":
    main()
