"""Where the demo's training time goes, and what would cut it: `make bench-levers`, or
`.venv/bin/python -m perf.demo_levers [--rounds 5] [--quick]`.

The `cpu` demo spends most of its time in upstream training steps (B, the full experts, the adapter
bank). This script times, in one run on this machine, the pieces of one step and the changes that
were tried to make a step cheaper, and says for each whether it leaves the results bit for bit as
they are (same outputs and gradients on the same batch), since a change that does not would make
every benchmark figure one to measure again:

* drawing and preparing a batch of 128 upstream images (the cpu world, ``UpstreamBatches``) against
  one forward and backward of B's shape (bit_s, the world's upstream outputs) on it;
* that step with channels-last tensors;
* one adapter-bank step of the preset (8 experts, 64 images each, scaled adapters, B frozen) as
  ``train_adapter_bank`` computes it (the stem once, then each expert's adapters and stages on its
  own batch), against the frozen stages run once on all experts' batches with each expert's
  adapters applied to its share between them.

Variants alternate round by round and each figure is the median over ``--rounds`` rounds; ratios
are to the first row of their group. Run it on an otherwise idle machine. Writes
perf/demo_levers.md and splices it into BENCHMARKS.md (``--quick``, a check that it runs, only prints).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from expertise.config import get_preset
from expertise.data.world import World
from expertise.models.adapters import AdapterBank
from expertise.models.backbones import BACKBONES, ExpertModel, Preprocessing
from expertise.train import multilabel_loss
from expertise.upstream.baseline import UpstreamBatches
from perf.parallel_levers import measure as parallel_measure
from perf.parallel_levers import table
from perf.timing import machine, splice_section

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- demo_levers:start -->", "<!-- demo_levers:end -->"
EXPERTS, ADAPTER_BATCH, BATCH = 8, 64, 128


def _step(model: torch.nn.Module, logits_of: Callable[[], torch.Tensor], targets: torch.Tensor,
          split: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward and backward; the logits and the gradients of whatever requires grad. ``split``:
    the loss is the sum of per-expert losses over chunks of that many rows, as the bank's is."""
    for p in model.parameters():
        p.grad = None
    logits = logits_of()
    if split is None:
        loss = multilabel_loss(logits, targets)
    else:
        loss = torch.stack([multilabel_loss(a, b) for a, b in zip(logits.split(split), targets.split(split))]).sum()
    loss.backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _same(a: tuple[torch.Tensor, list[torch.Tensor]], b: tuple[torch.Tensor, list[torch.Tensor]]) -> bool:
    return torch.equal(a[0], b[0]) and len(a[1]) == len(b[1]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def _timed(fns: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, list[float]]:
    """Per round, the ms one call takes (mean of ``reps`` calls), the variants alternating."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t0) / reps * 1000)
    return times


def measure(rounds: int, reps: int) -> dict[str, object]:
    preset = get_preset("cpu", {"world.upstream_size": 4000, "world.holdout_size": 100})
    data = World(preset.world).upstream("train").materialize()
    outputs = int(data.targets(np.arange(1)).shape[1])
    prep = Preprocessing(BACKBONES[preset.backbone].resolution)
    source = UpstreamBatches(data, np.arange(len(data)), BATCH, prep, 0)
    x, y = source(0)
    torch.manual_seed(0)
    model = ExpertModel(BACKBONES[preset.backbone], num_outputs=outputs)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    full = {"plain": lambda: _step(model, lambda: model(x), y),
            "channels_last": lambda: _step(last, lambda: last(x_last), y)}
    same_full = _same(full["plain"](), full["channels_last"]())
    draws = iter(range(1, 10**9))
    full_ms = _timed({"data": lambda: source(next(draws)), **full}, rounds, reps)

    nodes = [f"e{i}" for i in range(EXPERTS)]
    bank = AdapterBank(copy.deepcopy(model), nodes, scaled=True)
    bank.base.requires_grad_(False)
    with torch.no_grad():  # trained adapters are not the identity
        for p in bank.adapters.parameters():
            p.add_(0.05 * torch.randn_like(p))
    xb = torch.cat([source(100 + i)[0][:ADAPTER_BATCH] for i in range(EXPERTS)])
    yb = torch.cat([source(100 + i)[1][:ADAPTER_BATCH] for i in range(EXPERTS)])
    head, backbone = bank.base.head, bank.base.backbone

    def per_expert() -> torch.Tensor:  # train_adapter_bank's forward
        return bank.upstream_logits_of_chunks(xb, [ADAPTER_BATCH] * EXPERTS, nodes)

    def joint() -> torch.Tensor:  # the frozen stages once on every expert's batch
        h = bank.stem(xb)
        for i, stage in enumerate(backbone.stages):
            h = stage(torch.cat([bank.stack(n)[i](c) for c, n in zip(h.split(ADAPTER_BATCH), nodes)]))
        return head(backbone.forward_head(backbone.norm(h), pre_logits=True))

    adapters = {"per_expert": lambda: _step(bank, per_expert, yb, ADAPTER_BATCH),
                "joint": lambda: _step(bank, joint, yb, ADAPTER_BATCH)}
    same_bank = _same(adapters["per_expert"](), adapters["joint"]())
    bank_ms = _timed(adapters, rounds, max(1, reps // 4))
    return {"full": full_ms, "bank": bank_ms, "same_full": same_full, "same_bank": same_bank, "outputs": outputs}


def section(m: dict, rounds: int, par: dict | None = None, threads: int | None = None) -> str:
    full = {k: statistics.median(v) for k, v in m["full"].items()}
    bank = {k: statistics.median(v) for k, v in m["bank"].items()}

    def ratios(group: dict[str, list[float]], name: str, ref: str) -> str:  # per round: the spread of the ratio
        r = [a / b for a, b in zip(group[name], group[ref])]
        return f"{statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}]"

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = [
        f"| draw and prepare a batch of {BATCH} world images | {full['data']:.1f} | {ratios(m['full'], 'data', 'plain')} | (no arithmetic) |",
        f"| forward and backward of B's shape, batch {BATCH} | {full['plain']:.1f} | 1.000 | (reference) |",
        f"| the same step, channels-last tensors | {full['channels_last']:.1f} | {ratios(m['full'], 'channels_last', 'plain')} | {yes(m['same_full'])} |",
        f"| adapter-bank step, {EXPERTS} experts x {ADAPTER_BATCH} images, as trained (stages per expert) | {bank['per_expert']:.1f} | 1.000 | (reference) |",
        f"| the same step, frozen stages once on all {EXPERTS} batches | {bank['joint']:.1f} | {ratios(m['bank'], 'joint', 'per_expert')} | {yes(m['same_bank'])} |",
    ]
    return "\n".join([
        START, "## Where the demo's training time goes", "",
        f"Regenerate with `make bench-levers` (`python -m perf.demo_levers`) on an otherwise idle machine. {machine()}, "
        f"{threads or torch.get_num_threads()} threads, torch {torch.__version__}. The `cpu` preset's shapes (bit_s, 32 px, "
        f"{m['outputs']} upstream outputs, scaled adapters); each time is the median over {rounds} rounds, the variants "
        "alternating; ratios are to the reference row above them, the median of the rounds' ratios [their range]. \"Same results\": the variant's logits and gradients "
        "on the same batch equal the reference's bit for bit; where they do not, adopting it would change every "
        "figure of the benchmark, which would have to be measured again (docs/world.md, \"Compute\").", "",
        "| what | ms | / reference | same results |", "|---|---:|---:|---|", *rows, "",
        *([] if par is None else parallel_text(par)), END,
    ])


def parallel_text(par: dict) -> list[str]:
    """The threads, processes, compile and bf16 table (:mod:`perf.parallel_levers`) and what it says."""
    return [
        "### Threads, worker processes, compiled steps, bfloat16", "",
        f"Each step of the demo's kinds, median of {par['rounds']} rounds on this machine: with every core's "
        f"{par['cores']} threads (one unit at a time, `--jobs 1`), with one thread, and in each of two one-thread "
        "processes taking it side by side (`--jobs 2`, the default on two cores); their throughput against one "
        f"{par['cores']}-thread process is 2 x t({par['cores']} threads) / t(side by side). Channels-last and bf16 "
        "autocast are measured on one thread; bf16 changes the arithmetic (the loss after 20 steps from the same "
        "start shows by how much), channels-last only the order of the sums. `torch.compile` (inductor, C++ for the "
        "CPU, one thread): the first call's compile time, the compiled step against the eager one, and how many "
        "steps it must run to pay for its compile. The demo runs about 11,500 training steps of B's shape, 4,200 "
        "fine-tune steps, 600 bank steps and 476 embeddings of 500 images, each unit in its own process.", "",
        table(par), "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one short round, printed only")
    args = ap.parse_args()
    rounds, reps = (1, 2) if args.quick else (args.rounds, 20)
    threads = torch.get_num_threads()
    main_rows = measure(rounds, reps)
    text = section(main_rows, rounds, parallel_measure(rounds, args.quick), threads)
    print(text)
    if not args.quick:
        splice_section(ROOT / "perf" / "demo_levers.md", START, END, text)


if __name__ == "__main__":
    main()
