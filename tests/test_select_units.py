"""expertise select --executor: the members a strategy reads embed the task as ``embed`` units
(expertise.bench.units.embed_plan) that fill the cache, and the ranking made from that cache is the
one of the in-process selection (which embeds an adapter bank in one shared-stem pass). Here on the
local executor; tests/test_ray_executor.py runs the same command on Ray."""

import torch

from expertise.bench.units import embed_plan
from expertise.runtime import RunContext
from expertise.select.embed import EmbeddingCache
from expertise.select.registry import get_strategy
from expertise.select.run import pool_names, run_selection
from expertise.store import RecordStore
from expertise.units import LocalExecutor, WorkerContext, drive, get_kind


def test_embedding_units_fill_the_cache_the_selection_reads(tiny_library, tmp_path):
    torch.set_num_threads(1)
    lib, task = tiny_library.library, tiny_library.world.task("count")
    names = get_strategy("proxy").members_to_embed(lib, pool_names(lib))
    assert any(lib.info(n).kind == "adapter_expert" for n in names)
    cache = EmbeddingCache(tmp_path / "cache")
    plan = embed_plan(lib, task, names, cache, split_seed=0, batch_size=500)
    assert plan.size == len(names)
    units = drive([plan], LocalExecutor(), RecordStore(tmp_path / "out"), WorkerContext().seed_with([lib], [task]),
                  progress=False)[0]
    assert [u.config["member"] for u in units] == names and all(u.computed for u in units)
    assert embed_plan(lib, task, names, cache, 0, 500).size == 0  # every member cached: nothing to run

    from_units = run_selection(lib, task, "proxy", 1, "knn_loo", ctx=RunContext(progress=False, cache=cache))
    assert from_units.embed.cached == len(names)  # the selection embedded nothing itself
    in_process = run_selection(lib, task, "proxy", 1, "knn_loo",
                               ctx=RunContext(progress=False, cache=EmbeddingCache(tmp_path / "cache2")))
    assert from_units.selection.ranking == in_process.selection.ranking
    untimed = [{k: v for k, v in run.uncertainty.to_json().items() if k != "seconds"} for run in (from_units, in_process)]
    assert untimed[0] == untimed[1]  # the scores' intervals, ties with the best, members at chance
    assert get_kind("embed").num_cpus == 1.0
