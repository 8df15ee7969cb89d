"""Classify new images with a kept fine-tuned model (``expertise predict``).

Images are read exactly as the task's images were for training: any Pillow mode converted to RGB
(transparency over white, 16-bit gray scaled), EXIF orientation applied, then kept at its own size
with the longer side capped at the folder's ``max_side`` (a model tuned on an ImageFolder task), or
the whole image resized to the folder's ``input_resolution`` (:func:`expertise.data.loaders.read_image`); the model's
own preprocessing (resize, crop, normalise) then runs inside the one forward path (:func:`expertise.models.forward.forward_batches`).
Probabilities are the softmax of the task head's logits, in float64.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from expertise.data.loaders import IMAGE_EXTENSIONS, _image_files, read_image
from expertise.data.ragged import stack_images
from expertise.errors import ConfigError, DataError
from expertise.io import atomic_write_text
from expertise.models.forward import forward_batches
from expertise.transfer.saved import SavedModel

FORMATS = (".csv", ".json")


@dataclass(frozen=True)
class Prediction:
    """One image's top classes, best first: (label, probability) pairs."""

    path: str
    top: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]


def image_files(paths: Sequence[Path]) -> list[Path]:
    """The images named by ``paths``: a file as given, a folder searched recursively (sorted; hidden
    files and folders and other extensions ignored, as the ImageFolder loader does)."""
    if not paths:
        raise DataError("no images given; pass --images FILE or --images FOLDER (repeat for more)")
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = _image_files(p)
            if not files:
                raise DataError(f"no image files under {p}; supported extensions: {' '.join(IMAGE_EXTENSIONS)}")
            found += files
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"no such file or folder {p}; pass image files or folders of images")
    return found


def predict(saved: SavedModel, files: Sequence[Path], top_k: int = 1, device: torch.device = torch.device("cpu"),
            batch_size: int = 256, skip_corrupt: bool = False) -> list[Prediction]:
    """The ``top_k`` classes of each image file, read ``batch_size`` files at a time (the model's
    float copy of a batch is all that sits in memory). An unreadable file raises a DataError naming
    it, or with ``skip_corrupt`` is left out with one warning listing the skipped files."""
    n_classes = len(saved.classes)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_classes:
        raise ConfigError(f"--top-k must be between 1 and the model's {n_classes} classes, got {top_k!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    out: list[Prediction] = []
    skipped: list[Path] = []
    for i in range(0, len(files), batch_size):
        chunk, arrays = [], []
        for f in files[i:i + batch_size]:
            try:
                arrays.append(read_image(f, None if saved.max_side else saved.input_resolution, saved.max_side or 0))
            except DataError:
                if not skip_corrupt:
                    raise
                skipped.append(f)
                continue
            chunk.append(f)
        if not arrays:
            continue
        images = stack_images(arrays)
        logits = forward_batches(saved.model, images, ("logits",), batch_size, device)["logits"]
        probs = torch.softmax(logits.to(torch.float64), dim=1)
        values, indices = probs.topk(top_k, dim=1)
        for f, vs, ix in zip(chunk, values.tolist(), indices.tolist()):
            out.append(Prediction(str(f), tuple((saved.classes[j], float(v)) for v, j in zip(vs, ix))))
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s): {shown}", stacklevel=2)
    if not out:
        raise DataError(f"none of the {len(files)} image file(s) could be read; check that they are images")
    return out


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one that begins like a formula (OWASP's CSV injection
    rule: ``=``, ``+``, ``-``, ``@``, tab, carriage return) gets a leading apostrophe. Class names
    and paths come from other people's files."""
    return "'" + text if text.startswith(FORMULA_START) else text


def to_csv(predictions: Sequence[Prediction], top_k: int) -> str:
    """``path,label,probability`` and, for ``top_k`` > 1, ``label_2,probability_2`` ... ``label_k,probability_k``;
    text cells escaped for spreadsheets (:func:`cell`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "probability", *[f"{c}_{k}" for k in range(2, top_k + 1) for c in ("label", "probability")]])
    for p in predictions:
        w.writerow([cell(p.path), *[x for label, prob in p.top for x in (cell(label), f"{prob:.6f}")]])
    return buf.getvalue()


def to_json(predictions: Sequence[Prediction], saved: SavedModel) -> dict[str, Any]:
    return {"model": str(saved.path), "weights_sha256": saved.weights_sha256, "member": saved.member, "task": saved.task,
            "classes": list(saved.classes),
            "predictions": [{"path": p.path, "label": p.label, "probability": p.probability,
                             "top_k": [{"label": label, "probability": prob} for label, prob in p.top]} for p in predictions]}


def output_format(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out {path}: the file name must end in .csv or .json (that picks the format)")
    return suffix


def write_predictions(path: Path, predictions: Sequence[Prediction], saved: SavedModel, top_k: int) -> None:
    """CSV or JSON by ``path``'s extension, written atomically."""
    if output_format(path) == ".csv":
        atomic_write_text(path, to_csv(predictions, top_k))
    else:
        atomic_write_text(path, json.dumps(to_json(predictions, saved), indent=2) + "\n")
