"""A loosely drawn box fitted to the object the 3D model finds at its centre.

LiteMedSAM was trained on boxes drawn close around their object. Given a box 10 mm loose around
a small nodule it fills much of the rectangle, or starts on a bright structure beside the
nodule, and its answer loses most of its Dice (chest dev2, 3D box: 0.956 tight, 0.483 at 10 mm;
2D box: 0.907 tight, 0.567 at 10 mm). The 3D model answers a click at the same box's centre
nearly as well at any margin (0.944 / 0.933): it finds the object but draws its edge less well
than LiteMedSAM does from a close box. So a box for an object without a mask is first clicked at
its centre by the 3D model (a 2D box: on its slice); where the box is loose around that answer
- the answer spans less than ``LOOSE_EXTENT`` of the box on both in-plane axes - the 2D pathway
is asked with the answer's own box, grown by ``FIT_MARGIN_PX`` in-plane and, for a 3D box,
``FIT_MARGIN_SLICES`` slices, and kept inside the user's box. A box drawn close to its object
keeps its own answer, and so does a box whose fitted answer is not the object the 3D model found
(``same_object``).

The click at a lesion's centre can find only its core: in a ring-enhancing lesion (a brain
tumour's necrotic core inside its enhancing rim) the 3D model answers the core, and a box drawn
close around the whole lesion is loose around that. What lies between the answer and a loose
box's edge is what lies at its edge, the lesion's surroundings; so the box is fitted only where
the ring around the answer (``RING_PX`` in-plane, inside the box) reads nearer the box's edge
(its ``BORDER_PX`` outermost pixels in-plane) than the answer does: the medians' distance from
the edge's under ``MAX_RING_LIKENESS`` of the answer's.

Where a lesion lies against tissue of about its own intensity (a tumour against atelectasis or
the mediastinum), the 3D model's answer at its centre can be a part of it that reads darker or
brighter, and the ring around that part reads as the box's edge because both are the same soft
tissue. The box drawn close around the lesion is then the better guide. So the box is fitted
only to an answer that stands out from the box's edge: their medians more than ``MIN_CONTRAST``
times the noise's standard deviation on the box's voxels apart (``noise_std``).

A 2D box says where its object lies on one slice, not how deep it is. LiteMedSAM's propagation
from it stops where a slice comes back empty, overgrows or leaves the object's intensity; a
tumour beside a vessel or atelectasis of its own density goes on through them, slices past the
tumour's end (complex chest dev91 by 2D box: 16 thousand voxels on slices the tumour does not
reach, against 2 thousand missed on slices it does). The 3D model's answer at the box's centre
ends where the tumour does far more often: where it is the same object as the box's answer on
the box's slice (``same_object``), the answer is kept to the slices it spans
(``within_found_slices``), at the ends the 3D model saw: its crop is encoded first on the slices
within a 2D box's reach (``object_slices``), and an object deeper than that runs past them.

(docs/BENCHMARKS.md, "A loose 3D box fitted to the object at its centre", "A loose 2D box fitted
too", "A loose box fitted only to an object that stands out", "A 2D box's answer kept to the
slices of the 3D model's object".)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .crops import Box, box_slices, voxels_within
from .intensity_trim import IN_PLANE, RING_PX
from .slice_pathway import is_3d_box

LOOSE_EXTENT = 0.8  # the box is loose where the centre's object spans less than this of it on both in-plane axes
FIT_MARGIN_PX = 3  # the fitted box: the object's box grown by this many pixels in-plane ...
FIT_MARGIN_SLICES = 1  # ... and this many slices, inside the user's box
BORDER_PX = 2  # the box's edge: its outermost pixels in-plane on its slices
# the ring around the answer reads as the box's edge where its median's distance from the edge's is
# under this part of the answer's (chest dev2 loose boxes 0.03-0.35; a ring-enhancing synthetic
# lesion's core 1.7: docs/BENCHMARKS.md)
MAX_RING_LIKENESS = 0.5
MIN_SAME_OBJECT = 0.5  # the fitted box's answer and the 3D model's object agree at least this much (Dice)
# the answer stands out from the box's edge where their medians differ by more than this many times the
# noise's standard deviation on the box's voxels: lesions against lung 11-92, a lesion against soft
# tissue of its own intensity 0.3-1.8 (docs/BENCHMARKS.md, "A loose box fitted only to an object that stands out")
MIN_CONTRAST = 3.0


def box_centre(corners: np.ndarray) -> np.ndarray:
    """The voxel at the centre of a box's kji corners (rounded)."""
    return np.round(np.asarray(corners, dtype=float).mean(axis=0))


def object_slices(corners: np.ndarray, spacing) -> tuple[int, int]:
    """The native slices (first, last) the object of a box of kji ``corners`` may span: a 3D
    box's own; a 2D box's slice, grown along k by half the box's larger in-plane side in mm (an
    object about as deep as it is wide)."""
    corners = np.asarray(corners, dtype=float)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    spacing = np.asarray(spacing, dtype=float)
    reach = 0.0 if is_3d_box(corners) else 0.5 * float(((hi[1:] - lo[1:]) * spacing[1:]).max()) / spacing[0]
    return int(np.floor(lo[0] - reach)), int(np.ceil(hi[0] + reach))


def fitted_box(corners: np.ndarray, region: Box, found: np.ndarray, volume: np.ndarray) -> np.ndarray | None:
    """A box (kji ``corners``, two opposite corners, inside ``volume``; on one slice, a 2D box)
    fitted to ``found`` (bool, the 3D model's answer at the box's centre, over ``region`` of the
    volume): the corners of ``found``'s box inside the user's box, grown by the fit margins and
    kept inside it; None where ``found`` does not hold the box's centre voxel, the user's box is
    not loose around ``found``, the ring around ``found`` does not read as the box's edge, or
    ``found`` does not stand out from the box's edge (see the module's docstring)."""
    corners = np.asarray(corners, dtype=float)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    inside, in_box = _on_box(corners, region, found)
    centre = tuple(int(v) for v in box_centre(corners) - np.asarray(inside[0]))
    if not in_box[centre]:  # the 3D model answered something beside the box's centre, not what it holds
        return None
    voxels = np.argwhere(in_box) + np.asarray(inside[0])
    found_lo, found_hi = voxels.min(axis=0), voxels.max(axis=0)
    extent = (found_hi[1:] - found_lo[1:] + 1) / (hi[1:] - lo[1:] + 1)
    if extent.max() >= LOOSE_EXTENT:
        return None
    image = volume[box_slices(inside)]
    edge_level = float(np.median(image[_box_edge(image.shape)]))
    found_step = abs(float(np.median(image[in_box])) - edge_level)
    if not _ring_reads_as_edge(image, in_box, edge_level, found_step) or found_step <= MIN_CONTRAST * noise_std(image):
        return None  # the ring is the lesion's, or the answer does not stand out from the edge
    margin = np.array([FIT_MARGIN_SLICES, FIT_MARGIN_PX, FIT_MARGIN_PX], dtype=float)
    return np.clip(np.array([found_lo - margin, found_hi + margin], dtype=float), lo, hi)


def same_object(answer_region: Box, answer: np.ndarray, corners: np.ndarray, region: Box, found: np.ndarray) -> bool:
    """Whether a box's answer (``answer`` over ``answer_region`` of the volume) is the object the
    3D model found (``found`` over ``region``): their Dice inside the user's box of kji
    ``corners`` at least ``MIN_SAME_OBJECT``. Where the fitted box's answer is not, the fitted box
    started LiteMedSAM on something else and the user's own box is asked instead; where a 2D
    box's answer is not, it is not kept to the found object's slices (``within_found_slices``)."""
    answered = _on_box(corners, answer_region, answer)[1]
    in_box = _on_box(corners, region, found)[1]
    total = np.count_nonzero(answered) + np.count_nonzero(in_box)
    return total > 0 and 2 * np.count_nonzero(answered & in_box) / total >= MIN_SAME_OBJECT


def within_found_slices(answer_region: Box, answer: np.ndarray, region: Box, found: np.ndarray,
                        read_between: tuple[float, float] | None = None) -> np.ndarray:
    """A 2D box's ``answer`` (over ``answer_region`` of the volume) with its slices beyond those
    ``found`` spans (the 3D model's object at the box's centre, over ``region``) emptied. Only an
    end the 3D model saw is kept to: where its crop, encoded in part, had exact TinyViT features
    only between native slices ``read_between`` (first, last), an end of ``found`` whose next
    slice lies outside them cuts nothing (there ``found`` may end, or go on, with the encoded
    window rather than the object). The range is the encoder's: the adapters' 3D convolutions
    still carry the stand-in slices' features a few slices into it."""
    spanned = np.flatnonzero(found.any(axis=(1, 2))) + region[0][0]
    if not spanned.size:
        return answer
    lowest, highest = read_between if read_between is not None else (-np.inf, np.inf)
    kept = answer.copy()
    if spanned[0] - 1 >= lowest:
        kept[:max(int(spanned[0]) - answer_region[0][0], 0)] = 0
    if spanned[-1] + 1 <= highest:
        kept[max(int(spanned[-1]) + 1 - answer_region[0][0], 0):] = 0
    return kept


def _on_box(corners: np.ndarray, region: Box, mask: np.ndarray) -> tuple[Box, np.ndarray]:
    """(the voxels of the box of kji ``corners`` as a Box of the volume, ``mask`` (over
    ``region`` of the volume) on them)."""
    inside = voxels_within(corners)
    on_box = np.zeros([b - a for a, b in zip(*inside)], dtype=bool)
    shared_lo = np.maximum(inside[0], region[0])
    shared_hi = np.minimum(inside[1], region[1])
    if np.all(shared_hi > shared_lo):
        shared: Box = (tuple(int(v) for v in shared_lo), tuple(int(v) for v in shared_hi))
        on_box[box_slices(shared, origin=inside[0])] = mask[box_slices(shared, origin=region[0])] > 0
    return inside, on_box


def _box_edge(shape: tuple[int, ...]) -> np.ndarray:
    """The box's edge on its voxels (of ``shape``): its ``BORDER_PX`` outermost pixels in-plane."""
    edge = np.ones(shape, dtype=bool)
    edge[:, BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = False
    return edge


def _ring_reads_as_edge(image: np.ndarray, found: np.ndarray, edge_level: float, found_step: float) -> bool:
    """Whether the ring around ``found`` (bool, on ``image``: the box's voxels) reads nearer the
    box's edge (its median ``edge_level``) than ``found`` does (its median ``found_step`` from
    it; see the module's docstring)."""
    ring = ndimage.binary_dilation(found, IN_PLANE, iterations=RING_PX) & ~found
    if not ring.any():
        return False
    return abs(float(np.median(image[ring])) - edge_level) < MAX_RING_LIKENESS * found_step


def noise_std(image: np.ndarray) -> float:
    """The standard deviation of ``image``'s noise, read from the differences between in-plane
    neighbours: their median absolute value over 0.6745 * sqrt(2), as for Gaussian noise; the
    median is robust to the few differences that cross a structure's edge. Where most neighbours
    are equal (a noiseless or quantised flat image) it reads 0 and any step stands out: the fit
    as before this rule. (Neither MONAI nor SimpleITK offers this estimate.)"""
    differences = np.abs(np.diff(np.asarray(image, dtype=np.float32), axis=-1))
    return float(np.median(differences)) / (0.6745 * np.sqrt(2.0))
