"""Input checks shared by the proxies: one member's features and the task's labels, validated
with errors that name the member, as numpy (:func:`validate_features`) or as torch tensors on the
features' device (:func:`_tensors`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from expertise.errors import DataError


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def validate_features(features: Any, labels: Any, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Check one member's embeddings of a task and return them as (float64 [N, D], int64 [N]).

    Raises DataError, naming ``name``, when the features are not a finite 2-D numeric array, the
    labels are not N integers, or there are fewer than 2 samples or fewer than 2 classes.
    """
    x = _as_numpy(features)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: features must be numeric, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DataError(f"{name}: features must be 2-D [N, D], got shape {tuple(x.shape)}")
    x = x.astype(np.float64, copy=False)
    y = _as_numpy(labels)
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be 1-D [N], got shape {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{name}: {x.shape[0]} feature rows but {y.shape[0]} labels; embed exactly the labelled images")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y)))):
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if x.shape[0] < 2:
        raise DataError(f"{name}: need at least 2 samples to score, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise DataError(f"{name}: features have 0 dimensions")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(
            f"{name}: {int(bad.sum())} of {x.shape[0]} feature rows contain NaN or inf (first at row {int(np.argmax(bad))}); "
            "the model's embedding diverged or overflowed: re-create the member or embed in float32"
        )
    if np.unique(y).size < 2:
        raise DataError(f"{name}: labels hold a single class ({int(y[0])}); a task needs at least 2 classes to score")
    return x, y


def _tensors(features: Any, labels: Any, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated (features float64 [N, D], class codes int64 [N] in [0, C), one-hot float64 [N, C])
    as torch tensors on the features' device: a tensor on an accelerator stays there (checked in
    torch, with :func:`validate_features`' messages); anything else goes through that function."""
    if isinstance(features, torch.Tensor) and features.device.type != "cpu":
        x, y = _validate_on_device(features, labels, name)
    else:
        xn, yn = validate_features(features, labels, name)
        x, y = torch.from_numpy(xn), torch.from_numpy(yn)
    _, codes = torch.unique(y, return_inverse=True)
    onehot = torch.nn.functional.one_hot(codes, int(codes.max()) + 1).to(torch.float64)
    return x, codes, onehot


def _validate_on_device(features: torch.Tensor, labels: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`validate_features` for a tensor on an accelerator, without copying it to the host."""
    if features.is_complex() or features.dtype == torch.bool:
        raise DataError(f"{name}: features must be numeric, got dtype {features.dtype}")
    if features.ndim != 2:
        raise DataError(f"{name}: features must be 2-D [N, D], got shape {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    y = labels.detach().to(x.device) if isinstance(labels, torch.Tensor) else torch.as_tensor(_as_numpy(labels), device=x.device)
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be 1-D [N], got shape {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{name}: {x.shape[0]} feature rows but {y.shape[0]} labels; embed exactly the labelled images")
    if y.is_complex() or (y.is_floating_point() and not bool((torch.isfinite(y) & (y == torch.round(y))).all())):
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    y = y.to(torch.int64)
    if x.shape[0] < 2:
        raise DataError(f"{name}: need at least 2 samples to score, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise DataError(f"{name}: features have 0 dimensions")
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        raise DataError(
            f"{name}: {int(bad.sum())} of {x.shape[0]} feature rows contain NaN or inf (first at row {int(bad.long().argmax())}); "
            "the model's embedding diverged or overflowed: re-create the member or embed in float32"
        )
    if torch.unique(y).numel() < 2:
        raise DataError(f"{name}: labels hold a single class ({int(y[0])}); a task needs at least 2 classes to score")
    return x, y


def _one_hot(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes int64 [N] in [0, C), one-hot float64 [N, C]) of labels of any integer values."""
    classes, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    return codes, np.eye(classes.size)[codes]
