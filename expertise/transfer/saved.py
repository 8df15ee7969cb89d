"""A fine-tuned model kept on disk: what ``expertise finetune`` and ``expertise transfer`` write and
``expertise predict`` reads.

Layout of a model folder (format 1)::

    DIR/
      config.json         the member config the model is rebuilt from (model_from_config), as a
                          library stores its members: the class, the backbone, the task head's
                          number of classes (num_outputs, head_kind "task") and the preprocessing
      model.safetensors   the tuned weights (every tensor of the model's state dict)
      result.json         the run's record (records.py): test accuracy, its 95% Wilson interval,
                          the test-set size, the member, the task, the settings, the time
      model.json          written last: format, member, task, class names (in head order), the
                          resolution images were read at (or ``max_side``: read at their source
                          size, the longer side capped there) and the model's preprocessing, and
                          the sha256 of each of the three files above
      checkpoint.safetensors   only while a fine-tune into DIR is unfinished (expertise/checkpoint.py)

Reading checks everything before a tensor is allocated: the format, each field of ``model.json``
against its schema, every file's sha256, the config on the meta device, and the safetensors
header's tensor names and shapes against that config. Any failure is one :class:`ModelError`;
nothing is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from expertise import schema
from expertise import reading
from expertise.errors import ConfigError, ExpertiseError, LibraryError, ModelError
from expertise.io import atomic_save_safetensors, atomic_write_json, sha256_file
from expertise.library import checks
from expertise.library.admission import shareless_state_dict
from expertise.models import adapters, external  # noqa: F401  register AdapterExpert and ExternalModel
from expertise.models.backbones import MAX_INPUT_SIZE, MAX_OUTPUTS, Preprocessing, model_from_config

FORMAT = 1
KIND = "finetuned_model"
MANIFEST, CONFIG, WEIGHTS, RESULT = "model.json", "config.json", "model.safetensors", "result.json"
CHECKPOINT = "checkpoint.safetensors"
FILES = (CONFIG, WEIGHTS, RESULT)  # what model.json hashes
_SHA256_LEN = 64


@dataclass(frozen=True)
class SavedModel:
    """A loaded model folder: the tuned model (eval mode, CPU), its class names in head order, the
    resolution images are read at before the model's own ``preprocessing``, and where it came from."""

    path: Path
    model: nn.Module
    classes: tuple[str, ...]
    input_resolution: int
    preprocessing: Preprocessing
    member: str
    task: str
    weights_sha256: str
    max_side: int | None = None  # images read at their source size, the longer side capped here

    def result(self) -> dict[str, Any]:
        """The run's record (``result.json``), verified with the rest of the folder."""
        return reading.read_json(self.path / RESULT)


def save_model(folder: Path, model: nn.Module, classes: tuple[str, ...] | list[str], input_resolution: int,
               member: str, task: str, record: dict[str, Any], max_side: int | None = None) -> str:
    """Write ``model`` (a member after ``reset_head``, tuned) and its ``record`` into ``folder`` and
    return the weights' sha256. ``max_side``: the task's images were read at their source size,
    capped there (new images are read the same way), rather than at ``input_resolution``. Each file is written atomically and ``model.json`` last (and removed
    first), so an interrupted save leaves a folder that reads as incomplete, never a mix."""
    folder = Path(folder)
    config = model.member_config()  # type: ignore[operator]
    if config.get("head_kind") != "task" or config.get("num_outputs") != len(classes):
        raise ConfigError(f"only a model with a task head of {len(classes)} classes is saved as a fine-tuned model; "
                          f"this one has {config.get('num_outputs')} outputs ({config.get('head_kind')} head)")
    state = shareless_state_dict(model)
    (folder / MANIFEST).unlink(missing_ok=True)
    atomic_write_json(folder / CONFIG, config)
    atomic_save_safetensors(folder / WEIGHTS, state, metadata={"format": "pt", "member": member, "task": task})
    atomic_write_json(folder / RESULT, record)
    files = {f: sha256_file(folder / f) for f in FILES}
    atomic_write_json(folder / MANIFEST, {
        "format": FORMAT, "kind": KIND, "member": member, "task": task, "classes": list(classes),
        "input_resolution": int(input_resolution), "preprocessing": model.preprocessing.to_json(),  # type: ignore[operator]
        "files": files, **({} if max_side is None else {"max_side": int(max_side)}),
    })
    return files[WEIGHTS]


def has_saved_model(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def _fail(folder: Path, what: str) -> ModelError:
    return ModelError(f"{folder}: {what}")


def read_manifest(folder: Path) -> dict[str, Any]:
    """``model.json`` of ``folder``, checked field by field (its files are not hashed here)."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelError(f"no saved model at {folder}; pass a folder written by 'expertise finetune' or 'expertise transfer'")
    if not folder.is_dir():
        raise ModelError(f"{folder} is a file; pass the model folder (the one holding {MANIFEST})")
    f = folder / MANIFEST
    if not f.is_file():
        if (folder / CHECKPOINT).is_file():
            raise _fail(folder, "holds only the checkpoint of an unfinished fine-tune; run the same 'expertise finetune' "
                                "command again to finish it")
        raise _fail(folder, f"not a saved model (no {MANIFEST}); pass a folder written by 'expertise finetune' or 'expertise transfer'")
    if checks.outside(f, folder):
        raise _fail(folder, f"{MANIFEST} leads outside the folder (a symbolic link); copy the file into it")
    try:
        data = reading.read_json(f)
    except (OSError, ConfigError) as e:
        raise _fail(folder, f"{MANIFEST} cannot be read ({type(e).__name__}: {e}); fine-tune again") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise _fail(folder, f"{MANIFEST} is not a fine-tuned model's (needs kind {KIND!r}); fine-tune again")
    if data.get("format") != FORMAT:
        raise _fail(folder, f"saved in format {data.get('format')!r}; this version of expertise reads format {FORMAT}: "
                            "use the version that wrote it, or fine-tune again")
    where = f"{f}"
    try:
        schema.keys(data, where, ("format", "kind", "member", "task", "classes", "input_resolution", "preprocessing", "files"),
                    ("max_side",))
        classes = data["classes"]
        if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_OUTPUTS:
            raise ConfigError(f"{where}.classes: expected a list of at least 2 class names, got {str(classes)[:60]!r}")
        for i, c in enumerate(classes):
            schema.string(c, f"{where}.classes[{i}]")
        if len(set(classes)) != len(classes):
            raise ConfigError(f"{where}.classes: a class name appears twice")
        files = schema.obj(data["files"], f"{where}.files")
        schema.keys(files, f"{where}.files", FILES)
        for k, v in files.items():
            if not isinstance(v, str) or len(v) != _SHA256_LEN or any(ch not in "0123456789abcdef" for ch in v):
                raise ConfigError(f"{where}.files.{k}: expected a sha256 (64 hex digits), got {str(v)[:70]!r}")
        return {"member": schema.string(data["member"], f"{where}.member"), "task": schema.string(data["task"], f"{where}.task"),
                "classes": tuple(classes), "files": dict(files),
                "input_resolution": schema.integer(data["input_resolution"], f"{where}.input_resolution", 1, MAX_INPUT_SIZE),
                "preprocessing": Preprocessing.from_json(data["preprocessing"], f"{where}.preprocessing"),
                "max_side": None if data.get("max_side") is None else schema.integer(data["max_side"], f"{where}.max_side", 8, MAX_INPUT_SIZE)}
    except ConfigError as e:
        raise _fail(folder, f"malformed {MANIFEST} ({e}); fine-tune again") from None


def verify_files(folder: Path, files: dict[str, str]) -> None:
    """Every hashed file present, inside ``folder`` and matching its sha256."""
    for name, digest in files.items():
        f = folder / name
        if checks.outside(f, folder):
            raise _fail(folder, f"{name} leads outside the folder (a symbolic link); copy the file into it")
        if not f.is_file():
            raise _fail(folder, f"{name} is missing; restore the folder or fine-tune again")
        if sha256_file(f) != digest:
            raise _fail(folder, f"{name} was modified since it was saved (sha256 mismatch); restore the folder or fine-tune again")


def load_model(folder: Path) -> SavedModel:
    """The model saved in ``folder``, after every check of the module docstring; a ModelError
    (one line) otherwise."""
    folder = Path(folder)
    man = read_manifest(folder)
    verify_files(folder, man["files"])
    try:
        config = checks.read_config(folder / CONFIG)
        expected, dtypes = checks.expected_signature(config, folder / CONFIG)
        checks.match_shapes(man["member"], expected, checks.header_shapes(folder / WEIGHTS, man["member"]))
        checks.match_dtypes(man["member"], dtypes, checks.header_dtypes(folder / WEIGHTS, man["member"]))
    except LibraryError as e:
        raise _fail(folder, f"not a usable model ({e})") from None
    if config.get("head_kind") != "task" or config.get("num_outputs") != len(man["classes"]):
        raise _fail(folder, f"{CONFIG} has {config.get('num_outputs')!r} outputs ({config.get('head_kind')!r} head) but "
                            f"{MANIFEST} names {len(man['classes'])} classes; fine-tune again")
    try:
        if Preprocessing.from_json(config["preprocessing"], f"{CONFIG}.preprocessing") != man["preprocessing"]:
            raise ConfigError(f"{CONFIG} and {MANIFEST} disagree on the preprocessing")
        model = model_from_config(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    except (ExpertiseError, SafetensorError, OSError, RuntimeError, KeyError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise _fail(folder, f"not a usable model ({first}); fine-tune again") from None
    return SavedModel(folder, model.eval(), man["classes"], man["input_resolution"], man["preprocessing"],
                      man["member"], man["task"], man["files"][WEIGHTS], man["max_side"])
