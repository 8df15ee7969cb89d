"""Hugging Face transformers image models as pool members: ViT, DeiT, BEiT, DINOv2, ConvNeXt
(v1, v2), Swin, ResNet, and the vision towers of CLIP and SigLIP, from a model folder
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``) or the local Hugging Face
cache, never from the network.

A :class:`TransformersModel` obeys the member contract like :class:`~expertise.models.external.ExternalModel`:

* ``net`` is the family's base model (``ViTModel``, ``ConvNextModel``, ``CLIPVisionModel``, ...)
  and ``embed(x)`` its pre-logits representation, the input of the checkpoint's classifier:

  ========================  =================================================================
  family                    ``embed``
  ========================  =================================================================
  ViT, DeiT                 the CLS token after the final layer norm (what the classifier reads;
                            ViT's tanh pooler, absent from fine-tuned checkpoints, is not used)
  BEiT                      the pooler output: layer-normed mean of the patch tokens
                            (``use_mean_pooling``, the default) or the CLS token
  DINOv2                    the CLS token after the final layer norm; a checkpoint with a
                            classifier: CLS concatenated with the mean patch token (2 x width),
                            which is what its linear head reads
  ConvNeXt, ConvNeXt V2     the pooler output: global average pool, then layer norm
  Swin                      the pooler output: layer norm, then global average pool
  ResNet                    the pooler output: global average pool
  CLIP, SigLIP              the vision tower's pooler output (CLIP: the post-layer-normed CLS
                            token, before the image-text projection; SigLIP: its attention-pooling
                            head, or the mean token without one); never an upstream head
  ========================  =================================================================

* the checkpoint's linear classifier (``*ForImageClassification``) becomes the upstream head
  (LEEP and NCE read its softmax); a checkpoint of the base model has none;
* ``preprocessing`` comes from the folder's image processor config (final input size, mean and
  std, its rescale factor folded in); the resize and crop it does first are kept in the member
  config as ``processor`` (:func:`expertise.models.hf_config.read_processor`).

Weights load through transformers' own loader with ``use_safetensors=True``,
``local_files_only=True`` and never ``trust_remote_code``, from a private folder that holds links to
the safetensors files only, so nothing else in the model folder (a pickle, an adapter, code) is
seen. ``config.json`` is checked first (:mod:`expertise.models.hf_config`): only allowlisted
architecture settings reach the config class. A missing weight, a weight of another shape or a
folder with only pickled weights is one line.

transformers is an optional dependency (``pip install 'expertise[hf]'``): this module imports it
only when a transformers member is built.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from expertise import schema
from expertise import reading
from expertise.errors import ConfigError
from expertise.models import hf_config
from expertise.models.backbones import HeadMixin, Preprocessing, head_fields, register_member_class
from expertise.models.external import ExternalSource

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
_PICKLED = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".h5", ".msgpack")
_SHARD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.safetensors$")
POOLINGS = ("cls", "pooler", "cls_mean", "mean")


@dataclass(frozen=True)
class Family:
    """How one transformers family becomes a member: its config and base-model classes, the
    classifier class whose ``classifier`` is the upstream head (and the attribute holding its base
    model), which output ``embed`` returns without and with that classifier."""

    config_class: str
    base_class: str
    classifier_class: str | None
    base_attr: str
    pooling: str
    head_pooling: str
    base_kwargs: tuple[tuple[str, Any], ...] = ()
    positions: bool = False  # fixed position embeddings: interpolated when the input size differs


FAMILIES: dict[str, Family] = {
    "vit": Family("ViTConfig", "ViTModel", "ViTForImageClassification", "vit", "cls", "cls",
                  (("add_pooling_layer", False),), True),
    "deit": Family("DeiTConfig", "DeiTModel", "DeiTForImageClassification", "deit", "cls", "cls",
                   (("add_pooling_layer", False),), True),
    "beit": Family("BeitConfig", "BeitModel", "BeitForImageClassification", "beit", "pooler", "pooler",
                   (("add_pooling_layer", True),), True),
    "dinov2": Family("Dinov2Config", "Dinov2Model", "Dinov2ForImageClassification", "dinov2", "pooler", "cls_mean"),
    "convnext": Family("ConvNextConfig", "ConvNextModel", "ConvNextForImageClassification", "convnext", "pooler", "pooler"),
    "convnextv2": Family("ConvNextV2Config", "ConvNextV2Model", "ConvNextV2ForImageClassification", "convnextv2",
                         "pooler", "pooler"),
    "swin": Family("SwinConfig", "SwinModel", "SwinForImageClassification", "swin", "pooler", "pooler"),
    "resnet": Family("ResNetConfig", "ResNetModel", "ResNetForImageClassification", "resnet", "pooler", "pooler"),
    "clip": Family("CLIPVisionConfig", "CLIPVisionModel", None, "", "pooler", "pooler", (), True),
    "siglip": Family("SiglipVisionConfig", "SiglipVisionModel", None, "", "pooler", "pooler", (), True),
}
assert set(FAMILIES) == set(hf_config.FAMILY_KEYS)


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise ConfigError("this is a Hugging Face transformers model: install the optional dependency "
                          "(pip install 'expertise[hf]', or pip install transformers)") from None
    return transformers


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' loading report and progress bars off while a member is built."""
    logging = _transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _config(family: str, args: dict[str, Any], num_labels: int = 0) -> Any:
    """The family's transformers config from checked architecture keys."""
    cls = getattr(_transformers(), FAMILIES[family].config_class)
    try:
        return cls(**args, num_labels=max(num_labels, 1))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ConfigError(f"transformers cannot make a {family!r} config of {args} ({e})") from None


def _base(family: str, config: Any) -> nn.Module:
    fam = FAMILIES[family]
    try:
        return getattr(_transformers(), fam.base_class)(config, **dict(fam.base_kwargs))
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"transformers cannot build a {fam.base_class} from {family!r} config "
                          f"({type(e).__name__}: {str(e)[:160]})") from None


def _width(family: str, config: Any, pooling: str) -> int:
    width = int(config.hidden_sizes[-1] if family in ("convnext", "convnextv2", "resnet") else config.hidden_size)
    return 2 * width if pooling == "cls_mean" else width


class TransformersModel(HeadMixin, nn.Module):
    """A transformers base model (``net``) plus, optionally, the checkpoint's classifier as a
    separate linear head; see the module docstring for what ``embed`` returns per family."""

    def __init__(self, family: str, arch_args: dict[str, Any], num_outputs: int, preprocessing: Preprocessing,
                 head_kind: str = "upstream", pooling: str | None = None, processor: dict[str, Any] | None = None,
                 net: nn.Module | None = None) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ConfigError(f"unknown transformers family {family!r}; known: {', '.join(sorted(FAMILIES))}")
        self.family = self.architecture = family
        self.arch_args = hf_config.check_arch_args(family, arch_args, "TransformersModel")
        self.pooling = pooling or default_pooling(family, self.arch_args, False)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.preprocessing = preprocessing
        self.processor = processor
        self.net = net if net is not None else _base(family, _config(family, self.arch_args))
        config = self.net.config
        self.num_features = _width(family, config, self.pooling)
        self._forward_kwargs = ({"interpolate_pos_encoding": True}
                                if FAMILIES[family].positions and preprocessing.size != config.image_size else {})
        self.head_kind = head_kind
        self.head: nn.Linear | None = nn.Linear(self.num_features, num_outputs) if num_outputs else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(pixel_values=x, **self._forward_kwargs)
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1)
        tokens = out.last_hidden_state
        if self.pooling == "cls":
            return tokens[:, 0]
        if self.pooling == "cls_mean":
            return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)
        return tokens.mean(dim=1)

    def member_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "class": "TransformersModel",
            "family": self.family,
            "config": dict(self.arch_args),
            "pooling": self.pooling,
            "num_outputs": 0 if self.head is None else self.head.out_features,
            "head_kind": self.head_kind,
            "preprocessing": self.preprocessing.to_json(),
        }
        if self.processor is not None:
            cfg["processor"] = dict(self.processor)
        return cfg


def default_pooling(family: str, args: dict[str, Any], classifier: bool) -> str:
    if family == "siglip" and args.get("vision_use_head", True) is False:
        return "mean"
    fam = FAMILIES[family]
    return fam.head_pooling if classifier else fam.pooling


@register_member_class("TransformersModel")
def _build_transformers(cfg: dict[str, Any]) -> TransformersModel:
    where = "TransformersModel config"
    schema.keys(cfg, where, ("class", "family", "config", "pooling", "num_outputs", "preprocessing"),
                ("head_kind", "processor"))
    num_outputs, head_kind, prep = head_fields(cfg, where)
    family = schema.string(cfg["family"], f"{where}.family", choices=tuple(FAMILIES))
    args = hf_config.check_arch_args(family, schema.obj(cfg["config"], f"{where}.config"), f"{where}.config")
    processor = cfg.get("processor")
    return TransformersModel(family, args, num_outputs, prep, head_kind,
                             schema.string(cfg["pooling"], f"{where}.pooling", choices=POOLINGS),
                             None if processor is None else hf_config.check_processor_summary(processor, f"{where}.processor"))


def is_transformers_folder(folder: Path) -> bool:
    """True when ``folder/config.json`` is a transformers config (it has ``model_type`` and no
    timm ``architecture``)."""
    f = Path(folder) / hf_config.CONFIG
    if not f.is_file():
        return False
    try:
        cfg = reading.read_json(f)
    except (OSError, ConfigError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and "architecture" not in cfg


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: ``model.safetensors``, or the shards its index names,
    each with a readable safetensors header; a folder with only pickled weights is refused by name."""
    files = _listed_weights(folder)
    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt") as fh:
                    fh.keys()
            except (SafetensorError, OSError, ValueError) as e:
                raise ConfigError(f"{f} is not a readable safetensors file ({e}); expertise reads safetensors only") from None
    return files


def _listed_weights(folder: Path) -> list[Path]:
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        index = hf_config.read_json(folder / INDEX)
        weight_map = schema.obj(index.get("weight_map"), f"{folder / INDEX}: weight_map")
        shards = sorted({schema.string(v, f"{folder / INDEX}: weight_map") for v in weight_map.values()})
        bad = [s for s in shards if not _SHARD.fullmatch(s) or not (folder / s).is_file()]
        if bad or not shards:
            raise ConfigError(f"{folder / INDEX} names shards that are not safetensors files in the folder: {bad[:3]}")
        return [folder / INDEX] + [folder / s for s in shards]
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLED)
    extra = f" (it has {', '.join(pickled[:3])}: pickled weights are never loaded)" if pickled else ""
    raise ConfigError(f"{folder} has no {WEIGHTS}{extra}; expertise reads safetensors only: download the model's "
                      "safetensors weights, or convert them where you trust the source")


@contextlib.contextmanager
def _weights_only(files: list[Path]) -> Iterator[Path]:
    """A private folder holding links to ``files`` only: all transformers' loader can see."""
    with tempfile.TemporaryDirectory(prefix="expertise-hf-") as tmp:
        for f in files:
            os.symlink(f.resolve(), Path(tmp) / f.name)
        yield Path(tmp)


def _linear(classifier: nn.Module | None) -> nn.Linear | None:
    """The classifier's linear layer (ResNet wraps it in Flatten + Linear); None for Identity."""
    if isinstance(classifier, nn.Linear):
        return classifier
    if isinstance(classifier, nn.Sequential):
        linears = [m for m in classifier if isinstance(m, nn.Linear)]
        return linears[0] if len(linears) == 1 else None
    return None


def from_folder(folder: Path, size: int | None = None, location: str | None = None) -> tuple[TransformersModel, ExternalSource]:
    """A transformers image model from a local folder (a download or a Hugging Face cache snapshot)."""
    folder = Path(folder)
    cfg_file = folder / hf_config.CONFIG
    if not cfg_file.is_file():
        raise ConfigError(f"{folder} is not a Hugging Face model folder: it has no {hf_config.CONFIG}")
    cfg = hf_config.read_json(cfg_file)
    family = hf_config.family_of(cfg, str(cfg_file))
    files = _weight_files(folder)
    proc_file = folder / hf_config.PROCESSOR
    if not proc_file.is_file():
        raise ConfigError(f"{folder} has no {hf_config.PROCESSOR} (the image processor's size, mean and std); "
                          "download it with the weights")
    prep, processor = hf_config.read_processor(hf_config.read_json(proc_file), str(proc_file), size, family)
    fam, tf = FAMILIES[family], _transformers()
    defaults = getattr(tf, fam.config_class)().to_dict()
    args = hf_config.arch_args_of_folder(family, cfg, defaults, str(cfg_file))
    labels = hf_config.num_labels(cfg, str(cfg_file))
    classifier = (fam.classifier_class is not None and fam.classifier_class in hf_config.architectures(cfg, str(cfg_file))
                  and labels > 0)
    config = _config(family, args, labels)
    cls = getattr(tf, fam.classifier_class if classifier else fam.base_class)  # type: ignore[arg-type]
    kwargs = {} if classifier else dict(fam.base_kwargs)
    with _quiet(), _weights_only(files) as staged:
        try:
            loaded, info = cls.from_pretrained(staged, config=config, local_files_only=True, use_safetensors=True,
                                               trust_remote_code=False, output_loading_info=True, dtype=torch.float32,
                                               **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError, SafetensorError) as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise ConfigError(f"the weights in {folder} do not load as its {family!r} config.json describes "
                              f"({type(e).__name__}: {' '.join(lines[:2])[:240]})") from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched or info.get("error_msgs"):
        raise ConfigError(f"the weights in {folder} do not fit its config.json: missing {missing[:3]}, "
                          f"of another shape {mismatched[:3]}")
    net = getattr(loaded, fam.base_attr) if classifier else loaded
    head = _linear(loaded.classifier) if classifier else None
    pooling = default_pooling(family, args, head is not None)
    model = TransformersModel(family, args, 0 if head is None else head.out_features, prep, "upstream", pooling,
                              processor, net)
    if head is not None:
        assert model.head is not None
        with torch.no_grad():
            model.head.weight.copy_(head.weight)
            model.head.bias.copy_(head.bias if head.bias is not None else torch.zeros_like(model.head.bias))
    return model.eval(), ExternalSource("hf", family, location or str(folder), format="transformers")
