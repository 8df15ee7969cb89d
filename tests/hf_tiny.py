"""Tiny, randomly initialised Hugging Face transformers image models written to a local folder
(config.json, model.safetensors, preprocessor_config.json) the way a download arrives: built from
a config alone, nothing downloaded. Shared by the transformers, pool-file and contract tests."""

from __future__ import annotations

from pathlib import Path

import torch

_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
_TEXT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64,
             bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _spec(kind: str, labels: int):
    """(model class, config, image processor) of one tiny family; ``labels`` > 0 gives a classifier."""
    import transformers as T

    square = {"height": 32, "width": 32}
    crop = dict(do_center_crop=True, crop_size=square)
    head = labels > 0
    specs = {
        "vit": (T.ViTForImageClassification if head else T.ViTModel, T.ViTConfig(**_VIT, num_labels=max(labels, 1)),
                T.ViTImageProcessor(size=square)),
        "deit": (T.DeiTForImageClassification, T.DeiTConfig(**_VIT, num_labels=max(labels, 1)),
                 T.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size=square)),
        "beit": (T.BeitForImageClassification if head else T.BeitModel, T.BeitConfig(**_VIT, num_labels=max(labels, 1)),
                 T.BeitImageProcessor(size=square)),
        "dinov2": (T.Dinov2ForImageClassification if head else T.Dinov2Model,
                   T.Dinov2Config(**{k: v for k, v in _VIT.items() if k != "intermediate_size"}, num_labels=max(labels, 1)),
                   T.BitImageProcessor(size={"shortest_edge": 36}, **crop)),
        "convnext": (T.ConvNextForImageClassification if head else T.ConvNextModel,
                     T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=max(labels, 1)),
                     T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)),
        "swin": (T.SwinForImageClassification if head else T.SwinModel,
                 T.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
                              num_labels=max(labels, 1)), T.ViTImageProcessor(size=square)),
        "resnet": (T.ResNetForImageClassification if head else T.ResNetModel,
                   T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=max(labels, 1)),
                   T.ConvNextImageProcessor(size={"shortest_edge": 32})),
        "clip": (T.CLIPModel, T.CLIPConfig(text_config=_TEXT, vision_config=_VIT),
                 T.CLIPImageProcessor(size={"shortest_edge": 32}, **crop)),
        "siglip": (T.SiglipModel, T.SiglipConfig(text_config=_TEXT, vision_config=_VIT), T.SiglipImageProcessor(size=square)),
    }
    return specs[kind]


def write_tiny(folder: Path, kind: str = "vit", labels: int = 5, seed: int = 0) -> torch.nn.Module:
    """Save a tiny ``kind`` model (with a ``labels``-way classifier when the family has one and
    ``labels`` > 0) and its image processor into ``folder``; return the model, in eval mode."""
    cls, config, processor = _spec(kind, labels)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # zero-initialised parts (biases, layer scales) would hide a mis-loaded weight
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return model
