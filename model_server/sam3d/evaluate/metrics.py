"""Dice and normalised surface Dice (NSD) of one binary prediction, through MONAI's metrics."""

from __future__ import annotations

from typing import Sequence

import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_surface_dice

NSD_TOLERANCE_MM = 5.0  # the paper's NSD tolerance


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    """bool [D, H, W] -> float [1, 2, D, H, W] (background, foreground), as MONAI's metrics take."""
    foreground = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    return torch.stack([~foreground, foreground])[None].float()


def dice_and_nsd(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float],
                 tolerance_mm: float = NSD_TOLERANCE_MM) -> tuple[float, float]:
    """Foreground Dice and NSD (MONAI ``compute_dice`` / ``compute_surface_dice``, surface
    distances in mm from ``spacing``, kji) of a bool prediction against a non-empty bool target.
    An empty prediction scores 0 for both."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
    if not target.any():
        raise ValueError("the target is empty: Dice and NSD need a target with foreground voxels")
    if not pred.any():
        return 0.0, 0.0
    # Both metrics only see the box around prediction and target (plus one voxel, so no surface
    # touches a cut face): the same numbers as on the whole volume, at a fraction of the cost.
    box = _joint_box(pred, target)
    y_pred, y = _one_hot(pred[box]), _one_hot(target[box])
    dice = compute_dice(y_pred, y, include_background=False)
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        nsd = compute_surface_dice(y_pred, y, class_thresholds=[float(tolerance_mm)],
                                   include_background=False, spacing=[float(s) for s in spacing])
    return float(dice.item()), float(nsd.item())


def _joint_box(pred: np.ndarray, target: np.ndarray) -> tuple[slice, slice, slice]:
    either = pred | target
    box = []
    for axis in range(3):
        hits = np.flatnonzero(either.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, either.shape[axis])))
    return tuple(box)
