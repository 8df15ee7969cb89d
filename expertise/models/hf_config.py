"""The checked reading of a Hugging Face transformers model folder's JSON: ``config.json`` (which
family, which architecture settings) and ``preprocessor_config.json`` (how its image processor
prepares inputs). Both are data from someone else, so nothing in them reaches transformers
unchecked (see docs/security.md):

* a ``model_type`` outside :data:`FAMILY_KEYS` is refused; so is ``auto_map`` (custom code: this
  project never passes ``trust_remote_code``);
* only the architecture keys of the family's allowlist (:data:`FAMILY_KEYS`) are passed to its
  config class, each a plain value (number, boolean, plain name, short list) within bounds;
* keys every transformers config carries (``architectures``, ``id2label``, ``transformers_version``,
  ...) and keys the config class does not know (settings of older releases) are dropped; a key
  the config class knows but that is not allowed is refused when it differs from the class default
  (the model would be built differently from what the folder describes), except output and
  segmentation settings that do not change the base model (:data:`IGNORED_KEYS`);
* the image processor's resize, crop, interpolation, rescale and normalisation are read into the
  member's :class:`~expertise.models.preprocess.Preprocessing` (recipe ``transformers``; rescaling
  folded into mean and std; PIL's lanczos, box and hamming filters approximated by bicubic) and a
  ``processor`` summary; a processor key this module does not know is refused, since its effect
  could not be reproduced.

This module imports nothing from transformers; :mod:`expertise.models.hf_transformers` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from expertise import schema
from expertise import reading
from expertise.errors import ConfigError
from expertise.models.backbones import MAX_INPUT_SIZE, MAX_OUTPUTS, MAX_WIDTH, Preprocessing
from expertise.models.preprocess import APPROXIMATED

CONFIG, PROCESSOR = "config.json", "preprocessor_config.json"

_VIT = frozenset({"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
                  "image_size", "patch_size", "num_channels", "qkv_bias"})
_CONVNEXT = frozenset({"num_channels", "patch_size", "num_stages", "hidden_sizes", "depths", "hidden_act",
                       "initializer_range", "layer_norm_eps", "drop_path_rate", "image_size"})
_TOWER = frozenset({"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                    "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
                    "initializer_range"})
# Architecture keys passed to each family's config class (the model_type of config.json; CLIP and
# SigLIP read the ``vision_config`` of a full image-text checkpoint).
FAMILY_KEYS: dict[str, frozenset[str]] = {
    "vit": _VIT | {"encoder_stride", "pooler_output_size", "pooler_act"},
    "deit": _VIT | {"encoder_stride", "pooler_output_size", "pooler_act"},
    "beit": _VIT | {"use_mask_token", "use_absolute_position_embeddings", "use_relative_position_bias",
                    "use_shared_relative_position_bias", "layer_scale_init_value", "drop_path_rate", "use_mean_pooling"},
    "dinov2": _VIT - {"intermediate_size"} | {"mlp_ratio", "layerscale_value", "drop_path_rate", "use_swiglu_ffn",
                                              "use_mask_token"},
    "convnext": _CONVNEXT | {"layer_scale_init_value"},
    "convnextv2": _CONVNEXT,
    "swin": frozenset({"image_size", "patch_size", "num_channels", "embed_dim", "depths", "num_heads", "window_size",
                       "mlp_ratio", "qkv_bias", "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate",
                       "hidden_act", "use_absolute_embeddings", "initializer_range", "layer_norm_eps", "encoder_stride"}),
    "resnet": frozenset({"num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act",
                         "downsample_in_first_stage", "downsample_in_bottleneck"}),
    "clip": _TOWER | {"projection_dim", "initializer_factor"},
    "siglip": _TOWER | {"vision_use_head"},
}
# model_type of a vision tower saved on its own -> its family
TOWER_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
# Keys a config class knows that do not change the base model's forward: backbone outputs,
# segmentation and masked-image-modelling heads, and what Swin derives from its depths and width
# (hidden_size, num_layers). Dropped like the generic keys.
IGNORED_KEYS = frozenset({"hidden_size", "num_layers", "out_features", "out_indices", "stage_names", "reshape_hidden_states", "apply_layernorm",
                          "vocab_size", "add_fpn", "pool_scales", "use_auxiliary_head", "auxiliary_loss_weight",
                          "auxiliary_channels", "auxiliary_num_convs", "auxiliary_concat_input",
                          "semantic_loss_ignore_index"})
# Upper bounds of integer architecture settings (lists bound each entry); others get 2^16.
_BOUNDS = {"hidden_size": MAX_WIDTH, "hidden_sizes": MAX_WIDTH, "embed_dim": MAX_WIDTH, "embedding_size": MAX_WIDTH,
           "intermediate_size": 4 * MAX_WIDTH, "num_hidden_layers": 128, "depths": 128, "num_stages": 16,
           "num_attention_heads": 256, "num_heads": 256, "image_size": MAX_INPUT_SIZE, "patch_size": 64,
           "window_size": 64, "pooler_output_size": MAX_WIDTH, "projection_dim": MAX_WIDTH, "encoder_stride": 64}

# Image processor keys: what each one means is reproduced below; these others do not change the
# pixels of an RGB image.
_PROCESSOR_KEYS = frozenset({"do_resize", "size", "resample", "do_center_crop", "crop_size", "crop_pct", "do_rescale",
                             "rescale_factor", "do_normalize", "image_mean", "image_std"})
_PROCESSOR_INERT = frozenset({"image_processor_type", "feature_extractor_type", "processor_class", "do_convert_rgb",
                              "do_reduce_labels", "reduce_labels"})
# Processors (by class name prefix) and, for a config that names none, families whose bare-number
# ``size`` is the shorter side
SHORTER_SIDE_PROCESSORS = ("CLIP", "Bit", "ConvNext")
SHORTER_SIDE_FAMILIES = frozenset({"clip", "dinov2", "convnext", "convnextv2", "resnet"})
# PIL's resampling filters by number, as image processors store them
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# ... and the torchvision interpolation transformers' image processors use for each (nearest is
# torchvision's nearest-exact there; lanczos, box and hamming, which its tensor resize lacks on the
# accelerators, approximated by bicubic, as transformers itself does for lanczos on a GPU)
TORCH_RESAMPLE = {k: "nearest-exact" if v == "nearest" else APPROXIMATED[v] for k, v in RESAMPLE.items()}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = reading.read_json(path)
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e})") from None
    return dict(schema.obj(data, str(path)))


def family_of(cfg: Mapping[str, Any], where: str) -> str:
    """The family (a key of :data:`FAMILY_KEYS`) of a transformers ``config.json``."""
    if "auto_map" in cfg:
        raise ConfigError(f"{where}: 'auto_map' asks for custom model code; expertise never runs code from a model "
                          "folder (no trust_remote_code)")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(f"{where} has no 'model_type': it is not a Hugging Face transformers model config")
    family = TOWER_TYPES.get(model_type, model_type)
    if family not in FAMILY_KEYS:
        raise ConfigError(f"{where}: model_type {model_type[:60]!r} is not a supported image model; supported: "
                          f"{', '.join(sorted(FAMILY_KEYS))} (and {', '.join(sorted(TOWER_TYPES))})")
    return family


def _bounded(key: str, value: Any, where: str) -> Any:
    value = schema.plain_value(value, where)
    hi = _BOUNDS.get(key, 1 << 16)
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, int) and not isinstance(v, bool):
            schema.integer(v, where, 0, hi)
    if key == "num_channels" and value != 3:
        raise ConfigError(f"{where}: pool members read RGB images (3 channels), got {value!r}")
    return value


def check_arch_args(family: str, args: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A stored member config's architecture keys: only the family's allowlist, checked values."""
    allowed = FAMILY_KEYS[family]
    refused = sorted(k for k in args if k not in allowed)
    if refused:
        raise ConfigError(f"{where}: {', '.join(map(repr, refused[:5]))} not allowed for transformers family {family!r} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    return {k: _bounded(k, v, f"{where}.{k}") for k, v in sorted(args.items())}


def arch_args_of_folder(family: str, cfg: Mapping[str, Any], defaults: Mapping[str, Any],
                        where: str) -> dict[str, Any]:
    """The architecture keys of a folder's ``config.json`` (its ``vision_config`` for a full CLIP or
    SigLIP checkpoint), as :func:`check_arch_args` passes them. ``defaults`` is the config class's
    own ``to_dict()``: a key it knows, outside the allowlist and :data:`IGNORED_KEYS`, with
    another value than its default, is refused."""
    if family in ("clip", "siglip") and "vision_config" in cfg:
        cfg = schema.obj(cfg["vision_config"], f"{where}: vision_config")
        where = f"{where}: vision_config"
    allowed = FAMILY_KEYS[family]
    differs = sorted(k for k, v in cfg.items() if k in defaults and k not in allowed and k not in IGNORED_KEYS
                     and k not in _GENERIC and v != defaults[k])
    if differs:
        raise ConfigError(f"{where}: {', '.join(map(repr, differs[:5]))} set to a non-default value, which expertise does "
                          f"not pass on for {family!r} models (allowed: {', '.join(sorted(allowed))})")
    return check_arch_args(family, {k: v for k, v in cfg.items() if k in allowed}, where)


# Keys every transformers config has; read for num_labels or dispatch, never passed on.
_GENERIC = frozenset({"_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label",
                      "label2id", "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states",
                      "problem_type", "return_dict", "transformers_version", "num_labels", "tie_word_embeddings"})


def num_labels(cfg: Mapping[str, Any], where: str) -> int:
    """The width of the checkpoint's classifier as config.json declares it (``id2label`` or
    ``num_labels``)."""
    if "id2label" in cfg:
        return len(schema.obj(cfg["id2label"], f"{where}: id2label"))
    return schema.integer(cfg.get("num_labels", 0), f"{where}: num_labels", 0, MAX_OUTPUTS)


def architectures(cfg: Mapping[str, Any], where: str) -> list[str]:
    names = cfg.get("architectures") or []
    if not isinstance(names, list):
        raise ConfigError(f"{where}: 'architectures' must be a list of class names")
    return [schema.token(n, f"{where}: architectures") for n in names]


def _edge(value: Any, where: str) -> tuple[str, int, int]:
    """An image processor ``size``/``crop_size``: ('square', h, w) or ('shortest_edge', s, s)."""
    if isinstance(value, int) and not isinstance(value, bool):
        s = schema.integer(value, where, 1, MAX_INPUT_SIZE)
        return "square", s, s
    d = schema.obj(value, where)
    if set(d) == {"height", "width"}:
        return ("square", schema.integer(d["height"], f"{where}.height", 1, MAX_INPUT_SIZE),
                schema.integer(d["width"], f"{where}.width", 1, MAX_INPUT_SIZE))
    if set(d) == {"shortest_edge"}:
        s = schema.integer(d["shortest_edge"], f"{where}.shortest_edge", 1, MAX_INPUT_SIZE)
        return "shortest_edge", s, s
    raise ConfigError(f"{where}: expected {{height, width}} or {{shortest_edge}}, got keys {sorted(d)}")


def _shorter_side(d: Mapping[str, Any], family: str | None) -> bool:
    """Whether a bare-number ``size`` means the shorter side (transformers' processors of CLIP,
    DINOv2 (Bit) and ConvNeXt, ``default_to_square=False``) rather than a square."""
    kind = d.get("image_processor_type") or d.get("feature_extractor_type")
    if isinstance(kind, str):
        return kind.startswith(SHORTER_SIDE_PROCESSORS)
    return family in SHORTER_SIDE_FAMILIES


def read_processor(d: Mapping[str, Any], where: str, size: int | None = None,
                   family: str | None = None) -> tuple[Preprocessing, dict[str, Any]]:
    """``preprocessor_config.json`` -> (the member's Preprocessing, the processor summary kept in
    its config: ``resize`` (pixels), ``resize_mode`` (``square`` or ``shortest_edge``), ``crop``
    (pixels, 0 for none) and ``interpolation``). ``size`` overrides the final input size; resize
    and crop scale with it."""
    if "auto_map" in d:
        raise ConfigError(f"{where}: 'auto_map' asks for a custom image processor; expertise never runs code from a model folder")
    unknown = sorted(k for k in d if k not in _PROCESSOR_KEYS and k not in _PROCESSOR_INERT)
    if unknown:
        raise ConfigError(f"{where}: unknown image processor key(s) {', '.join(map(repr, unknown[:5]))}; expertise "
                          f"reproduces only {', '.join(sorted(_PROCESSOR_KEYS))}")
    flag = lambda k, default=True: schema.boolean(d.get(k, default), f"{where}.{k}")  # noqa: E731
    if not flag("do_resize"):
        raise ConfigError(f"{where}: do_resize is false; a pool member needs a fixed input size")
    if "size" not in d:
        raise ConfigError(f"{where}: missing 'size' (the input size of the model)")
    mode, h, w = _edge(d["size"], f"{where}.size")
    if mode == "square" and h == w and isinstance(d["size"], int) and _shorter_side(d, family):
        mode = "shortest_edge"
    crop = 0
    crop_pct = d.get("crop_pct")
    if flag("do_center_crop", False):
        if "crop_size" not in d:
            raise ConfigError(f"{where}: do_center_crop without crop_size")
        _, ch, cw = _edge(d["crop_size"], f"{where}.crop_size")
        if ch != cw:
            raise ConfigError(f"{where}.crop_size: a {ch}x{cw} crop is not square; pool members take square inputs")
        crop = ch
    elif crop_pct is not None and mode == "shortest_edge":
        # ConvNeXt's processor: below 384 px the shorter side is resized to size/crop_pct and the
        # centre size x size cropped; from 384 px on, the image is resized to size x size
        pct = schema.number(crop_pct, f"{where}.crop_pct", 0.0, 1.0, lo_open=True)
        if h < 384:
            crop, h = h, int(h / pct)
        else:
            mode = "square"
        w = h
    if mode == "shortest_edge" and not crop:
        raise ConfigError(f"{where}: resizes the shorter side without a crop, so inputs would not be square; "
                          "pool members take square inputs")
    if mode == "square" and h != w:
        raise ConfigError(f"{where}.size: {h}x{w} is not square; pool members take square inputs")
    resample = schema.integer(d.get("resample", 2), f"{where}.resample", 0, 5)
    final = crop or h
    factor = schema.number(d.get("rescale_factor", 1 / 255), f"{where}.rescale_factor", 0.0, 1.0, lo_open=True) \
        if flag("do_rescale") else 1.0
    if flag("do_normalize"):
        mean = schema.number_list(d.get("image_mean"), f"{where}.image_mean", -10.0, 10.0, 3)
        std = schema.number_list(d.get("image_std"), f"{where}.image_std", 0.0, 10.0, 3, lo_open=True)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    # prepare() scales uint8 by 1/255 before normalising: (x * factor - m) / s == (x / 255 - m') / s'
    scale = 255.0 * factor
    if size is not None:
        schema.integer(size, "size", 8, MAX_INPUT_SIZE)
        h, crop = round(h * size / final), (size if crop else 0)
        final = size
    prep = Preprocessing(final, tuple(m / scale for m in mean), tuple(s / scale for s in std),  # type: ignore[arg-type]
                         h, "square" if mode == "square" else "shortest", TORCH_RESAMPLE[resample], "transformers")
    Preprocessing.from_json(prep.to_json(), where)  # the same bounds as any stored member
    return prep, {"resize": h, "resize_mode": mode, "crop": crop, "interpolation": RESAMPLE[resample]}


def check_processor_summary(d: Any, where: str) -> dict[str, Any]:
    """A stored member config's ``processor`` summary, checked."""
    d = schema.obj(d, where)
    schema.keys(d, where, ("resize", "resize_mode", "crop", "interpolation"))
    return {"resize": schema.integer(d["resize"], f"{where}.resize", 1, MAX_INPUT_SIZE),
            "resize_mode": schema.string(d["resize_mode"], f"{where}.resize_mode", choices=("square", "shortest_edge")),
            "crop": schema.integer(d["crop"], f"{where}.crop", 0, MAX_INPUT_SIZE),
            "interpolation": schema.string(d["interpolation"], f"{where}.interpolation", choices=tuple(RESAMPLE.values()))}
