"""External pre-trained models as pool members: any timm architecture, with weights from a local
safetensors checkpoint, a Hugging Face model folder in timm's layout (``config.json`` +
``model.safetensors``), a Hugging Face Hub id, or timm's own pretrained weights.

An external model obeys the same member contract as our own experts (``embed``,
``upstream_logits``, ``preprocessing``, ``member_config``), so selection, fine-tuning and the
benchmark treat it like any other member:

* ``embed(x)`` is timm's pre-logits representation, ``forward_head(forward_features(x), pre_logits=True)``;
* the model's own linear classifier, when it has one, becomes its upstream head (LEEP and NCE read
  a softmax over it); a model without one (or with a non-linear classifier) has no upstream head;
* ``preprocessing`` comes from timm's data config of the weights, as timm's own eval transform
  applies it (input size, the resize to input size / crop_pct, interpolation, the centre crop,
  mean, std: :func:`expertise.models.preprocess.timm_preprocessing`), the size overridable: each
  member resizes the task's source images itself, so a 224-px and a 299-px model in one pool each
  see what their weights expect.

Weights are only ever read from safetensors: a checkpoint or a Hub repository that has only pickled
weights (``.bin``, ``.pth``) is refused with an error, never unpickled. A member config or a Hugging
Face ``config.json`` is data, never a way to reach a file or code: its ``model_args`` pass only the
architecture keywords allowed for the model's family (:data:`MODEL_ARGS`), with plain values (numbers,
booleans, names; never a path), and its ``pretrained_cfg`` only the preprocessing and classifier
fields of :data:`PRETRAINED_CFG_KEYS`. Anything else is refused in one line before timm sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from expertise import schema
from expertise import reading
from expertise.errors import ConfigError
from expertise.models.backbones import HeadMixin, Preprocessing, head_fields, register_member_class
from expertise.models.preprocess import timm_preprocessing

HF_CONFIG, HF_WEIGHTS = "config.json", "model.safetensors"
_PICKLED = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".tar")

# Keyword arguments of timm's model factories that a stored config may pass, per timm model module
# (``timm.models.<module>``): shape and regularisation settings only. Loader arguments
# (``checkpoint_path``, ``pretrained``, ``pretrained_cfg*``, ``cache_dir``, ``features_only``) and
# anything that takes a file, a class or a callable are in no list. Values pass schema.plain_value.
_COMMON_ARGS = frozenset({"drop_rate", "drop_path_rate", "global_pool", "in_chans"})
_VIT_ARGS = frozenset({"img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "qk_norm",
                       "init_values", "class_token", "no_embed_class", "reg_tokens", "pre_norm", "fc_norm",
                       "dynamic_img_size", "dynamic_img_pad", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate",
                       "attn_drop_rate", "act_layer", "norm_layer"})
MODEL_ARGS: dict[str, frozenset[str]] = {
    "resnet": frozenset({"layers", "cardinality", "base_width", "stem_width", "stem_type", "replace_stem_pool",
                         "output_stride", "avg_down", "down_kernel_size", "act_layer", "zero_init_last"}),
    "resnetv2": frozenset({"layers", "channels", "width_factor", "stem_chs", "stem_type", "output_stride", "preact",
                           "basic", "bottle_ratio", "avg_down", "zero_init_last"}),
    "vision_transformer": _VIT_ARGS,
    "deit": _VIT_ARGS,
    "beit": _VIT_ARGS | {"use_abs_pos_emb", "use_rel_pos_bias", "use_shared_rel_pos_bias"},
    "eva": _VIT_ARGS | {"use_rot_pos_emb", "use_abs_pos_emb", "swiglu_mlp", "scale_mlp"},
    "convnext": frozenset({"depths", "dims", "kernel_sizes", "ls_init_value", "patch_size", "head_hidden_size",
                           "conv_mlp", "conv_bias", "use_grn", "head_norm_first", "stem_type", "output_stride",
                           "act_layer", "norm_layer"}),
    "swin_transformer": frozenset({"img_size", "patch_size", "window_size", "embed_dim", "depths", "num_heads",
                                   "mlp_ratio", "qkv_bias", "strict_img_size", "norm_layer"}),
    "efficientnet": frozenset({"channel_multiplier", "depth_multiplier", "fix_stem", "output_stride", "act_layer"}),
    "mobilenetv3": frozenset({"channel_multiplier", "depth_multiplier", "fix_stem", "act_layer"}),
}
# Fields of a Hugging Face timm folder's ``pretrained_cfg`` passed on to timm: how inputs are
# prepared and where the classifier is. Never ``file``, ``url``, ``hf_hub_*``, ``state_dict``,
# ``custom_load`` or ``source``: this loader says where the weights are.
PRETRAINED_CFG_KEYS = frozenset({"architecture", "tag", "input_size", "test_input_size", "min_input_size",
                                 "fixed_input_size", "interpolation", "crop_pct", "test_crop_pct", "crop_mode", "mean",
                                 "std", "num_classes", "label_offset", "pool_size", "test_pool_size", "first_conv",
                                 "classifier", "license", "description", "origin_url", "paper_name", "paper_ids",
                                 "notes"})
_DESCRIPTIVE = frozenset({"license", "description", "origin_url", "paper_name", "paper_ids", "notes"})


def _family(architecture: str) -> str | None:
    """The timm model module an architecture is defined in (``resnet``, ``vision_transformer``, ...)."""
    name = timm.models.get_arch_name(architecture)
    return next((f for f in MODEL_ARGS if timm.models.is_model_in_modules(name, [f])), None)


def check_model_args(architecture: str, model_args: Any, where: str) -> dict[str, Any]:
    """``model_args`` restricted to the keys allowed for the architecture's family, with plain
    values; anything else is refused with one line."""
    args = schema.obj(model_args, f"{where}.model_args")
    family = _family(architecture)
    allowed = _COMMON_ARGS | MODEL_ARGS.get(family or "", frozenset())
    refused = sorted(k for k in args if k not in allowed)
    if refused:
        raise ConfigError(f"{where}.model_args: {', '.join(map(repr, refused))} not allowed for {architecture!r} "
                          f"(timm family {family or 'unknown'}; allowed: {', '.join(sorted(allowed))}); "
                          "a stored config passes only architecture settings, never paths or loader options")
    if "in_chans" in args and args["in_chans"] != 3:
        raise ConfigError(f"{where}.model_args.in_chans: pool members read RGB images (3 channels), got {args['in_chans']!r}")
    return {k: schema.plain_value(v, f"{where}.model_args.{k}") for k, v in args.items()}


def check_pretrained_cfg(cfg: Any, where: str) -> dict[str, Any]:
    """The fields of a folder's ``pretrained_cfg`` that are passed to timm, checked; loader fields
    (``file``, ``url``, ``hf_hub_id``, ``custom_load``, ...) are dropped, since this loader says
    where the weights are, and descriptive text is not passed on."""
    cfg = schema.obj(cfg, f"{where}.pretrained_cfg")
    return {k: schema.plain_value(v, f"{where}.pretrained_cfg.{k}") for k, v in cfg.items()
            if k in PRETRAINED_CFG_KEYS and k not in _DESCRIPTIVE}


class ExternalModel(HeadMixin, nn.Module):
    """A timm network without its classifier (``net``) plus, optionally, that classifier as a
    separate linear head; see the module docstring."""

    def __init__(self, architecture: str, num_outputs: int, preprocessing: Preprocessing,
                 head_kind: str = "upstream", model_args: dict[str, Any] | None = None,
                 net: nn.Module | None = None) -> None:
        super().__init__()
        self.architecture = schema.token(architecture, "architecture")
        self.model_args = check_model_args(architecture, model_args or {}, "ExternalModel")
        self.preprocessing = preprocessing
        self.net = net if net is not None else _create(architecture, num_classes=0, **self.model_args)
        # The pre-logits width: timm's ``head_hidden_size`` where the head has its own layers before the
        # classifier (MobileNetV3: 576 channels, then a 1,024-wide conv head), else ``num_features``.
        self.num_features = int(getattr(self.net, "head_hidden_size", None) or self.net.num_features)
        self.head_kind = head_kind
        self.head: nn.Linear | None = nn.Linear(self.num_features, num_outputs) if num_outputs else None

    @classmethod
    def wrap(cls, net: nn.Module, architecture: str, preprocessing: Preprocessing,
             model_args: dict[str, Any] | None = None) -> ExternalModel:
        """Take a timm model apart: its linear classifier (if any) becomes the upstream head, the
        rest the embedding network. ``net`` is modified in place (its classifier is removed)."""
        classifier = net.get_classifier() if hasattr(net, "get_classifier") else None
        head = classifier if isinstance(classifier, nn.Linear) else None
        net.reset_classifier(0)
        model = cls(architecture, 0 if head is None else head.out_features, preprocessing, "upstream", model_args, net)
        if head is not None:  # a model without a linear classifier (num_classes 0) has no upstream head
            assert model.head is not None
            with torch.no_grad():
                model.head.weight.copy_(head.weight)
                if head.bias is None:
                    model.head.bias.zero_()
                else:
                    model.head.bias.copy_(head.bias)
        return model

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def member_config(self) -> dict[str, Any]:
        return {
            "class": "ExternalModel",
            "architecture": self.architecture,
            "model_args": self.model_args,
            "num_outputs": 0 if self.head is None else self.head.out_features,
            "head_kind": self.head_kind,
            "preprocessing": self.preprocessing.to_json(),
        }


@register_member_class("ExternalModel")
def _build_external(cfg: dict[str, Any]) -> ExternalModel:
    where = "ExternalModel config"
    schema.keys(cfg, where, ("class", "architecture", "num_outputs", "preprocessing"), ("head_kind", "model_args"))
    num_outputs, head_kind, prep = head_fields(cfg, where)
    architecture = schema.token(cfg["architecture"], f"{where}.architecture")
    return ExternalModel(architecture, num_outputs, prep, head_kind,
                         check_model_args(architecture, cfg.get("model_args", {}), where))


def _create(architecture: str, **kwargs: Any) -> nn.Module:
    schema.token(architecture, "architecture")
    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture.split('.')[0][:12]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(f"timm has no architecture {architecture!r}{hint} (see timm.list_models())")
    try:
        return timm.create_model(architecture, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"timm cannot build {architecture!r} with {kwargs}: {e}") from None


@dataclass(frozen=True)
class ExternalSource:
    """Where an external model came from, kept in its manifest entry."""

    kind: str  # "checkpoint", "hf", or "timm"
    architecture: str
    location: str  # the checkpoint file, the Hugging Face folder or id, or the timm name
    pretrained_tag: str = ""
    format: str = "timm"  # "timm", or "transformers" (expertise.models.hf_transformers)

    def to_json(self) -> dict[str, str]:
        return {"source": self.kind, "location": self.location, "pretrained_tag": self.pretrained_tag,
                "format": self.format}


def _safetensors_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path} is not a readable safetensors file ({e})") from None


def _check_safetensors_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no checkpoint file at {path}")
    if path.suffix in _PICKLED:
        raise ConfigError(f"{path} is a pickled checkpoint; expertise reads safetensors only (never unpickles). "
                          "Convert it to a .safetensors state dict on a machine where you trust its source")
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: expected a .safetensors checkpoint")
    return path


def _classifier_outputs(architecture: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """The number of classes of the checkpoint's classifier (0 when it has none), found under
    the architecture's classifier name (timm's pretrained config says which it is)."""
    with torch.device("meta"):
        probe = _create(architecture, pretrained=False)
    names = probe.pretrained_cfg.get("classifier") or ()
    for name in (names,) if isinstance(names, str) else names:
        shape = shapes.get(f"{name}.weight") or shapes.get(f"module.{name}.weight")
        if shape:
            return int(shape[0])
    return 0


def _preprocessing(net: nn.Module, size: int | None) -> Preprocessing:
    """timm's eval data config of ``net`` (``resolve_data_config(model=net)``) as its Preprocessing."""
    return timm_preprocessing(timm.data.resolve_data_config(model=net), size)


def from_checkpoint(architecture: str, checkpoint: Path, size: int | None = None) -> tuple[ExternalModel, ExternalSource]:
    """A timm ``architecture`` with weights from a local safetensors ``checkpoint`` (a state dict as
    timm saves it; a classifier of any width is kept as the upstream head)."""
    path = _check_safetensors_file(checkpoint)
    num_classes = _classifier_outputs(architecture, _safetensors_keys(path))
    net = _load_timm(architecture, {"file": str(path.resolve()), "num_classes": num_classes}, num_classes, str(path))
    return ExternalModel.wrap(net, architecture, _preprocessing(net, size)), ExternalSource("checkpoint", architecture, str(path))


def from_hf_folder(folder: Path, size: int | None = None, location: str | None = None) -> tuple[ExternalModel, ExternalSource]:
    """A model folder in timm's Hugging Face layout: ``config.json`` (``architecture``,
    ``num_classes``, ``pretrained_cfg``, optional ``model_args``) and ``model.safetensors``."""
    folder = Path(folder)
    cfg_file, weights = folder / HF_CONFIG, folder / HF_WEIGHTS
    if not cfg_file.is_file():
        raise ConfigError(f"{folder} is not a Hugging Face timm model folder: it has no {HF_CONFIG}")
    if not weights.is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLED)
        extra = f" (it has {', '.join(pickled)}: pickled weights are never loaded)" if pickled else ""
        raise ConfigError(f"{folder} has no {HF_WEIGHTS}{extra}; expertise reads safetensors only")
    try:
        cfg = reading.read_json(cfg_file)
    except OSError as e:
        raise ConfigError(f"{cfg_file} cannot be read ({e})") from None
    cfg = schema.obj(cfg, str(cfg_file))
    pretrained_cfg = check_pretrained_cfg(cfg.get("pretrained_cfg") or {}, str(cfg_file))
    architecture = cfg.get("architecture") or pretrained_cfg.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ConfigError(f"{cfg_file} names no 'architecture'; is it a timm model? (a transformers model has a 'model_type')")
    architecture = schema.token(architecture, f"{cfg_file}: architecture")
    # timm records the factory's arguments; those this loader sets itself are taken from them
    raw_args = schema.obj(cfg.get("model_args") or {}, f"{cfg_file}: model_args")
    model_args = check_model_args(architecture, {k: v for k, v in raw_args.items() if k != "num_classes"}, str(cfg_file))
    shapes = _safetensors_keys(weights)
    num_classes = (schema.integer(cfg["num_classes"], f"{cfg_file}: num_classes", 0, 1 << 20) if "num_classes" in cfg
                   else _classifier_outputs(architecture, shapes))
    overlay = {k: v for k, v in pretrained_cfg.items() if k != "architecture"}
    overlay.update(file=str(weights.resolve()), num_classes=num_classes)
    net = _load_timm(architecture, overlay, num_classes, str(folder), **model_args)
    source = ExternalSource("hf", architecture, location or str(folder), str(pretrained_cfg.get("tag", "")))
    return ExternalModel.wrap(net, architecture, _preprocessing(net, size), model_args), source


# What is fetched of a Hugging Face repository: configs and safetensors weights, never pickles.
HUB_PATTERNS = [HF_CONFIG, "preprocessor_config.json", HF_WEIGHTS, "model.safetensors.index.json", "model-*.safetensors"]


def hub_folder(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of a Hugging Face repository: from the local cache when it is there,
    otherwise downloaded (configs and safetensors weights only) unless ``HF_HUB_OFFLINE`` is set;
    one line naming what to download, and where, when neither works."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ConfigError(f"cannot read {repo_id!r} from the Hugging Face cache ({e})") from None
    try:
        if constants.HF_HUB_OFFLINE:
            raise LocalEntryNotFoundError("offline")
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise ConfigError(f"{repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub "
                          f"cannot be reached; where there is a network run: hf download {repo_id} --include '*.json' "
                          "'*.safetensors' (it lands in that cache; copy the cache here, or pass the downloaded "
                          "folder to --hf)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ConfigError(f"cannot fetch {repo_id!r} from the Hugging Face Hub ({e})") from None


def from_hf_hub(repo_id: str, size: int | None = None, revision: str | None = None) -> tuple[ExternalModel, ExternalSource]:
    """A timm model from the Hugging Face Hub (``timm/resnet50.a1_in1k``): only its config and
    safetensors weights are fetched (or found in the local Hugging Face cache, looked at first)."""
    return from_hf_folder(hub_folder(repo_id, revision), size, location=repo_id)


def from_timm_pretrained(architecture: str, size: int | None = None) -> tuple[ExternalModel, ExternalSource]:
    """timm's own pretrained weights for ``architecture`` (``resnet50.a1_in1k``), downloaded by
    timm from the Hub: needs a network or a warm Hugging Face cache."""
    name = architecture.split(".")[0]
    try:
        net = _create(architecture, pretrained=True)
    except (RuntimeError, OSError) as e:
        raise ConfigError(f"timm could not load pretrained weights for {architecture!r} ({str(e).splitlines()[0]}); "
                          "without a network, save them elsewhere as a .safetensors checkpoint and pass --checkpoint") from None
    tag = architecture.split(".", 1)[1] if "." in architecture else ""
    return ExternalModel.wrap(net, name, _preprocessing(net, size)), ExternalSource("timm", name, architecture, tag)


def _load_timm(architecture: str, overlay: dict[str, Any], num_classes: int, where: str, **model_args: Any) -> nn.Module:
    """timm's own loading path (checkpoint filters, classifier handling), from a local file."""
    try:
        return _create(architecture, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=num_classes,
                       **model_args)
    except RuntimeError as e:  # load_state_dict(strict=True) on a checkpoint of another architecture
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"the weights in {where} do not fit timm's {architecture!r}: {' '.join(lines[:2])[:300]}") from None
