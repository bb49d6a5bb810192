"""The crop scale of a new object: a small object's first click is answered again on a finer crop.

The 3D model sees a fixed number of crop voxels (64^3 at 1.5 mm for the lite model). A nodule of
8-18 mm fills only a few of them, and its edge falls between voxels; on a crop of two thirds
that spacing the same nodule is 1.5 times as large, as the model's training zoom also shows
objects. Larger objects lose on such a crop (it holds less of them and of their surroundings),
and so do lesions the finer crop does not see as the same object. So a new object's first click
is answered on the model's own crop first; where that mask is small (``SMALL_OBJECT_MM``), it is
answered again on the finer crop, and the finer answer is kept where the two agree
(``SCALE_AGREEMENT``): the same object, drawn more closely. The object's later clicks use the
scale its first click kept. Chosen on development data (docs/BENCHMARKS.md, "A finer crop for
small objects").
"""

from __future__ import annotations

import math

import numpy as np

FINE_SCALE = 2 / 3  # the finer crop's spacing, as a fraction of the model's own
SMALL_OBJECT_MM = 20.0  # equivalent-sphere diameter below which a first click's mask is tried finer
SCALE_AGREEMENT = 0.7  # Dice between the two answers at or above which the finer one is kept


def fine_spacing_mm(model_spacing_mm: float) -> float:
    """The finer crop's spacing for a model trained on crops of ``model_spacing_mm``."""
    return round(model_spacing_mm * FINE_SCALE, 4)


def equivalent_diameter_mm(voxels: int, spacing) -> float:
    """The diameter (mm) of the sphere with the volume of ``voxels`` voxels of ``spacing``."""
    volume_mm3 = float(voxels) * float(np.prod(spacing))
    return (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)


def is_small(voxels: int, spacing) -> bool:
    """Whether a first click's mask of ``voxels`` voxels is worth answering on the finer crop
    (an empty mask is not: there is no object to draw more closely)."""
    return voxels > 0 and equivalent_diameter_mm(voxels, spacing) < SMALL_OBJECT_MM


def agree(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two masks of one region are the same object (Dice >= ``SCALE_AGREEMENT``)."""
    total = int(first.sum()) + int(second.sum())
    return total > 0 and 2.0 * int(np.logical_and(first, second).sum()) / total >= SCALE_AGREEMENT
