"""Dice and normalised surface Dice (NSD) of a case's result against its reference, with MONAI."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_surface_dice

DEFAULT_NSD_TOLERANCE_MM = 2.0


def dice_and_nsd(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> tuple[float, float]:
    """(Dice, NSD at ``tolerance_mm``) of two boolean kji masks on the same grid (``spacing`` in
    kji order). Both empty scores 1, one empty scores 0."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    if not prediction.any() or not reference.any():
        score = float(prediction.any() == reference.any())
        return score, score
    # Only the box around both masks (plus one background voxel) matters for either score.
    both = np.argwhere(prediction | reference)
    lo = np.maximum(both.min(axis=0) - 1, 0)
    hi = np.minimum(both.max(axis=0) + 2, prediction.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    y_pred, y = _one_hot(prediction[box]), _one_hot(reference[box])
    dice = compute_dice(y_pred, y, include_background=False)
    with warnings.catch_warnings():  # MONAI's own internal call of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        nsd = compute_surface_dice(y_pred, y, class_thresholds=[float(tolerance_mm)],
                                   include_background=False, spacing=[float(s) for s in spacing])
    return float(dice.item()), float(nsd.item())


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    """Boolean [K, J, I] -> float [1, 2, K, J, I] (background, foreground)."""
    foreground = torch.from_numpy(np.ascontiguousarray(mask)).float()
    return torch.stack([1.0 - foreground, foreground])[None]
