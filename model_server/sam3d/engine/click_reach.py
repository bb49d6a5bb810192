"""How far a correction click's answer may reach: a click alone marks an error about its own size.

The protocol, and a user, click in the middle of what is wrong: a negative click inside what
should go, a positive one inside what is missing. The pathways' answers can reach far past that
error - a 2D cut for a false rim voxel that takes a nodule's core (chest dev2 chest_010, Dice
0.97 -> 0.76), a 3D answer to a positive click beside a 49-voxel lesion that adds 262 voxels of
its surroundings (synth93 synth_006, 0.70 -> 0.21). For an interaction of clicks of one kind on
an object that has a mask:
- negative clicks alone add nothing, and remove only voxels no deeper inside the mask (mm to its
  nearest outside voxel) than ``DEPTH_FACTOR`` times the deepest clicked voxel
  (``removed_no_deeper_than_clicks``): a leak clicked in its middle goes whole; a click outside
  the mask removes nothing;
- positive clicks alone remove nothing, and add only voxels no farther from the mask than
  ``REACH_FACTOR`` times the farthest click (at least ``MIN_REACH_MM``:
  ``added_no_farther_than_clicks``): a missed part clicked in its middle comes whole.
Chosen on development data (docs/BENCHMARKS.md, "How far a correction click's answer may reach").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .crops import Box, box_slices, tight_box
from .positive_clicks import clicks_inside

DEPTH_FACTOR = 1.0  # chosen over 0.5, 1.5 and 2
REACH_FACTOR = 2.0  # chosen over 1, 1.5 and 3
MIN_REACH_MM = 2.0  # a positive click on the mask's edge may still add this rim
MAX_READ_MM = 30.0  # a click's depth or distance is read this far around it: one farther counts as this far


def removed_no_deeper_than_clicks(mask: np.ndarray, box: Box, answer: np.ndarray, points: np.ndarray,
                                  labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """An answer to negative clicks alone (``answer``, bool, inside ``box`` of the volume-sized
    ``mask``, the object's mask before them) kept to what they mark: nothing added, and of what it
    removed only the voxels no deeper inside ``mask`` than ``DEPTH_FACTOR`` times the deepest
    negative click. ``points``: kji in the volume."""
    before = mask[box_slices(box)]
    kept = answer & before
    removed = before & ~kept
    if not removed.any():
        return kept
    deepest = max((_distance_at(mask, index, spacing, inside=True)
                   for _, index in clicks_inside(points, labels, 0, mask.shape)), default=0.0)
    return kept | (removed & ~_within(mask, removed, box, DEPTH_FACTOR * deepest, spacing, inside=True))


def added_no_farther_than_clicks(mask: np.ndarray, box: Box, answer: np.ndarray, points: np.ndarray,
                                 labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """An answer to positive clicks alone (as ``removed_no_deeper_than_clicks``) kept to what they
    mark: nothing removed, and of what it added only the voxels no farther from ``mask`` than
    ``REACH_FACTOR`` times the farthest positive click, and ``MIN_REACH_MM``."""
    before = mask[box_slices(box)]
    added = answer & ~before
    if not added.any():
        return before
    farthest = max((_distance_at(mask, index, spacing, inside=False)
                    for _, index in clicks_inside(points, labels, 1, mask.shape)), default=0.0)
    reach = max(REACH_FACTOR * farthest, MIN_REACH_MM)
    return before | _within(mask, added, box, reach, spacing, inside=False)


def _within(mask: np.ndarray, voxels: np.ndarray, box: Box, limit_mm: float, spacing: Sequence[float],
            inside: bool) -> np.ndarray:
    """Of ``voxels`` (bool, inside ``box``), those no farther than ``limit_mm`` from the mask's edge:
    its depth inside the mask (``inside``), else its distance from the mask. Read on the voxels'
    own box grown by the limit, which holds every edge voxel that near."""
    found = tight_box(voxels)
    if found is None:
        return voxels
    pad = [int(np.ceil(limit_mm / s)) + 1 for s in spacing]
    lo = [max(0, b + f - p) for b, f, p in zip(box[0], found[0], pad)]
    hi = [min(n, b + f + p) for b, f, p, n in zip(box[0], found[1], pad, mask.shape)]
    distance = _distance_mm(mask[box_slices((lo, hi))], spacing, inside)
    in_volume: Box = (tuple(b + f for b, f in zip(box[0], found[0])), tuple(b + f for b, f in zip(box[0], found[1])))
    near = np.zeros_like(voxels)
    near[box_slices(found)] = distance[box_slices(in_volume, origin=lo)] <= limit_mm
    return voxels & near


def _distance_at(mask: np.ndarray, index: tuple[int, ...], spacing: Sequence[float], inside: bool) -> float:
    """Voxel ``index``'s depth inside ``mask`` (``inside``; 0 outside it) or distance from it (0
    inside it), in mm, read within ``MAX_READ_MM`` of it (about that much where farther)."""
    if bool(mask[index]) != inside:
        return 0.0
    lo = [max(0, i - int(np.ceil(MAX_READ_MM / s))) for i, s in zip(index, spacing)]
    hi = [min(n, i + int(np.ceil(MAX_READ_MM / s)) + 1) for i, s, n in zip(index, spacing, mask.shape)]
    distance = _distance_mm(mask[box_slices((lo, hi))], spacing, inside)
    return min(float(distance[tuple(i - a for i, a in zip(index, lo))]), MAX_READ_MM)


def _distance_mm(window: np.ndarray, spacing: Sequence[float], inside: bool) -> np.ndarray:
    """Each voxel's distance (mm) to the mask's edge: for voxels inside the mask ``window`` to its
    nearest outside voxel (``inside``; the window's border counts as outside), else for voxels
    outside it to its nearest mask voxel (the border counts as no mask; inf where the window
    holds none)."""
    region = window if inside else ~window
    if not inside and region.all():
        return np.full(window.shape, np.inf)
    padded = np.pad(region, 1, constant_values=not inside)
    return ndimage.distance_transform_edt(padded, sampling=[float(s) for s in spacing])[(slice(1, -1),) * window.ndim]
