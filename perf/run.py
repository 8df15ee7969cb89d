"""Regenerate BENCHMARKS.md: `make bench` (or `.venv/bin/python -m perf.run`).

Each figure is measured in this one run on this machine, and ratios are taken within the run, so
they compare like with like. Throughputs are best-of-3 after a warm-up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from expertise.data.world import World, WorldConfig  # noqa: E402
from expertise.models.backbones import BACKBONES, ExpertModel  # noqa: E402
from expertise.runtime import RunContext  # noqa: E402
from expertise.select.embed import embed_images  # noqa: E402
from expertise.train import TrainConfig, fit, multilabel_loss  # noqa: E402
from perf.timing import best_of, machine  # noqa: E402


def world_rate(resolution: int, n: int = 4000) -> float:
    up = World(WorldConfig(resolution=resolution, upstream_size=n)).upstream("train")
    idx = np.arange(n)
    return n / best_of(lambda: up.images(idx))


def train_rate(backbone: str, batch: int = 128, steps: int = 8) -> float:
    cfg = BACKBONES[backbone]
    model = ExpertModel(cfg, num_outputs=150)
    x = torch.randn(batch, 3, cfg.resolution, cfg.resolution)
    y = (torch.rand(batch, 150) > 0.97).float()
    tc = TrainConfig(steps=steps, batch_size=batch, lr=0.01)
    return steps * batch / best_of(lambda: fit(model, lambda s: (x, y), tc, multilabel_loss, show_progress=False), 2)


def embed_rate(backbone: str, n: int = 2000) -> float:
    cfg = BACKBONES[backbone]
    model = ExpertModel(cfg, num_outputs=0)
    imgs = torch.randint(0, 256, (n, 3, cfg.resolution, cfg.resolution), dtype=torch.uint8)
    return n / best_of(lambda: embed_images(model, imgs))


def proxy_seconds(n: int = 1000, d: int = 256, classes: int = 10, z: int = 128) -> dict[str, float]:
    """Seconds each proxy takes to score one member on a 1,000-image task (best of 3)."""
    from expertise.select.proxy_registry import PROXIES

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    feats = rng.normal(size=(n, d)) + np.eye(classes)[y] @ rng.normal(size=(classes, d))
    logits = rng.normal(size=(n, z))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {name: best_of(lambda spec=spec: spec.fn(feats if spec.input == "features" else probs, y))
            for name, spec in PROXIES.items()}


def pool_selection(members: int = 20, seed: int = 0) -> tuple[list[tuple[str, str, str, str]], float]:
    """Selection cost for a pool of ``members`` bit_s members stored in a library on disk, on a
    1,000-image world task: one cold embedding pass of the whole pool (loading and hash checks
    included), then every proxy scoring the whole pool from the cache. Untrained weights: the cost
    does not depend on what the weights are."""
    import tempfile

    from expertise.data.world import World, WorldConfig
    from expertise.library import Library, MemberInfo
    from expertise.select.embed import EmbeddingCache
    from expertise.select.proxy_registry import PROXIES
    from expertise.select.run import run_selection

    task = World(WorldConfig(resolution=32, test_size=1000)).task("glyph_unseen")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = Library.create(Path(tmp) / "lib", None)
        for i in range(members):
            torch.manual_seed(seed + i)
            model = ExpertModel(BACKBONES["bit_s"], num_outputs=150)
            lib.add(MemberInfo(f"bit_s.m{i:02d}", "full_expert", None, None, 1000, 0, 0, 0.5, {}, {}), model)
        cache = EmbeddingCache(Path(tmp) / "cache")
        cold = run_selection(lib, task, "proxy", 1, "knn_loo", ctx=RunContext(progress=False, cache=cache))
        embed_s = cold.selection.seconds["embed"]
        for name in PROXIES:
            score_s = min(run_selection(lib, task, "proxy", 1, name, ctx=RunContext(progress=False, cache=cache)).selection.seconds["score"]
                          for _ in range(2))
            rows.append((name, f"{embed_s:.2f}", f"{score_s:.2f}", f"{score_s / embed_s:.2f}"))
    return rows, embed_s


def adapters_section() -> str:
    from perf.adapters import section

    return section()


def summary_sections(path: Path, titles: tuple[str, ...], kind: str) -> list[str]:
    """The sections of a benchmark's ``summary.md`` whose title starts with one of ``titles`` (of
    the tables given with several interval kinds, only those of ``kind``), one heading level down."""
    out: list[str] = []
    for part in path.read_text().split("\n## ")[1:]:
        title = part.split("\n", 1)[0]
        if title.startswith(titles) and ("intervals over" not in title or title.endswith(kind)):
            out += ["### " + part.rstrip(), ""]
    return out


KEPT = "_Kept from an earlier `make bench`:"


def kept_section(old: str, heading: str, source: str, note: str = "") -> list[str]:
    """The section of the current BENCHMARKS.md (``old``) whose heading line starts with ``heading``
    ("## ..." or "### ...", up to the next heading of that level or above), kept as it is when its
    source (``source``, a runs folder) is not on this machine, under a line that says so; [] when
    there is none. Its figures stay those of the run that made them."""
    lines = old.splitlines()
    level = heading.split(" ", 1)[0]
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines))  # a heading of that level or above, or a script's section
                if lines[i].startswith("#") and len(lines[i].split(" ", 1)[0]) <= len(level)
                or lines[i].startswith("<!-- ") and lines[i].endswith(":start -->")), len(lines))
    body = [line for line in lines[start + 1: end] if not line.startswith(KEPT)]
    while body and not body[0].strip():
        body = body[1:]
    why = f"{KEPT} the runs it reads (`{source}`) are not on the machine of this run, so these are their figures.{note}_"
    return [lines[start], "", why, "", *body]


def benchmark_sections(old: str = "") -> list[str]:
    """The benchmark of the built-in suite (`runs/demo/summary.md`, written by `expertise bench`)
    and the DAT records (`runs/dat/*.json`, written by `expertise dat`), when they exist; the
    sections of world seed 2 and of DAT are kept from ``old`` (the current BENCHMARKS.md) when
    their runs are not here."""
    lines: list[str] = []
    summary = ROOT / "runs" / "demo" / "summary.md"
    if summary.exists():
        body = summary.read_text().split("\n", 1)[1]  # drop its title
        lines += ["## The built-in suite, `cpu` preset", "",
                  "Regenerate with `make demo` then `.venv/bin/expertise bench --library runs/demo/library --out runs/demo "
                  "--preset cpu --seeds 0,1,2`, then `make bench` (the benchmark reuses the demo's library, embeddings "
                  "and fine-tunes). Protocol: the preset's fine-tune settings without a sweep, one retrain on the 1,000 "
                  "train+val images per training seed; the tasks' splits are those of seed 0.", "",
                  *[("#" + x if x.startswith("## ") else x) for x in body.splitlines()], ""]
    unseen = ROOT / "runs" / "demo-w2" / "summary.md"
    if unseen.exists():
        lines += ["## The built-in suite on a world seed and training seeds not used in design", "",
                  "Issue 14's goal 5: the same benchmark on world seed 2 (the world was designed on seeds 0 and 1) with "
                  "training seeds 3, 4, 5. Regenerate with `.venv/bin/expertise demo --preset cpu --set world.seed=2 "
                  "--out runs/demo-w2`, then `.venv/bin/expertise bench --library runs/demo-w2/library --out runs/demo-w2 "
                  "--preset cpu --set world.seed=2 --seeds 3,4,5`, then `make bench`. Its sections below; "
                  "`runs/demo-w2/summary.md` has every table.", "",
                  *summary_sections(unseen, ("Table 1 layout", "Table 2 layout", "Does choosing pay?"), "intervals over tasks and runs")]
    else:
        lines += kept_section(old, "## The built-in suite on a world seed", "runs/demo-w2",
                              STRUCTURED_BEFORE)
    dats = sorted((ROOT / "runs" / "dat").glob("dat.*.json")) if (ROOT / "runs" / "dat").exists() else []
    if dats:
        lines += ["## Domain adaptive transfer against kNN selection", "",
                  "From `expertise dat --library runs/demo/library --task TASK --init INIT` (each record measures DAT "
                  "and a cold kNN selection of the whole pool in the same run). Cost ratio = DAT's weights, sampling "
                  "and pre-training against the kNN selection (embedding every member plus scoring); both are "
                  "followed by the same single fine-tune.", "",
                  "| task | init | sampler | weighting | DAT test acc | unique / sampled | DAT s (before fine-tune) | kNN selection s "
                  "| time ratio | DAT images | kNN images | image ratio |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in dats:
            r = json.loads(f.read_text())
            m, c = r["metrics"], r["config"]
            knn = c["knn_selection"]
            secs = sum(v for k, v in r["seconds"].items() if k != "finetune")
            imgs = r["images"].get("weights", 0) + r["images"].get("pretrain", 0)
            lines.append(f"| {m['task']} | {c.get('init')} | {c.get('sampler')} | {c.get('weighting')} | {m['test_accuracy']:.3f} "
                         f"| {m['unique_examples']:,} / {m['sampled_size']:,} | {secs:.0f} | {knn['seconds']:.1f} "
                         f"| {secs / knn['seconds']:,.0f}x | {imgs:,} | {knn['images']:,} | {imgs / knn['images']:,.0f}x |")
        lines.append("")
    else:
        lines += [*kept_section(old, "## Domain adaptive transfer", "runs/dat"), ""]
    return lines


# The built-in suite's structured tasks changed on 2026-12-01 (docs/world.md); the world-seed-2 section
# in BENCHMARKS.md then was made before, on the earlier ones (a new run of it replaces the kept one).
STRUCTURED_BEFORE = (" Its structured tasks are the built-in suite's before 2026-12-01 (count, orientation, location), "
                     "not today's block tasks (docs/world.md).")


# The demo timed against the earlier three-domain design on one machine (docs/demo.md, "What `make demo`
# does", has both commands): runs/demo-v3time and runs/demo-v2time, each from scratch.
SIDE_BY_SIDE = (("version 3 (the `cpu` preset)", "demo-v3time"), ("version 2 settings", "demo-v2time"))


def side_by_side_section(old: str = "") -> list[str]:
    """The demo's stages against the version-2 design's, timed one after the other on one machine
    (kept from ``old`` when the runs are not here)."""
    recs = [(label, ROOT / "runs" / d / "results.json") for label, d in SIDE_BY_SIDE]
    if not all(path.exists() for _, path in recs):
        return [*kept_section(old, "### The demo against the version-2 design", "runs/demo-v3time` and `runs/demo-v2time",
                             " Both ran with the plain 300-step adapter bank of the time; the `cpu` preset has trained a scaled "
                             "600-step bank since, which adds about 80-110 s to the demo (docs/demo.md)."), ""]
    secs = [(label, json.loads(path.read_text())["seconds"]) for label, path in recs]
    (a_label, a), (b_label, b) = secs
    rows = [f"| {k} | {a[k]:.0f} | {b[k]:.0f} | {a[k] / b[k]:.2f} |" for k in a if k in b and b[k] > 0]
    return ["### The demo against the version-2 design, one machine", "",
            "Both from scratch, one after the other on an otherwise idle machine: `expertise demo --preset cpu --out "
            "runs/demo-v3time --fresh` and the same with the version-2 world and steps (docs/world.md gives the `--set` "
            "overrides) into `runs/demo-v2time`.", "",
            f"| stage | {a_label} (s) | {b_label} (s) | ratio |", "|---|---:|---:|---:|", *rows, ""]


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    rows = [
        ("world render, 32x32", f"{world_rate(32):,.0f} images/s"),
        ("world render, 16x16", f"{world_rate(16):,.0f} images/s"),
        ("train bit_s (32 px, batch 128)", f"{train_rate('bit_s'):,.0f} images/s"),
        ("train bit_xs (16 px, batch 128)", f"{train_rate('bit_xs'):,.0f} images/s"),
        ("embed bit_s (32 px)", f"{embed_rate('bit_s'):,.0f} images/s"),
    ]
    embed_ms = 1000 / embed_rate("bit_s") * 1000
    rows.append(("embed 1,000 images with one bit_s member", f"{embed_ms:.0f} ms"))
    rows += [(f"score one member: {name}", f"{sec * 1000:.1f} ms") for name, sec in proxy_seconds().items()]
    pool_rows, _ = pool_selection()
    demo = ROOT / "runs" / "demo" / "results.json"
    lines = [
        "# Benchmarks", "",
        "Regenerate with `make bench`. Measured on "
        f"{machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.", "",
        "## Throughput", "",
        "Scoring rows: one pool member on a 1,000-image task, 10 classes; features 1,000 x 256, or for "
        "LEEP and NCE upstream probabilities over 128 source labels. Compare with the embedding row: "
        "selection cost is embedding plus scoring, per member.", "",
        "| what | measured |", "|---|---:|", *[f"| {a} | {b} |" for a, b in rows], "",
        "## Selection cost: a pool of 20 members, one 1,000-image task", "",
        "`run_selection` on a library of 20 bit_s members (32 px, 256-d features, 150 upstream outputs) and the "
        "`glyph_unseen` task: one cold embedding pass of the whole pool (loading and sha256 checks included), then "
        "each proxy scoring all 20 members from the cache (best of 2). Scoring costs little next to embedding "
        "when the ratio is well below 1; LEEP and NCE score the upstream predictions kept from the same pass.", "",
        "| proxy | embed 20 members (s) | score 20 members (s) | score / embed |", "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in pool_rows], "",
    ]
    lines += adapters_section().splitlines() + [""]
    # Sections written by their own commands (each splices its part into BENCHMARKS.md too), kept here in
    # this order: proxies_scale (make bench-proxies), threads, executors (make bench-executors; then
    # other presets' perf/executors_PRESET.md), upstream_data (make bench-data), ddp, preprocess, halving,
    # demo_levers (make bench-levers), demo_jobs (make bench-jobs).
    parts = ["proxies_scale", "threads", "executors",
             *sorted(p.stem for p in (ROOT / "perf").glob("executors_*.md")),
             "upstream_data", "ddp", "preprocess", "halving", "demo_levers", "demo_jobs"]
    for name in parts:
        part = ROOT / "perf" / f"{name}.md"
        if part.exists():
            lines += part.read_text().splitlines() + [""]
    bench_md = ROOT / "BENCHMARKS.md"
    old = bench_md.read_text() if bench_md.exists() else ""
    lines += benchmark_sections(old)
    if demo.exists():
        rec = json.loads(demo.read_text())
        secs = rec["seconds"]
        lines += ["## Demo wall time (`make demo`, from its last `runs/demo/results.json`)", "",
                  "The stages of the last demo run. The committed figures are those of a run from scratch; a resumed "
                  "run skips what an earlier one finished, and regenerating after one shows its shorter times.", "",
                  "| stage | seconds |", "|---|---:|", *[f"| {k} | {v:.0f} |" for k, v in secs.items()], ""]
    lines += side_by_side_section(old)
    bench_md.write_text("\n".join(lines))
    gain = ROOT / "runs" / "demo" / "gain.png"  # the README's picture: the last demo's
    if gain.exists():
        shutil.copyfile(gain, ROOT / "docs" / "demo_gain.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
