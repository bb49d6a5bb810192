"""Negative clicks the 3D model does not honour.

The 3D model's answer to a negative click often still holds the clicked voxel: on a small nodule
whose mask runs onto the slices beside it, four negative clicks each took 5-10 % of the mask
(docs/BENCHMARKS.md, "Negative clicks the 3D model does not honour"). Where its mask still holds
a negative click, ``honour_negative_clicks`` removes the part of the mask the model is no surer
of than of the clicked voxel, connected to the click, and only where it lies nearer that click
than every positive click - the rule the 2D pathway's negative clicks keep on their slice
(``slice_pathway.correct_slice_by_slice``): a negative click never takes the region around a
positive one, even when the model is less sure there. A click in the mask's outer part
(``on_rim``) whose marked part is a thin layer corrects the mask's rim: it removes only what lies
within ``RIM_REACH_MM`` of it, so the lesion's rim beyond a few false positives stays; a lobe the
model doubts goes whole (docs/BENCHMARKS.md, "The 3D model's negative click kept to what it
marks").

The 2D pathway's own cut can take too much: on chest dev2's chest_005 one negative click took
158 of the tumour's voxels on its slice. ``spare_believed_voxels`` gives back what such a cut
removed where the 3D model believes it clearly more than the clicked voxel (docs/BENCHMARKS.md,
"A negative click's 2D cut spared where the 3D model believes the tumour").

``beyond_neck`` splits a mask at a neck between a negative click and the positive ones: the
subtle-lesion rule's cut for a click deep in a wrong region (``subtle_extent.cut_at_negative_click``)
runs there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..data.clicks import label_objects
from .crops import tight_box
from .positive_clicks import clicks_inside

# a 2D cut gives back what the model believes more than this many times the clicked voxel (and
# at 0.5 at least); chosen on development data over 2 and 3 (docs/BENCHMARKS.md)
SPARE_FACTOR = 1.5
# a neck between two basins of a mask's depth: at least this much shallower (mm) than the shallower
# basin's deepest voxel (0.5, 1 and 2 tried on development data: docs/BENCHMARKS.md, "A subtle
# lesion's negative click kept to what it marks")
NECK_MM = 0.5
# a click on a mask's rim reaches no farther than this (mm): a negative one removes, a positive one
# on a subtle lesion adds (``subtle_extent``)
RIM_REACH_MM = 4.0
# a negative click deeper in the mask than this part of its deepest voxel marks a wrong region, not
# the mask's rim (subtle lesions of the development sets: 0.06-0.40 on a lesion's rim, 0.69-0.89 in
# leaks into tissue of the lesion's level; docs/BENCHMARKS.md, "A subtle lesion's negative click
# kept to what it marks")
DEEP_CLICK_FRACTION = 0.5
# what a negative click on the 3D model's mask marks is a layer at the rim where none of it lies this
# far (mm) from its edge, else a lobe the model doubts (development cases: 0.8-2.3 where the part
# held much of the lesion's rim, 2.8-3.7 on lobes of false positives; docs/BENCHMARKS.md, "The 3D
# model's negative click kept to what it marks")
RIM_LAYER_MM = 2.5


def honour_negative_clicks(probability: np.ndarray, mask: np.ndarray, points: np.ndarray, labels: np.ndarray,
                           spacing: Sequence[float]) -> np.ndarray:
    """``mask`` (the 3D model's answer, bool) without what each negative click in it marks: the
    voxels the model is no surer of than of the clicked voxel, nearer it than every positive
    click, connected to it; where the click lies on the mask's rim (``on_rim``) and those voxels
    form a layer (``_is_layer``), only those within ``RIM_REACH_MM`` of it.

    ``probability``: the model's foreground probability on the mask's grid, negative where no
    crop covers a voxel (there the mask is the object's previous one and nothing is removed);
    ``points``: kji of all the object's clicks relative to the arrays, ``labels`` 1 / 0;
    ``spacing``: mm per axis, for "nearer" and for the rim's reach. Clicks outside the arrays are
    ignored."""
    result = mask.copy()
    positives = np.asarray(points, dtype=float)[np.asarray(labels) == 1]
    for point, index in clicks_inside(points, labels, 0, mask.shape):
        if not result[index] or probability[index] < 0:
            continue
        doubtful = result & (probability >= 0) & (probability <= probability[index])
        lo, hi = tight_box(doubtful)  # the click is in it: never None
        window = tuple(slice(a, b) for a, b in zip(lo, hi))
        part = doubtful[window] & nearer_than_all(doubtful[window].shape, np.asarray(point, dtype=float) - lo,
                                                   positives - lo, spacing)
        local = tuple(c - a for c, a in zip(index, lo))
        marked = _clicked_part(part, local)
        if marked is not None and on_rim(result, index, spacing) and _is_layer(marked, spacing):
            marked = _clicked_part(marked & (squared_distance_mm(marked.shape, local, spacing) <= RIM_REACH_MM ** 2),
                                   local)
        if marked is not None:
            result[window][marked] = False
    return result


def _clicked_part(part: np.ndarray, index: tuple[int, ...]) -> np.ndarray | None:
    """The connected component of ``part`` (bool) that holds the voxel at ``index``, or None."""
    components, _ = label_objects(part)
    clicked = components[index]
    return components == clicked if clicked else None


def _is_layer(part: np.ndarray, spacing: Sequence[float]) -> bool:
    """Whether ``part`` (bool) is a layer, not a lobe: no voxel of it lies ``RIM_LAYER_MM`` or
    more from its edge."""
    return bool(ndimage.distance_transform_edt(np.pad(part, 1), sampling=spacing).max() < RIM_LAYER_MM)


def spare_believed_voxels(probability: np.ndarray, before: np.ndarray, after: np.ndarray, points: np.ndarray,
                          labels: np.ndarray) -> np.ndarray:
    """``after`` (the 2D pathway's answer, bool) with what it removed from ``before`` (the
    object's mask before the clicks) given back where the 3D model's probability exceeds
    ``SPARE_FACTOR`` times its probability at each negative click the answer removed, and 0.5.

    ``probability``: on the same grid, negative where no crop covers a voxel (nothing is given
    back there); ``points``: kji of the object's clicks relative to the arrays, ``labels`` 1 / 0.
    Apply only where ``positive_clicks.agreement(probability, before) >= MIN_AGREEMENT``. Nothing
    is given back where no crop covers the clicks the answer removed."""
    levels = [max(0.5, SPARE_FACTOR * float(probability[index]))
              for _, index in clicks_inside(points, labels, 0, before.shape)
              if before[index] and not after[index] and probability[index] >= 0]
    if not levels:
        return after
    return after | (before & ~after & (probability > max(levels)))


def nearer_than_all(shape: Sequence[int], negative: np.ndarray, positives: np.ndarray,
                     spacing: Sequence[float]) -> np.ndarray:
    """The voxels of an array of ``shape`` nearer (in mm) the ``negative`` click than every one of
    ``positives`` (all of them when there is none); clicks in the array's kji coordinates."""
    to_negative = squared_distance_mm(shape, negative, spacing)
    nearer = np.ones(tuple(shape), dtype=bool)
    for positive in positives:
        nearer &= to_negative < squared_distance_mm(shape, positive, spacing)
    return nearer


def beyond_neck(mask: np.ndarray, negative: tuple[int, int, int], positives: np.ndarray,
                spacing: Sequence[float]) -> np.ndarray | None:
    """``mask`` (bool) without the basins that hold ``positives`` (kji, n x 3; those in
    ``mask``), where a ``negative`` click (its kji index, inside ``mask``) lies in another basin;
    None where it shares one with a positive click (no neck lies between them) or no positive
    click lies in ``mask``. Basins: the
    mask's depth (distance from its edge, mm) split at its necks by SimpleITK's morphological
    watershed (face-connected; basins whose neck is less than ``NECK_MM`` shallower than the
    shallower basin's deepest voxel merged). A structure joined to the lesion by a neck is its own
    basin; a lesion without one is a single basin."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in reversed(spacing)])
    depth = sitk.SignedMaurerDistanceMap(image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    relief = sitk.GetImageFromArray(-np.where(mask, sitk.GetArrayViewFromImage(depth), 0).astype(np.float32))
    basins = sitk.GetArrayFromImage(sitk.MorphologicalWatershed(relief, level=NECK_MM, markWatershedLine=False,
                                                                fullyConnected=False))
    held = [int(basins[index]) for _, index in clicks_inside(positives, np.ones(len(positives)), 1, mask.shape)
            if mask[index]]
    if not held or basins[negative] in held:
        return None
    return mask & ~np.isin(basins, held)


def on_rim(mask: np.ndarray, index: tuple[int, int, int], spacing: Sequence[float]) -> bool:
    """Whether the voxel at ``index`` (in ``mask``) lies in ``mask``'s outer part: its distance from
    the mask's edge (mm) at most ``DEEP_CLICK_FRACTION`` of the deepest voxel's. Read on the mask's
    box grown by one voxel."""
    lo, hi = tight_box(mask)
    lo = np.maximum(np.asarray(lo) - 1, 0)
    window = tuple(slice(a, min(b + 1, n)) for a, b, n in zip(lo, hi, mask.shape))
    depth = ndimage.distance_transform_edt(mask[window], sampling=spacing)
    return bool(depth[tuple(i - a for i, a in zip(index, lo))] <= DEEP_CLICK_FRACTION * depth.max())


def squared_distance_mm(shape: Sequence[int], point: Sequence[float], spacing: Sequence[float]) -> np.ndarray:
    """The squared distance (mm^2) of every voxel of an array of ``shape`` from ``point`` (kji in
    the array), as an array of ``shape`` (broadcast from one open grid per axis)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((axis - c) * float(s)) ** 2 for axis, c, s in zip(grid, point, spacing))
