"""Negative clicks the 3D model does not honour.

The 3D model's answer to a negative click often still holds the clicked voxel: on a small nodule
whose mask runs onto the slices beside it, four negative clicks each took 5-10 % of the mask
(docs/BENCHMARKS.md, "Negative clicks the 3D model does not honour"). Where its mask still holds
a negative click, ``honour_negative_clicks`` removes the part of the mask the model is no surer
of than of the clicked voxel, connected to the click, and only where it lies nearer that click
than every positive click - the rule the 2D pathway's negative clicks keep on their slice
(``slice_pathway.correct_slice_by_slice``): a negative click never takes the region around a
positive one, even when the model is less sure there. On an object with a positive click, a
click in the mask's outer part (``on_rim``) whose marked part is a thin layer along the rest of
the mask corrects the mask's rim: it removes only what lies within ``RIM_REACH_MM`` of it, so the
lesion's rim beyond a few false positives stays; a lobe the model doubts, a strand running away
from the mask or an island goes whole. On a box's object without a positive click nothing the
user said marks a rim as wanted: the doubted part goes whole, as a box's halo should
(docs/BENCHMARKS.md, "The 3D model's negative click kept to what it marks"); where the 2D pathway
answered the click, only where ``doubt_reads_box_object`` finds that the model sees the object
and the cut leaves most of it (docs/BENCHMARKS.md, "A negative click after a box read from the 3D
model's doubt only where it sees the object").

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
from .crops import Box, box_slices, clamp_box, tight_box
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
# kept to what it marks"). The 3D model's rule took it as it was, not tuned again (its 139
# development clicks: 120 at 0.5 or less)
DEEP_CLICK_FRACTION = 0.5
# what a negative click on the 3D model's mask marks is a layer at its rim where none of it lies this
# far (mm) from its edge, else a lobe the model doubts (development clicks in the mask's outer half:
# parts 2.5 mm deep or more held 322 lesion voxels for 4660 false positives, thinner ones 5087 for
# 6514; no part that held more lesion than false positives was 2.3 mm deep or more;
# docs/BENCHMARKS.md, "The 3D model's negative click kept to what it marks")
RIM_LAYER_MM = 2.5
# ... and where at least this part of it lies within twice that of the rest of the mask: a strand
# running away from the lesion, or an island, goes whole (a review's case; on the development
# clicks every thin part lay along the mask, and this changed none of them)
ALONG_SHARE = 0.5
# where the 2D pathway answered a negative click (``Session._judged_by_3d``), on a box's object (no
# positive click) the click is read from the 3D model's doubt only where the model believes (probability >= 0.5) at least this share of the object's mask - it sees the
# object: where it does not see a faint lesion it doubts all of it. Replayed on 456 development
# calls (eleven box runs), the cut lost where the model believed none of the mask (130 calls,
# summed Dice -2.12) and gained where it believed some: under 5 % 17 calls +0.11, 5-10 % 26 calls
# +0.55 (the 0.1 first chosen on four runs refused those). Any share from 0.01 to 0.08 sums within
# 0.04 of the others; 0.05 is the middle (docs/BENCHMARKS.md, "The box gate's seen share
# replayed on eleven development runs") ...
BOX_SEEN_SHARE = 0.05
# ... and where the doubted part leaves at least this share of the mask: a box says the object is
# there, and a negative click marks an error in it. Replayed on the development sets' calls (sums of
# the Dice change per call, docs/BENCHMARKS.md, "A negative click after a box read from the 3D
# model's doubt only where it sees the object")
BOX_KEPT_SHARE = 0.5


def honour_negative_clicks(probability: np.ndarray, mask: np.ndarray, points: np.ndarray, labels: np.ndarray,
                           spacing: Sequence[float]) -> np.ndarray:
    """``mask`` (the 3D model's answer, bool) without what each negative click in it marks: the
    voxels the model is no surer of than of the clicked voxel, nearer it than every positive
    click, connected to it; on an object with a positive click, where the click lies on the
    mask's rim (``on_rim``) and those voxels form a layer on the rest of the mask
    (``_is_layer_on``), only those within ``RIM_REACH_MM`` of it.

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
        found = tight_box(doubtful)  # the click is in it: never None
        window, lo = box_slices(found), found[0]
        part = doubtful[window] & nearer_than_all(doubtful[window].shape, np.asarray(point, dtype=float) - lo,
                                                   positives - lo, spacing)
        local = tuple(c - a for c, a in zip(index, lo))
        marked = _clicked_part(part, local)
        if marked is None:
            continue
        # the layer test first: it reads the part's own box, the rim test the whole mask's
        if len(positives) and _is_layer_on(result, marked, lo, spacing) and on_rim(result, index, spacing):
            marked = _clicked_part(marked & (squared_distance_mm(marked.shape, local, spacing) <= RIM_REACH_MM ** 2),
                                   local)
        result[window][marked] = False
    return result


def doubt_reads_box_object(probability: np.ndarray, mask: np.ndarray, kept: np.ndarray) -> bool:
    """Whether ``honour_negative_clicks``' answer ``kept`` (for all of the object's negative
    clicks at once) on a box's object without a positive click stands (``mask``: its mask, bool;
    ``probability``: the 3D model's, negative where no crop covers): of the mask a crop covers,
    the model believes at least ``BOX_SEEN_SHARE``, and ``kept`` holds at least
    ``BOX_KEPT_SHARE``."""
    covered = mask & (probability >= 0)
    voxels = np.count_nonzero(covered)
    believed = np.count_nonzero(covered & (probability >= 0.5))
    return voxels > 0 and believed >= BOX_SEEN_SHARE * voxels and np.count_nonzero(kept & covered) >= BOX_KEPT_SHARE * voxels


def _clicked_part(part: np.ndarray, index: tuple[int, ...]) -> np.ndarray | None:
    """The connected component of ``part`` (bool) that holds the voxel at ``index``, or None."""
    components, _ = label_objects(part)
    clicked = components[index]
    return components == clicked if clicked else None


def _is_layer_on(mask: np.ndarray, part: np.ndarray, origin: Sequence[int], spacing: Sequence[float]) -> bool:
    """Whether ``part`` (bool, a part of ``mask`` on the array starting at ``origin`` of it) is a
    layer on the rest of the mask, not a lobe, a strand running away from it or an island: none of
    it lies ``RIM_LAYER_MM`` or more from its own edge, and at least ``ALONG_SHARE`` of it within
    twice that of the rest of ``mask``. Read on ``part``'s box (grown by that reach); where that box
    meets ``mask``'s array face, the part may go on beyond it, as ``on_rim`` reads the mask."""
    found = tight_box(part)
    own, lo = part[box_slices(found)], found[0]
    own_lo = np.asarray(origin) + lo  # the part's box in the mask
    edges = [(int(a > 0), int(a + n < size)) for a, n, size in zip(own_lo, own.shape, mask.shape)]
    if ndimage.distance_transform_edt(np.pad(own, edges), sampling=spacing).max() >= RIM_LAYER_MM:
        return False
    reach = np.ceil(2 * RIM_LAYER_MM / np.asarray(spacing, dtype=float)).astype(int)
    region = clamp_box(own_lo - reach, own_lo + own.shape + reach, mask.shape)
    in_region = np.zeros([b - a for a, b in zip(*region)], dtype=bool)
    in_region[box_slices((tuple(own_lo), tuple(own_lo + own.shape)), origin=region[0])] = own
    rest = mask[box_slices(region)] & ~in_region
    if not rest.any():
        return False
    from_rest = ndimage.distance_transform_edt(~rest, sampling=spacing)
    return bool(np.mean(from_rest[in_region] <= 2 * RIM_LAYER_MM) >= ALONG_SHARE)


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


def nearer_than_all(shape: Sequence[int], click: np.ndarray, others: np.ndarray,
                     spacing: Sequence[float]) -> np.ndarray:
    """The voxels of an array of ``shape`` nearer (in mm) ``click`` than every one of ``others``
    (all of them when there is none): a negative click's part against the positive clicks, or a
    positive click's against the negative ones; clicks in the array's kji coordinates."""
    to_click = squared_distance_mm(shape, click, spacing)
    nearer = np.ones(tuple(shape), dtype=bool)
    for other in others:
        nearer &= to_click < squared_distance_mm(shape, other, spacing)
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


def padded_box(mask: np.ndarray) -> Box:
    """``mask``'s tight box grown by one voxel on every side, inside the array (``mask`` holds a
    voxel): the box the negative-click rules read, where the mask's edge lies within."""
    lo, hi = tight_box(mask)
    return clamp_box(np.asarray(lo) - 1, np.asarray(hi) + 1, mask.shape)


def on_rim(mask: np.ndarray, index: tuple[int, int, int], spacing: Sequence[float]) -> bool:
    """Whether the voxel at ``index`` (in ``mask``) lies in ``mask``'s outer part: its distance from
    the mask's edge (mm) at most ``DEEP_CLICK_FRACTION`` of the deepest voxel's. Read on
    ``padded_box(mask)``: where the mask meets the array's face, it may go on beyond it."""
    box = padded_box(mask)
    depth = ndimage.distance_transform_edt(mask[box_slices(box)], sampling=spacing)
    return bool(depth[tuple(i - a for i, a in zip(index, box[0]))] <= DEEP_CLICK_FRACTION * depth.max())


def squared_distance_mm(shape: Sequence[int], point: Sequence[float], spacing: Sequence[float]) -> np.ndarray:
    """The squared distance (mm^2) of every voxel of an array of ``shape`` from ``point`` (kji in
    the array), as an array of ``shape`` (broadcast from one open grid per axis)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((axis - c) * float(s)) ** 2 for axis, c, s in zip(grid, point, spacing))
