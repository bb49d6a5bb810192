"""A positive click that no pathway answers still changes the mask.

Every pathway can leave a positive click outside the mask: the 2D pathway refuses a click its
widened box's answer does not hold (a box's object has no box-search fallback), and the 3D model
then answers a lesion it does not see, or a layer on the mask's rim, with nothing at the click.
In the protocol on the development sets a user's click then changed nothing, and the same click
came back: synthetic 93's synth_003 three times, real MRI brain1 twice (docs/BENCHMARKS.md, "A
positive click that no pathway answers"). Most of these clicks sit in a thin layer the mask
misses along its rim.

``region_at_click`` answers such a click from the image alone, as the subtle-lesion rule answers
a click on a lesion's rim (``subtle_extent.add_at_positive_click``): on the image smoothed by
``SMOOTH_MM``, the lesion's level is the median of the object's mask within ``LEVEL_READ_MM`` of
the click, its spread the robust standard deviation there; the click adds the voxels within
``negative_clicks.RIM_REACH_MM`` of it, connected to it, whose level lies between the clicked
voxel's and the lesion's, or within a spread of the lesion's: on a rim click's side of the
lesion, the voxels at least as lesion-like as what the user clicked; on a click that reads as the
lesion, the voxels that read as it too. Voxels nearer one of
the object's negative clicks than this click are left out: a click never takes back what a
negative click removed. Where the mask holds fewer than ``MIN_LEVEL_VOXELS`` near the click, the
level is the click's own (its 5 x 5 x 3 voxels).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data.clicks import label_objects
from .crops import Box, box_slices, clamp_box
from .negative_clicks import RIM_REACH_MM, nearer_than_all, squared_distance_mm
from .subtle_extent import MIN_LEVEL_VOXELS, SMOOTH_MM, around_click, robust_std, smoothed_image

LEVEL_READ_MM = 8.0  # the lesion's level is read on the object's mask within this distance of the click


def region_at_click(volume: np.ndarray, spacing: Sequence[float], mask: np.ndarray, index: tuple[int, int, int],
                    negatives: np.ndarray) -> tuple[Box, np.ndarray]:
    """(window box of the volume, bool array over it) the voxels a positive click at voxel
    ``index`` (kji) adds to ``mask`` (bool, the volume's shape; the object's mask without the
    click): see the module's docstring. ``negatives``: the object's negative clicks, kji (n x 3).
    The array holds the clicked voxel whatever the image reads."""
    reach = max(LEVEL_READ_MM, RIM_REACH_MM) + 3 * SMOOTH_MM  # and the smoothing's 3 sigma (the rest weighs < 0.3 %)
    half = np.ceil(reach / np.asarray(spacing, dtype=float)).astype(int)
    window = clamp_box(np.asarray(index) - half, np.asarray(index) + half + 1, volume.shape)
    lo = np.asarray(window[0])
    smoothed = smoothed_image(volume[box_slices(window)], spacing)
    near_mask = mask[box_slices(window)]
    click = tuple(int(c) for c in np.asarray(index) - lo)
    from_click = squared_distance_mm(smoothed.shape, click, spacing)
    lesion_voxels = smoothed[near_mask & (from_click <= LEVEL_READ_MM ** 2)]
    if lesion_voxels.size < MIN_LEVEL_VOXELS:
        lesion_voxels = around_click(smoothed, click)
    lesion, spread = float(np.median(lesion_voxels)), robust_std(lesion_voxels)
    clicked = float(smoothed[click])
    low, high = min(clicked, lesion - spread), max(clicked, lesion + spread)
    candidate = (smoothed >= low) & (smoothed <= high) & (from_click <= RIM_REACH_MM ** 2)
    candidate &= nearer_than_all(smoothed.shape, click, np.asarray(negatives, dtype=float).reshape(-1, 3) - lo, spacing)
    candidate[click] = True
    components, _ = label_objects(candidate)
    return window, components == components[click]
