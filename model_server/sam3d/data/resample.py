"""Whole-volume resampling with SimpleITK: to a new spacing, or onto another volume's grid.

Used for dataset preprocessing and for evaluating on the native grid. The per-click crop
resampling is the engine's (``sam3d.engine``), done on the device with torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .io import Volume

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def resample_volume(
    volume: Volume,
    spacing_kji: Sequence[float],
    interpolator: str = "auto",
    default_value: float | None = None,
) -> Volume:
    """Resample ``volume`` to ``spacing_kji`` (mm), keeping its origin, direction and extent.

    The new size along each axis is round(old size * old spacing / new spacing).
    """
    spacing_kji = tuple(float(s) for s in spacing_kji)
    if len(spacing_kji) != 3 or min(spacing_kji) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers (k, j, i), got {spacing_kji}")
    size_kji = [
        max(1, int(round(n * old / new))) for n, old, new in zip(volume.shape, volume.spacing, spacing_kji)
    ]
    grid = Volume(np.zeros(size_kji, dtype=np.uint8), spacing_kji, volume.origin, volume.direction)
    return resample_to_reference(volume, grid, interpolator, default_value)


def resample_to_reference(
    volume: Volume,
    reference: Volume,
    interpolator: str = "auto",
    default_value: float | None = None,
) -> Volume:
    """Resample ``volume`` onto the grid of ``reference`` (matched through physical LPS space).

    ``interpolator``: "linear", "nearest", "bspline", or "auto" = nearest for bool / integer
    label arrays (bool, uint8) and linear for everything else. ``default_value`` fills voxels
    outside ``volume``; by default the minimum of ``volume`` (air for CT, 0 for masks). The
    result keeps the dtype of ``volume``.
    """
    if interpolator == "auto":
        interpolator = "nearest" if volume.array.dtype in (np.bool_, np.uint8) else "linear"
    if interpolator not in INTERPOLATORS:
        raise ValueError(f"unknown interpolator {interpolator!r}; choose one of auto, {', '.join(INTERPOLATORS)}")
    if default_value is None:
        default_value = float(volume.array.min()) if volume.array.size else 0.0
    dtype = volume.array.dtype
    # Interpolate integer and bool arrays in float, then round / threshold at 0.5 (ITK would
    # truncate).
    interpolates = interpolator != "nearest"
    source = volume.with_array(volume.array.astype(np.float32)) if interpolates else volume
    resampled = sitk.Resample(
        source.to_sitk(),
        reference.to_sitk(),
        sitk.Transform(),
        INTERPOLATORS[interpolator],
        float(default_value),
    )
    array = sitk.GetArrayFromImage(resampled)
    if interpolates and dtype == np.bool_:
        array = array >= 0.5
    elif interpolates and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max)
    return reference.with_array(array.astype(dtype, copy=False))
