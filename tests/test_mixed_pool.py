"""A heterogeneous pool on a task of photos of several sizes: our own experts (their world's
resolution), two timm test architectures at their own input sizes and a transformers ViT, each
embedding the task's source images through its own preprocessing; ranked, and the top pick
fine-tuned on the same source images (tiny random-init models written locally, nothing downloaded)."""

from __future__ import annotations

import safetensors.torch
import torch

from expertise.data.ragged import RaggedImages, take
from expertise.data.tasks import Split, Task
from expertise.models.external import from_checkpoint
from expertise.pool import add_external
from expertise.runtime import RunContext
from expertise.select.embed import EmbeddingCache, cache_key
from expertise.select.run import run_selection
from expertise.train import TrainConfig
from expertise.transfer.finetune import SplitBatches, finetune_and_test


def _task() -> Task:
    """Two classes of images of several sizes: dark and noisy, or bright with a bar."""
    g = torch.Generator().manual_seed(0)
    images, labels = [], []
    for i in range(48):
        h, w = 24 + (i * 7) % 40, 30 + (i * 11) % 36
        label = i % 2
        x = torch.randint(0, 90, (3, h, w), generator=g) + 140 * label
        if label:
            x[:, h // 3: h // 2] = 250
        images.append(x.clamp(0, 255).to(torch.uint8))
        labels.append(label)
    ragged, y = RaggedImages.from_arrays(images), torch.tensor(labels)
    split = lambda a, b: Split(take(ragged, torch.arange(a, b)), y[a:b])  # noqa: E731
    return Task("sizes", "natural", ("dark", "bright"), split(0, 28), split(28, 36), split(36, 48), source="test")


def test_a_mixed_pool_is_ranked_and_its_pick_fine_tuned(tiny_library, tmp_path, make_timm_net):
    lib = tiny_library.copy_to(tmp_path / "lib")
    ours = tiny_library.names[:2]  # B and a full expert
    externals = []
    for arch, size in (("test_resnet", 40), ("test_efficientnet", 48)):
        path = tmp_path / f"{arch}.safetensors"
        safetensors.torch.save_file(make_timm_net(arch, num_classes=5, seed=2).state_dict(), str(path))
        externals.append(add_external(lib, *from_checkpoint(arch, path, size=size), name=arch).name)
    try:
        from hf_tiny import write_tiny

        from expertise.models.hf_transformers import from_folder

        write_tiny(tmp_path / "vit", "vit", 3)
        externals.append(add_external(lib, *from_folder(tmp_path / "vit"), name="hf_vit").name)
    except ImportError:  # transformers is optional
        pass
    pool = [*ours, *externals]
    preps = {n: lib.info(n).preprocessing for n in pool}
    assert len({p["size"] for p in preps.values()}) >= 3  # each member at its own input size
    task = _task()
    cache = EmbeddingCache(tmp_path / "cache")
    run = run_selection(lib, task, "proxy", 1, "knn_loo", pool, RunContext(progress=False, cache=cache), 16, resamples=0)
    assert [n for n, _ in run.selection.ranking] and {n for n, _ in run.selection.ranking} == set(pool)
    assert run.embed.images == len(pool) * len(task.trainval)
    for n in pool:  # one cache entry per member, under its own preprocessing
        assert cache.has(lib.verified_hash(n), cache_key(task, preps[n]), "trainval")
    again = run_selection(lib, task, "proxy", 1, "knn_loo", pool, RunContext(progress=False, cache=cache), 16,
                          resamples=0)
    assert again.embed.cached == len(pool) and again.selection.ranking == run.selection.ranking

    pick = run.selection.best
    member = lib.load(pick)
    batches = SplitBatches(task.trainval, member.preprocessing, 8, 0)
    size = member.preprocessing.size
    assert batches.x.shape == (len(task.trainval), 3, size, size)  # fine-tuning reads its own preprocessing too
    cfg = TrainConfig(steps=6, batch_size=8, lr=0.01, warmup_steps=1)
    result = finetune_and_test(member, task, cfg, 0, progress=False)
    assert 0.0 <= result.test_accuracy <= 1.0 and result.images == 48
