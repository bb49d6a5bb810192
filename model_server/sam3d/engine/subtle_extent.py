"""A first click's mask carried to the extent of a lesion too subtle for the 3D model's input.

The 3D model sees a crop scaled by its own 0.5 / 99.5 percentiles. A lesion 20-50 HU off its organ,
in a crop that holds air and bone, is then 0.02 of the model's input range; every lesion of the
training generator stood 0.14 or more (docs/BENCHMARKS.md, "Why the unseen-design phantoms'
first click stays low"). On such lesions the model answers a blob of a typical size that does not
follow the lesion's edge. The image itself still tells the lesion apart once its noise is
smoothed: the rule here reads, on the image smoothed by ``SMOOTH_MM``,

- the lesion's level near the click: the median of the model's mask within ``LEVEL_BALL_MM`` of
  the click (a click on the lesion's rim, where the evaluation's random click often falls, reads
  the rim's partial volume in its own pixels), else, or where that reading does not apply, the
  median of the click's 3 x 3 in-plane pixels; the spread is the robust standard deviation of
  the 5 x 5 x 3 voxels around the click;
- the surroundings' level: where at least ``SIDE_SHARE`` of a shell ``SHELL_MM`` away from the
  model's mask lies darker than the lesion by ``MIN_SEPARATION`` spreads and as much brighter (a
  lesion between its organ and fat, whose shell's median can fall anywhere between them, the
  lesion's own level included), the median of the nearer side, both sides subtle for the model;
  elsewhere, or where that reading does not apply, the median of the whole shell. This reading
  between two tissues is tried first, at the click's own 3 x 3 pixels (at the level near the
  click it took fewer development cases); then the whole shell, at the level near the click,
  then at the click's pixels.

Where the two levels differ by less than ``MAX_FIELD_FRACTION`` of the crop's percentile range
(subtle for the model) yet by at least ``MIN_SEPARATION`` spreads (clear in the image), the mask
becomes the voxels nearer the lesion's level than the surroundings' (and not past the lesion's
level by more than half the step), within ``REACH_MM`` of the model's mask, opened by one pixel
in-plane, connected to the click, holes filled, provided it shares at least ``MIN_SHARED`` of
the smaller of the two masks with the model's (the same object, grown or shrunk). The lesion's
level is then read once more, as the median of that mask's core (``_core_level``), the
surroundings' level read again from it the same way, and the mask drawn again there under the
same conditions, the lesion still on the same side of its surroundings; where the new reading
fails them, the first mask stands. The level near the click is one reading of a noisy lesion;
the core's is the lesion's own. Elsewhere - a clear step the model already sees, such as a
nodule in the lung, no step the image shows, or a region of the lesion's level that is another
structure - the mask stays as it is.

The object's later clicks keep the two levels (``SubtleLevels``): neither the 3D model (blind to
the step) nor the 2D pathway (whose box on such a slice takes part of the organ) follows this
lesion's edge. A positive click adds the voxels near the lesion's level within ``REACH_MM`` of it,
connected to it - on the lesion's rim, those at least as lesion-like as the clicked voxel within
``RIM_REACH_MM`` (``add_at_positive_click``); a negative click removes the part of the mask nearer
it than every positive click, connected to it: where the click corrects the mask's rim, only what
lies near the clicked voxel and reads no more lesion-like than it; where it lies deep in a wrong
region, all of it, cut at a neck of the mask where one lies between it and the positive clicks
(``cut_at_negative_click``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..data.clicks import label_objects
from .crops import box_slices
from .intensity_trim import IN_PLANE, core_level
from .negative_clicks import RIM_REACH_MM, beyond_neck, nearer_than_all, on_rim, padded_box, squared_distance_mm
from .positive_clicks import clicks_inside

SMOOTH_MM = 1.0  # Gaussian smoothing of the image before its levels are read (sigma, mm)
SHELL_MM = (3.0, 12.0)  # the surroundings: this far from the model's mask (mm, inner and outer)
REACH_MM = 12.0  # the new mask stays within this distance of the model's mask (mm)
MIN_SEPARATION = 2.0  # the least |lesion - surroundings| in the click's robust standard deviations
# the largest |lesion - surroundings| as a fraction of the crop's percentile range for the rule to
# apply: under the least contrast of the training generator's lesions (0.14), where the model is blind
MAX_FIELD_FRACTION = 0.14
# the least part of the smaller of the grown and the model's masks the two share (on development
# data 0.44-0.99 where the rule fired; 0.21 on a held-out chest case where it took soft tissue)
MIN_SHARED = 1 / 3
# the least part of the shell each side must hold for a lesion to be read as lying between a darker
# and a brighter tissue (0.3 took the same development cases; 0.1 lost one synthetic lesion)
SIDE_SHARE = 0.2
# the lesion's level is first read on the model's mask within this distance of the click (mm); 3
# and 6 took the same development cases (docs/BENCHMARKS.md, "A subtle lesion's level read off its rim")
LEVEL_BALL_MM = 4.0
MIN_LEVEL_VOXELS = 9  # the fewest voxels a level is read from (near the click, or in a mask's core)
# a negative click's voxel reads as the lesion where it lies within this many of the lesion's robust
# standard deviations of its level (development cases: 0.11-0.37 on like-intensity false positives,
# 0.93 and more on the lesion's rim; docs/BENCHMARKS.md, "A subtle lesion's negative click kept to
# what it marks")
SAME_AS_LESION_SPREADS = 0.5

@dataclass(frozen=True)
class SubtleLevels:
    """A subtle lesion's level and its surroundings', read at the object's first click on the
    smoothed image (in the image's units)."""

    lesion: float
    surroundings: float

    def near_lesion(self, smoothed: np.ndarray) -> np.ndarray:
        """The voxels nearer the lesion's level than the surroundings', and not more than half the
        step past the lesion's level."""
        return np.abs(smoothed - self.lesion) < abs(self.lesion - self.surroundings) / 2


def robust_std(values: np.ndarray) -> float:
    """1.4826 times the median absolute deviation: a standard deviation that outliers barely move."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def around_click(smoothed: np.ndarray, index: tuple[int, int, int]) -> np.ndarray:
    """The values of the 5 x 5 x 3 voxels (in-plane 5 x 5, three slices) around ``index``, inside
    the array: a click's own neighbourhood, where its spread is read."""
    k, j, i = index
    return smoothed[max(0, k - 1):k + 2, max(0, j - 2):j + 3, max(0, i - 2):i + 3].ravel()


def smoothed_image(image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``image`` smoothed by ``SMOOTH_MM`` (a Gaussian's sigma, in mm along each axis)."""
    return ndimage.gaussian_filter(image.astype(np.float32), [SMOOTH_MM / s for s in spacing])


def _clicked_component(candidate: np.ndarray, index: tuple[int, int, int]) -> np.ndarray | None:
    """The part of ``candidate`` (opened by one pixel in-plane) connected to ``index``, holes
    filled; None where ``index`` is not in it."""
    components, _ = label_objects(ndimage.binary_opening(candidate, IN_PLANE))
    if not components[index]:
        return None
    return ndimage.binary_fill_holes(components == components[index])


def grow_to_subtle_lesion(image: np.ndarray, spacing: Sequence[float], mask: np.ndarray, click: np.ndarray,
                          field_range: float) -> tuple[np.ndarray, SubtleLevels | None]:
    """(``mask`` (bool, on ``image``'s grid, spacing kji in mm) carried to the extent of the
    subtle lesion ``click`` (kji) lies in, its levels), or (``mask`` as it is, None) where the
    rule does not apply (see the module's docstring). ``field_range`` is the 3D model crop's
    percentile range (its input's scale); ``image`` should reach ``REACH_MM`` + ``SHELL_MM[1]``
    past the mask (it is cut where it does not)."""
    inside = clicks_inside(np.asarray(click, dtype=float)[None], np.ones(1), 1, mask.shape)
    if not mask.any() or not inside or not field_range > 0:
        return mask, None
    index = inside[0][1]
    k, j, i = index
    smoothed = smoothed_image(image, spacing)
    at_click = float(np.median(smoothed[k, max(0, j - 1):j + 2, max(0, i - 1):i + 2]))
    spread = max(robust_std(around_click(smoothed, index)), 1e-6)
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
    shell = smoothed[(distance > SHELL_MM[0]) & (distance <= SHELL_MM[1])]
    if not shell.size:
        return mask, None
    whole_shell = float(np.median(shell))
    reach = distance <= REACH_MM

    def read_at(lesion: float, either_side: bool) -> tuple[SubtleLevels | None, float]:
        """The levels for a lesion at ``lesion`` and the step to the farther side, read either
        side of it or against the whole shell."""
        if either_side:
            return _levels_either_side(shell, lesion, spread)
        return SubtleLevels(lesion, whole_shell), 0.0

    def drawn(levels: SubtleLevels | None, step_beyond: float) -> np.ndarray | None:
        """The mask at ``levels``, or None where they fail the rule's gates or their mask is not
        the model's object."""
        if levels is None:
            return None
        step = abs(levels.lesion - levels.surroundings)
        if max(step, step_beyond) >= MAX_FIELD_FRACTION * field_range or step < MIN_SEPARATION * spread:
            return None
        grown = _clicked_component(levels.near_lesion(smoothed) & reach, index)
        return grown if grown is not None and _same_object(grown, mask) else None

    near_click = mask & (squared_distance_mm(mask.shape, index, spacing) <= LEVEL_BALL_MM ** 2)
    readings = [(at_click, True)]
    if np.count_nonzero(near_click) >= MIN_LEVEL_VOXELS:
        readings.append((float(np.median(smoothed[near_click])), False))
    readings.append((at_click, False))
    for lesion, either_side in readings:
        levels, step_beyond = read_at(lesion, either_side)
        grown = drawn(levels, step_beyond)
        if grown is None:
            continue
        again, again_beyond = read_at(_core_level(smoothed, grown), either_side)
        same_side = again is not None and ((again.lesion - again.surroundings)
                                           * (levels.lesion - levels.surroundings) > 0)
        redrawn = drawn(again, again_beyond) if same_side else None
        return (grown, levels) if redrawn is None else (redrawn, again)
    return mask, None


def _core_level(smoothed: np.ndarray, grown: np.ndarray) -> float:
    """The median of ``smoothed`` in the core of ``grown``: ``grown`` eroded by one voxel (off
    the partial volume of its first and last slices too), else eroded by one pixel in-plane
    (``core_level``: a lesion on few slices), else ``grown`` itself, whichever first holds
    ``MIN_LEVEL_VOXELS``."""
    core = ndimage.binary_erosion(grown)
    if np.count_nonzero(core) >= MIN_LEVEL_VOXELS:
        return float(np.median(smoothed[core]))
    in_plane = core_level(smoothed, grown, MIN_LEVEL_VOXELS)
    return float(np.median(smoothed[grown])) if in_plane is None else in_plane


def _levels_either_side(shell: np.ndarray, lesion: float, spread: float) -> tuple[SubtleLevels | None, float]:
    """(The levels of a lesion between a darker and a brighter tissue, the surroundings' level the
    nearer side's median; the step to the farther side's median) from the ``shell``'s voxels at
    least ``MIN_SEPARATION`` spreads below and above the ``lesion``'s level; (None, 0) where either
    side holds under ``SIDE_SHARE`` of the shell."""
    darker = shell[shell < lesion - MIN_SEPARATION * spread]
    brighter = shell[shell > lesion + MIN_SEPARATION * spread]
    if min(darker.size, brighter.size) < SIDE_SHARE * shell.size:
        return None, 0.0
    nearer, farther = sorted((float(np.median(darker)), float(np.median(brighter))), key=lambda v: abs(v - lesion))
    return SubtleLevels(lesion, nearer), abs(farther - lesion)


def _same_object(grown: np.ndarray, mask: np.ndarray) -> bool:
    """Whether ``grown`` is the model's object carried to its edge, grown or shrunk: the two
    masks share at least ``MIN_SHARED`` of the smaller one. A region of the lesion's level that
    leaves most of the model's mask aside is another structure (soft tissue beside a lung tumour)."""
    shared = np.count_nonzero(grown & mask)
    return shared >= MIN_SHARED * min(np.count_nonzero(grown), np.count_nonzero(mask))


def add_at_positive_click(smoothed: np.ndarray, spacing: Sequence[float], mask: np.ndarray, click: np.ndarray,
                          levels: SubtleLevels) -> np.ndarray:
    """``mask`` with the voxels near the lesion's level within ``REACH_MM`` of ``click`` (kji on
    ``smoothed``'s grid), connected to it, added. Where the clicked voxel itself is not near the
    lesion's level (a click on the lesion's partial-volume rim), the voxels at least as
    lesion-like as it within ``RIM_REACH_MM``, connected to it, are added instead. ``mask`` as it
    is where the click lies outside the array."""
    inside = clicks_inside(np.asarray(click, dtype=float)[None], np.ones(1), 1, mask.shape)
    if not inside:
        return mask
    index = inside[0][1]
    from_click = np.sqrt(squared_distance_mm(mask.shape, index, spacing))
    near = levels.near_lesion(smoothed)
    if near[index]:
        added = _clicked_component(near & (from_click <= REACH_MM), index)
        if added is not None:
            return mask | added
    darker = levels.lesion < levels.surroundings
    as_lesion_like = smoothed <= smoothed[index] if darker else smoothed >= smoothed[index]
    components, _ = label_objects(as_lesion_like & (from_click <= RIM_REACH_MM))
    return mask | (components == components[index])


def cut_at_negative_click(smoothed: np.ndarray, spacing: Sequence[float], mask: np.ndarray, click: np.ndarray,
                          positives: np.ndarray, levels: SubtleLevels) -> np.ndarray:
    """``mask`` without the part of it a negative click marks, connected to the click (kji on
    ``smoothed``'s grid) and nearer it than every one of ``positives`` (kji, n x 3):

    - a clicked voxel outside the lesion's level band (the model's mask ran into another tissue):
      the voxels nearer the clicked voxel's level than the lesion's - a leak into the organ goes,
      the lesion's core beside it stays;
    - a clicked voxel inside the band, in the mask's outer part (``on_rim``: a correction of its
      rim): only within ``RIM_REACH_MM`` of it, as a positive click on the rim adds, so the
      lesion's rim beyond a few false positives stays; of those, where the clicked voxel is off
      the lesion's level by ``SAME_AS_LESION_SPREADS`` of the lesion's spread or more
      (``_spread``), only the voxels no more lesion-like than it (as far from the lesion's level
      or farther, on its side); where it reads as the lesion, nothing in the image tells them
      apart, and all of them go;
    - a clicked voxel inside the band, deep in the mask (the click marks a wrong region of it, a
      leak into tissue of the lesion's level or a structure joined to the lesion): where a neck of
      the mask separates it from the positive clicks (``beyond_neck``), all but the basins that
      hold them, so the cut runs at the neck; elsewhere all of it.

    ``mask`` as it is where the click is not in it, or is nearer a positive click than itself.
    Read on ``mask``'s box grown by one voxel (the rest of the arrays holds nothing to cut)."""
    inside = clicks_inside(np.asarray(click, dtype=float)[None], np.zeros(1), 0, mask.shape)
    if not inside or not mask[inside[0][1]]:
        return mask
    box = padded_box(mask)  # the click is in the mask
    window, lo = box_slices(box), np.asarray(box[0])
    cut = mask.copy()
    cut[window] = _cut_in_box(smoothed[window], spacing, mask[window], np.asarray(click, dtype=float) - lo,
                              tuple(int(i - a) for i, a in zip(inside[0][1], lo)),
                              np.asarray(positives, dtype=float).reshape(-1, 3) - lo, levels)
    return cut


def _cut_in_box(smoothed: np.ndarray, spacing: Sequence[float], mask: np.ndarray, click: np.ndarray,
                index: tuple[int, int, int], positives: np.ndarray, levels: SubtleLevels) -> np.ndarray:
    """``cut_at_negative_click`` on the mask's box (``click``, its voxel ``index`` and
    ``positives`` in it)."""
    part = mask & nearer_than_all(mask.shape, click, positives, spacing)
    if not part[index]:
        return mask
    clicked_level = float(smoothed[index])
    if not levels.near_lesion(np.float32(clicked_level)):
        part &= np.abs(smoothed - clicked_level) < np.abs(smoothed - levels.lesion)
    elif on_rim(mask, index, spacing):
        part &= squared_distance_mm(mask.shape, index, spacing) <= RIM_REACH_MM ** 2
        if abs(clicked_level - levels.lesion) >= SAME_AS_LESION_SPREADS * _spread(smoothed, mask):
            part &= (smoothed - clicked_level) * np.sign(clicked_level - levels.lesion) >= 0
    elif (beyond := beyond_neck(mask, index, positives, spacing)) is not None:
        part &= beyond
    components, _ = label_objects(part)
    return mask & (components != components[index])


def _spread(smoothed: np.ndarray, mask: np.ndarray) -> float:
    """The robust standard deviation of ``smoothed`` in ``mask``'s in-plane core (the whole mask
    where the core holds fewer than ``MIN_LEVEL_VOXELS``): how far a lesion's own voxels read
    from its level."""
    core = ndimage.binary_erosion(mask, IN_PLANE)
    return robust_std(smoothed[core if np.count_nonzero(core) >= MIN_LEVEL_VOXELS else mask])
