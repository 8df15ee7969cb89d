"""The one forward path: outputs against the model's own calls, batch-size invariance, output
selection, inference mode and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expertise.errors import ConfigError, DataError
from expertise.models.backbones import BACKBONES, ExpertModel, Preprocessing, prepare
from expertise.models.forward import OUTPUTS, forward_batches, run_batches


@pytest.fixture(scope="module")
def model() -> ExpertModel:
    torch.manual_seed(0)
    m = ExpertModel(BACKBONES["bit_xs"], num_outputs=5, preprocessing=Preprocessing(20, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)))
    with torch.no_grad():
        for p in m.parameters():  # leave no zero-initialised branch: every layer must show in the outputs
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (23, 3, 16, 16), dtype=torch.uint8, generator=g)


def test_outputs_match_the_models_own_calls(model: ExpertModel, images: torch.Tensor) -> None:
    out = forward_batches(model, images, OUTPUTS, batch_size=8)
    x = prepare(images, model.preprocessing)  # resized 16 -> 20 and normalised, as the model expects
    with torch.no_grad():
        expected = {"features": model.embed(x), "upstream_logits": model.upstream_logits(x), "logits": model(x)}
    expected["probabilities"] = torch.sigmoid(expected["logits"])
    assert list(out) == list(OUTPUTS)
    for name, value in out.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5)


def test_batch_size_does_not_change_the_outputs(model: ExpertModel, images: torch.Tensor) -> None:
    whole = forward_batches(model, images, OUTPUTS, batch_size=500)
    for batch_size in (1, 5, 22):
        parts = forward_batches(model, images, OUTPUTS, batch_size=batch_size)
        for name in OUTPUTS:
            torch.testing.assert_close(parts[name], whole[name], rtol=1e-5, atol=1e-5)


def test_only_the_requested_outputs(model: ExpertModel, images: torch.Tensor) -> None:
    assert list(forward_batches(model, images, ("probabilities",))) == ["probabilities"]
    out = forward_batches(model, images, ("upstream_logits", "features"))
    assert list(out) == ["upstream_logits", "features"]
    assert out["features"].shape == (23, model.num_features) and out["upstream_logits"].shape == (23, 5)
    with pytest.raises(ConfigError, match="unknown outputs"):
        forward_batches(model, images, ("pre_logits",))
    with pytest.raises(ConfigError, match="unknown outputs"):
        forward_batches(model, images, ())
    tuned = ExpertModel(BACKBONES["bit_xs"], num_outputs=3, head_kind="task")
    with pytest.raises(ConfigError, match="no upstream head"):
        forward_batches(tuned, images, ("upstream_logits",))


def test_runs_in_inference_mode_and_leaves_the_model_in_eval(model: ExpertModel, images: torch.Tensor) -> None:
    model.train()
    seen = []

    def step(x: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append((torch.is_inference_mode_enabled(), model.training))
        return {"features": model.embed(x)}

    out = run_batches(model, images, step, batch_size=10)
    assert seen == [(True, False)] * 3
    assert out["features"].is_inference() and not out["features"].requires_grad
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_images_must_be_uint8_nchw(model: ExpertModel, images: torch.Tensor) -> None:
    for bad in (images.float(), images[:, 0], images[:, :1], images.numpy().astype(np.int64)):
        with pytest.raises(DataError, match=r"uint8 images \[N, 3, H, W\]"):
            forward_batches(model, bad)
    with pytest.raises(ConfigError, match="batch_size"):
        forward_batches(model, images, batch_size=0)
    from_numpy = forward_batches(model, images.numpy(), ("features",), batch_size=8)["features"]
    assert torch.equal(from_numpy, forward_batches(model, images, ("features",), batch_size=8)["features"])


def test_empty_images_give_empty_outputs_of_the_right_width(model: ExpertModel) -> None:
    out = forward_batches(model, torch.zeros((0, 3, 16, 16), dtype=torch.uint8), OUTPUTS)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "features": (0, model.num_features), "upstream_logits": (0, 5), "logits": (0, 5), "probabilities": (0, 5)}
