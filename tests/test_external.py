"""External pre-trained models as pool members (timm architectures, local safetensors checkpoints,
Hugging Face timm folders), checked against timm's own forward pass on the same weights."""

import json

import pytest
import torch
from typer.testing import CliRunner

from expertise.runtime import RunContext
from expertise.cli import app
from expertise.config import get_preset
from expertise.data.tasks import Split, Task
from expertise.errors import ConfigError
from expertise.library import Library
from expertise.models.external import ExternalModel, from_checkpoint, from_hf_folder, from_hf_hub
from expertise.models.backbones import prepare
from expertise.pool import add_external, external_name, load_external
from expertise.select.embed import EmbeddingCache
from expertise.select.run import pool_names, run_selection
from expertise.transfer.finetune import finetune_and_test


def _images(n: int = 6, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_a_checkpoint_member_embeds_and_classifies_as_timm_does(timm_checkpoint):
    net, path = timm_checkpoint
    model, source = from_checkpoint("test_resnet", path, size=32)
    model.eval()
    x = prepare(_images(), model.preprocessing)
    with torch.no_grad():
        want_features = net.forward_head(net.forward_features(x), pre_logits=True)
        assert torch.allclose(model.embed(x), want_features, atol=1e-5)
        assert torch.allclose(model.upstream_logits(x), net(x), atol=1e-5)
    assert model.num_features == net.num_features and model.head is not None and model.head.out_features == 7
    # timm's data config of the architecture, the size overridden
    assert model.preprocessing.size == 32 and model.preprocessing.mean == tuple(net.pretrained_cfg["mean"])
    assert source.kind == "checkpoint" and external_name(source) == "ext.test_resnet"
    default, _ = from_checkpoint("test_resnet", path)
    assert default.preprocessing.size == net.pretrained_cfg["input_size"][-1]


def test_a_head_with_its_own_layers_keeps_the_classifier_width():
    """MobileNetV3's pre-logits are its 1,024-wide conv head, not the 288 channels before it (timm's
    ``head_hidden_size`` against ``num_features``): the member's width, its embedding and its upstream
    head are the classifier's, and the logits are timm's."""
    import timm

    from expertise.models.preprocess import timm_preprocessing

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", num_classes=5).eval()
    x = prepare(_images(2, 64), timm_preprocessing(timm.data.resolve_data_config(model=net), 64))
    with torch.no_grad():
        want = net(x)
        model = ExternalModel.wrap(net, "mobilenetv3_small_050",
                                   timm_preprocessing(timm.data.resolve_data_config(model=net), 64)).eval()
        assert net.num_features != net.head_hidden_size == model.num_features == 1024
        assert model.embed(x).shape == (2, 1024)
        assert torch.allclose(model.upstream_logits(x), want, atol=1e-5)


def test_a_library_stores_and_reloads_an_external_member(timm_checkpoint, tmp_path):
    net, path = timm_checkpoint
    lib = Library.create(tmp_path / "lib", None)
    info = add_external(lib, *from_checkpoint("test_resnet", path, size=32))
    assert info.kind == "external" and info.parent is None and info.domain is None
    assert info.parameters == sum(p.numel() for p in net.parameters()) and info.embedding_dim == net.num_features
    assert info.extra["source"] == "checkpoint" and info.extra["upstream_classes"] == 7
    loaded = Library.open(tmp_path / "lib").load(info.name)
    assert isinstance(loaded, ExternalModel)
    x = prepare(_images(), loaded.preprocessing)
    with torch.no_grad():
        assert torch.allclose(loaded.upstream_logits(x), net(x), atol=1e-5)
    assert lib.verify() == [] and pool_names(lib) == [info.name]
    with pytest.raises(Exception, match="already has a member"):
        add_external(lib, *from_checkpoint("test_resnet", path, size=32))


def test_a_hugging_face_folder_in_timms_layout_loads(make_timm_net, tmp_path):
    from timm.models._hub import save_for_hf

    net = make_timm_net("test_vit", num_classes=5, seed=3)
    save_for_hf(net, str(tmp_path / "hf"), safe_serialization=True)
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "config.json").exists()
    model, source = from_hf_folder(tmp_path / "hf")
    model.eval()
    x = prepare(_images(size=model.preprocessing.size), model.preprocessing)
    with torch.no_grad():
        assert torch.allclose(model.upstream_logits(x), net(x), atol=1e-5)
        assert torch.allclose(model.embed(x), net.forward_head(net.forward_features(x), pre_logits=True), atol=1e-5)
    assert source.kind == "hf" and source.architecture == "test_vit"
    via_cli_options, _ = load_external(hf=str(tmp_path / "hf"))
    assert via_cli_options.member_config() == model.member_config()


def test_pickled_weights_are_refused_never_loaded(tmp_path):
    pickled = tmp_path / "model.bin"
    pickled.write_bytes(b"not even read")
    with pytest.raises(ConfigError, match="safetensors only"):
        from_checkpoint("test_resnet", pickled)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 7}))
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ConfigError, match=r"pytorch_model.bin: pickled weights are never loaded"):
        from_hf_folder(folder)


def test_bad_sources_get_errors_that_say_what_to_do(timm_checkpoint, tmp_path, monkeypatch):
    _, path = timm_checkpoint
    with pytest.raises(ConfigError, match="timm has no architecture 'resnet_nonexistent'"):
        from_checkpoint("resnet_nonexistent", path)
    with pytest.raises(ConfigError, match="do not fit timm's 'test_vit'"):
        from_checkpoint("test_vit", path)
    with pytest.raises(ConfigError, match="needs weights"):
        load_external(timm_name="test_resnet")
    with pytest.raises(ConfigError, match="one"):
        load_external(timm_name="test_resnet", checkpoint=path, pretrained=True)
    with pytest.raises(ConfigError, match="neither a folder nor a Hugging Face id"):
        load_external(hf=str(tmp_path / "missing" / "deep" / "folder"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        from_hf_hub("expertise-tests/no-such-model")


def test_an_external_member_is_selected_and_fine_tuned_like_any_other(timm_checkpoint, tmp_path):
    """A pool of one of our models and one external model: both are ranked by proxies (LEEP through
    the external classifier's own softmax) and by the task-agnostic order, and the external one
    fine-tunes with a new head."""
    from expertise.models.backbones import BACKBONES, ExpertModel
    from expertise.library import MemberInfo

    _, path = timm_checkpoint
    lib = Library.create(tmp_path / "lib", None)
    torch.manual_seed(0)
    own = ExpertModel(BACKBONES["bit_xs"], num_outputs=4)
    lib.add(MemberInfo("own", "full_expert", None, None, 10, 0, 0, None, {}), own)
    ext = add_external(lib, *from_checkpoint("test_resnet", path, size=16)).name
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = (labels.view(-1, 1, 1, 1) * 80 + torch.randint(0, 40, (60, 3, 16, 16), generator=g)).to(torch.uint8)
    task = Task("toy", "natural", ("a", "b", "c"), Split(images[:40], labels[:40]), Split(images[40:50], labels[40:50]),
                Split(images[50:], labels[50:]), source="test")
    cache = EmbeddingCache(tmp_path / "cache")
    for strategy, proxy in (("proxy", "knn_loo"), ("proxy", "leep"), ("proxy", "logme"), ("task_agnostic", "knn_loo")):
        run = run_selection(lib, task, strategy, 2, proxy, ["own", ext], RunContext(progress=False, cache=cache), 64)
        assert set(run.selection.picks) == {"own", ext}
    cfg = get_preset("tiny").finetune
    result = finetune_and_test(lib.load(ext), task, cfg, 0, progress=False)
    assert 0.0 <= result.test_accuracy <= 1.0 and result.images == cfg.steps * cfg.batch_size


def test_cli_pool_add_and_its_errors(timm_checkpoint, tmp_path):
    _, path = timm_checkpoint
    runner = CliRunner()
    lib = tmp_path / "lib"
    r = runner.invoke(app, ["pool", "add", "--library", str(lib), "--timm", "test_resnet", "--checkpoint", str(path),
                            "--size", "32", "--name", "r"])
    assert r.exit_code == 0, r.output
    assert "added r: test_resnet" in r.output and "upstream head of 7 classes" in r.output
    assert Library.open(lib).info("r").kind == "external"
    r = runner.invoke(app, ["library", "ls", str(lib)])
    assert r.exit_code == 0 and "external" in r.output
    r = runner.invoke(app, ["pool", "add", "--library", str(lib), "--timm", "test_resnet"])
    assert r.exit_code == 2 and "needs weights" in r.output
