"""Adapter experts against full experts: storage, memory and the cost of embedding a task with all
of them. ``section()`` returns a markdown section for BENCHMARKS.md; run this file to print it.

Every figure is measured in the one call on this machine (bit_s, 32 px, E = 8 experts, untrained
weights: sizes and timings do not depend on what the weights are). Times are best-of-2 after a
warm-up.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

from expertise.library import Library, MemberInfo  # noqa: E402
from expertise.models.adapters import (  # noqa: E402
    AdapterBank, adapter_overhead, embed_images_with_experts, expert_adapter_parameters,
)
from expertise.models.backbones import BACKBONES, ExpertModel  # noqa: E402
from expertise.select.embed import embed_images  # noqa: E402
from perf.timing import best_of  # noqa: E402

BACKBONE, EXPERTS, IMAGES, OUTPUTS = "bit_s", 8, 1000, 150


def _module_bytes(module: nn.Module) -> int:
    """Bytes of the distinct parameter and buffer storage a module holds."""
    seen: dict[int, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _info(name: str, kind: str, parent: str | None = None) -> MemberInfo:
    return MemberInfo(name, kind, parent, None, 1000, 0, 0, None, {})


def measure(tmp: Path) -> dict[str, float]:
    cfg = BACKBONES[BACKBONE]
    lib = Library.create(tmp / "lib", None)
    torch.manual_seed(0)
    baseline = ExpertModel(cfg, num_outputs=OUTPUTS).eval()
    lib.add(_info(f"{BACKBONE}.baseline", "baseline"), baseline)
    fulls = []
    for i in range(EXPERTS):
        torch.manual_seed(1 + i)
        fulls.append(ExpertModel(cfg, num_outputs=OUTPUTS).eval())
        lib.add(_info(f"{BACKBONE}.expert_e{i}", "full_expert", f"{BACKBONE}.baseline"), fulls[-1])
    nodes = [f"e{i}" for i in range(EXPERTS)]
    bank = AdapterBank(baseline, nodes).eval()
    with torch.no_grad():  # non-zero adapters, as after training
        for p in bank.adapters.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    lib.add_adapter_bank(bank, f"{BACKBONE}.baseline",
                         {n: _info(f"{BACKBONE}.adapter_{n}", "adapter_expert") for n in nodes})
    full_names = [f"{BACKBONE}.expert_e{i}" for i in range(EXPERTS)]
    adapter_names = [f"{BACKBONE}.adapter_{n}" for n in nodes]

    images = torch.randint(0, 256, (IMAGES, 3, cfg.resolution, cfg.resolution), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))

    def full_in_memory() -> None:
        for m in fulls:
            embed_images(m, images)

    def adapters_in_memory() -> None:
        embed_images_with_experts(bank, images)

    def adapters_one_by_one() -> None:  # each expert on its own: the stem recomputed per expert
        for n in nodes:
            embed_images(bank.expert(n), images)

    def full_from_disk() -> None:
        for name in full_names:
            embed_images(lib.load(name), images)

    def adapters_from_disk() -> None:
        embed_images_with_experts(lib.load_adapter_bank(), images)

    members = tmp / "lib" / "members"
    return {
        "disk_full": sum(_folder_bytes(members / n) for n in full_names),
        "disk_adapters": _folder_bytes(tmp / "lib" / "adapters") + sum(_folder_bytes(members / n) for n in adapter_names)
        + _folder_bytes(members / f"{BACKBONE}.baseline"),
        "disk_bank": (tmp / "lib" / "adapters" / "bank.safetensors").stat().st_size,
        "disk_backbone": _folder_bytes(members / f"{BACKBONE}.baseline"),
        "mem_full": sum(_module_bytes(m) for m in fulls),
        "mem_adapters": _module_bytes(bank),
        "t_full": best_of(full_in_memory, repeats=2),
        "t_adapters": best_of(adapters_in_memory, repeats=2),
        "t_adapters_unshared": best_of(adapters_one_by_one, repeats=2),
        "t_full_disk": best_of(full_from_disk, repeats=2),
        "t_adapters_disk": best_of(adapters_from_disk, repeats=2),
    }


def section() -> str:
    """Markdown: storage, memory and embedding time of E adapter experts (one bank) vs E full experts."""
    with tempfile.TemporaryDirectory() as tmp:
        m = measure(Path(tmp))
    cfg, r50 = BACKBONES[BACKBONE], BACKBONES["bit_r50x1"]
    e = EXPERTS

    def row(what: str, full: float, adapters: float, fmt: str) -> str:
        return f"| {what} | {full:{fmt}} | {adapters:{fmt}} | {adapters / full:.3f} |"

    return "\n".join([
        f"## Adapter experts: one bank vs {e} full experts", "",
        f"{e} experts on {BACKBONE} ({cfg.resolution} px, {OUTPUTS} upstream outputs, untrained weights) stored in a "
        f"library, either as {e} full experts (each a whole network) or as {e} adapter experts (one adapter bank beside "
        f"the shared backbone). Each adapter expert adds {expert_adapter_parameters(cfg):,} parameters, "
        f"{adapter_overhead(cfg):.1%} of the {BACKBONE} backbone ({adapter_overhead(r50):.1%} on bit_r50x1; the paper: "
        f"about 6% on R50). Embedding: {IMAGES:,} images, every expert; the bank computes the shared stem once per "
        "batch. From disk includes loading and sha256 checks. Times are best of 2 after a warm-up.", "",
        f"| what | {e} full experts | {e} adapter experts | adapters / full |", "|---|---:|---:|---:|",
        row("on disk, bytes (adapters: bank + member configs + the shared backbone)", m["disk_full"], m["disk_adapters"], ",.0f"),
        f"| of which the bank (all {e} experts' adapters) | | {m['disk_bank']:,.0f} | |",
        row("in memory, parameter and buffer bytes", m["mem_full"], m["mem_adapters"], ",.0f"),
        row(f"embed {IMAGES:,} images with all {e}, in memory (s)", m["t_full"], m["t_adapters"], ".3f"),
        row("the same, adapter experts one at a time, preprocessing and stem recomputed (s)", m["t_full"], m["t_adapters_unshared"], ".3f"),
        row(f"load from the library and embed with all {e} (s)", m["t_full_disk"], m["t_adapters_disk"], ".3f"),
        "",
    ])


if __name__ == "__main__":
    t0 = time.perf_counter()
    print(section())
    print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
