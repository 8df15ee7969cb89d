"""Threads, worker processes, compiled steps and bfloat16 for the `cpu` demo's steps: part of
`make bench-levers` (`python -m perf.demo_levers`), or alone `python -m perf.parallel_levers [--quick]`.

For each kind of step the demo spends its time in (B's and a full expert's training step, batch
128; a fine-tune step, batch 64; an adapter-bank step, 8 experts x 64 images; embedding 500 images)
it measures, on this machine:

* the step with every core's threads (what one unit at a time in one process did) and with one;
* two one-thread processes taking the same step side by side (what ``--jobs 2`` does): each
  process's time per step, so ``2 x t(1 thread) / t(pair)`` ... is their throughput against one;
* channels-last tensors on one thread (the same arithmetic in another summation order);
* bfloat16 autocast on one thread (other arithmetic: the loss after 20 steps against float32's);
* ``torch.compile`` (inductor, C++ for the CPU) on one thread: the first call's compile time and
  the steady step, and what the compile costs against what it saves over the step counts of the
  preset (how many steps it must run to pay for itself), from an empty cache of compiled artifacts.

Every figure is the median of ``--rounds`` rounds; variants alternate within a round. The pair is
measured by two fresh processes started together.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

STEPS_OF = {"train": 3_000 + 8 * 1_000 + 500, "finetune": 150 * 28, "bank": 600, "embed": 17 * 14 * 2}  # per cpu demo


def _threads(n: int) -> None:
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def _setup(kind: str) -> tuple[Callable[[], Any], Callable[[torch.nn.Module], Callable[[], Any]], torch.nn.Module]:
    """(the model's step as a function, a maker of that step for another copy of the model, the model)."""
    from expertise.models.adapters import AdapterBank
    from expertise.models.backbones import BACKBONES, ExpertModel
    from expertise.train import multilabel_loss, softmax_loss

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "bank":
        base = ExpertModel(BACKBONES["bit_s"], num_outputs=270)
        nodes = [f"e{i}" for i in range(8)]
        model: torch.nn.Module = AdapterBank(base, nodes, scaled=True)
        model.base.requires_grad_(False)
        with torch.no_grad():
            for p in model.adapters.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        x = torch.randn(8 * 64, 3, 32, 32, generator=g)
        y = (torch.rand(8 * 64, 270, generator=g) < 0.02).float()

        def forward(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
            return m.upstream_logits_of_chunks(x, [64] * 8, nodes)

        loss_fn: Callable[..., torch.Tensor] = multilabel_loss
    elif kind == "finetune":
        model = ExpertModel(BACKBONES["bit_s"], num_outputs=270)
        model.reset_head(10)
        x = torch.randn(64, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (64,), generator=g)
        forward, loss_fn = (lambda m, x: m(x)), softmax_loss
    else:
        model = ExpertModel(BACKBONES["bit_s"], num_outputs=270)
        x = torch.randn(500 if kind == "embed" else 128, 3, 32, 32, generator=g)
        y = (torch.rand(x.shape[0], 270, generator=g) < 0.02).float()
        forward, loss_fn = (lambda m, x: m(x)), multilabel_loss

    def make(m: torch.nn.Module, channels_last: bool = False, bf16: bool = False,
             compiled: bool = False) -> Callable[[], Any]:
        xs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if channels_last:
            m.to(memory_format=torch.channels_last)
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        fwd = torch.compile(lambda x: forward(m, x)) if compiled else (lambda x: forward(m, x))

        if kind == "embed":
            m.eval()
            emb = torch.compile(m.embed) if compiled else m.embed

            def embed() -> Any:
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    return emb(xs)
            return embed

        def step() -> float:
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = fwd(xs)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return loss.item()
        return step

    return make(model), make, model


def _time(fn: Callable[[], Any], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def _alone(kind: str, rounds: int, reps: int, cores: int) -> dict[str, Any]:
    """Every single-process variant of ``kind``, alternating round by round."""
    _, make, model = _setup(kind)
    variants: dict[str, tuple[int, Callable[[], Any]]] = {
        "all_threads": (cores, make(copy.deepcopy(model))),
        "one_thread": (1, make(copy.deepcopy(model))),
        "channels_last": (1, make(copy.deepcopy(model), channels_last=True)),
        "bf16": (1, make(copy.deepcopy(model), bf16=True)),
    }
    out: dict[str, Any] = {k: [] for k in variants}
    for threads, fn in variants.values():
        _threads(threads)
        fn()
    for _ in range(rounds):
        for name, (threads, fn) in variants.items():
            _threads(threads)
            out[name].append(_time(fn, reps))
    if kind != "embed":  # how far bf16 moves the loss: 20 steps from the same start
        _threads(1)
        f32, b16 = make(copy.deepcopy(model)), make(copy.deepcopy(model), bf16=True)
        a = [f32() for _ in range(20)]
        b = [b16() for _ in range(20)]
        out["bf16_loss"] = (a[-1], b[-1])
    # compiled, on one thread: the first call (compile included) and the steady step
    _threads(1)
    fn = make(copy.deepcopy(model), compiled=True)
    t0 = time.perf_counter()
    fn()
    out["compile_s"] = time.perf_counter() - t0
    fn()
    out["compiled"] = [_time(fn, reps) for _ in range(rounds)]
    return out


def _pair_worker(kind: str, reps: int, rounds: int, start: Any, results: Any) -> None:
    _threads(1)
    step, _, _ = _setup(kind)
    step()
    start.wait()
    results.put([_time(step, reps) for _ in range(rounds)])


def _pair(kind: str, rounds: int, reps: int) -> list[float]:
    """Two fresh one-thread processes taking the step side by side: each one's ms per step."""
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_pair_worker, args=(kind, reps, rounds, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    times = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return [statistics.median(t) for t in zip(*times)]


def measure(rounds: int, quick: bool = False) -> dict[str, Any]:
    """Every kind's figures; torch.compile starts from an empty cache of compiled artifacts (a new
    ``TORCHINDUCTOR_CACHE_DIR``), so its compile time is a first run's."""
    import tempfile

    from expertise.runtime import default_threads

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="expertise-inductor-")

    cores = default_threads()
    kinds = ("train", "finetune", "bank", "embed")
    reps = {"train": 10, "finetune": 10, "bank": 2, "embed": 2} if not quick else {k: 1 for k in kinds}
    out = {"cores": cores, "rounds": rounds}
    for kind in kinds:
        m = _alone(kind, rounds, reps[kind], cores)
        m["pair"] = _pair(kind, rounds, reps[kind])
        out[kind] = m
    return out


def rows(m: dict[str, Any]) -> list[str]:
    """The table's rows (see :func:`table`)."""
    names = {"train": "B's or a full expert's training step, batch 128", "finetune": "a fine-tune step, batch 64",
             "bank": "an adapter-bank step, 8 experts x 64 images", "embed": "embedding 500 images"}
    out = []
    for kind, label in names.items():
        r = m[kind]
        med = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list)}
        one = med["one_thread"]
        pair = med["pair"]
        throughput = 2 * med["all_threads"] / pair  # units done per unit of time, against one at a time on every thread
        saved = one - med["compiled"]
        pays = "never" if saved <= 0 else f"{r['compile_s'] / saved * 1000:,.0f} steps"
        loss = r.get("bf16_loss")
        bf16 = f" (loss after 20 steps {loss[1]:.4f} vs {loss[0]:.4f})" if loss else ""
        out.append(f"| {label} | {med['all_threads']:.1f} | {one:.1f} | {pair:.1f} | {throughput:.2f}x | "
                   f"{med['channels_last'] / one:.3f} | {med['bf16'] / one:.3f}{bf16} | {r['compile_s']:.0f} s, "
                   f"{med['compiled'] / one:.3f}, pays after {pays} |")
    return out


def table(m: dict[str, Any]) -> str:
    return "\n".join([
        f"| step | {m['cores']} threads (ms) | 1 thread (ms) | each of 2 one-thread processes side by side (ms) | "
        f"2 processes' throughput / one {m['cores']}-thread process | channels-last, 1 thread / 1 thread | "
        "bf16 autocast, 1 thread / 1 thread | torch.compile on 1 thread: compile time, step / eager step |",
        "|---|---:|---:|---:|---:|---:|---|---|", *rows(m)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(table(measure(1 if args.quick else args.rounds, args.quick)))


if __name__ == "__main__":
    os.environ.setdefault("EXPERTISE_PROGRESS", "0")
    main()
