"""A new object's first click answered again on a crop centred on the object the image shows.

Every crop the 3D model was trained on was centred on a voxel of its object, so the model reads
its crop's centre as "inside the object". The engine centres a first click's crop on the click;
a click near the object's rim puts that hint on the rim, and the model answers a blob around the
click (docs/BENCHMARKS.md, "The crop's centre as a cue"). Re-centring on that blob's own centroid
moves the crop a few millimetres and changes nothing (measured); the image says more.

Where the lesion stands clearly apart from what surrounds the first mask - on the image smoothed
by ``SMOOTH_MM``, the median of the mask's core and that of a shell ``SHELL_MM`` away differ by
at least ``MIN_SEPARATION`` robust standard deviations of the core - the voxels on the lesion's
side of the half-way level, connected to the first mask, within ``REACH_MM`` of the click, holes
filled (a darker core is part of its lesion), are the object as the image draws it. The click is
answered again on a crop centred where a climb from the click up that object's depth stops: the
lesion's centre, not that of an organ of its level that a narrow neck joins to it. The crop
moves only where that centre lies at least ``MIN_SHIFT_CROP_VOXELS`` from the click, and no
farther than keeps the click ``size / 8`` crop voxels inside it; it is encoded first on the
slices near the object, as a finer crop is (``partial_crop``). The new answer is kept where it
reaches within ``CLICK_GAP_MM`` of the click (a rim click's own voxel may lie outside the
lesion's mask). Chosen on development data (docs/BENCHMARKS.md, "A first crop re-centred on the
object the image shows").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .crops import Box, clamp_box
from .intensity_trim import IN_PLANE, core_values
from .negative_clicks import squared_distance_mm
from .subtle_extent import SHELL_MM, SMOOTH_MM, robust_std

MIN_SHIFT_CROP_VOXELS = 4.0  # crop voxels between the click and the object's centre to re-centre
MIN_SEPARATION = 3.0  # the least |lesion - shell| in robust standard deviations of the mask's core
CLICK_GAP_MM = 3.0  # a re-centred answer is kept where it holds a voxel this near the click
REACH_MM = 60.0  # the image's object is read within this distance of the click (per axis, mm)


def reach_box(click: np.ndarray, spacing: Sequence[float], shape: Sequence[int]) -> Box:
    """The native box within ``REACH_MM`` of ``click`` along each axis, inside the volume."""
    return _box_around(click, REACH_MM, spacing, shape)


def _box_around(point: np.ndarray, distance_mm: float, spacing: Sequence[float], shape: Sequence[int]) -> Box:
    """The box of the voxels within ``distance_mm`` of ``point`` (kji) along each axis, inside an
    array of ``shape``."""
    radius = np.ceil(distance_mm / np.asarray(spacing, dtype=np.float64)).astype(int)
    centre = np.round(np.asarray(point, dtype=np.float64)).astype(int)
    return clamp_box(centre - radius, centre + radius + 1, tuple(shape))


@dataclass(frozen=True)
class ImageObject:
    """The object the image shows around a first click's mask (indices in the arrays read)."""

    centre: np.ndarray  # kji: where the climb up the object's depth from the click stopped
    slices: tuple[int, int]  # the first and last k the object spans


def image_object(image: np.ndarray, spacing: Sequence[float], mask: np.ndarray,
                 click: np.ndarray) -> ImageObject | None:
    """The object the image shows around a first click's ``mask`` (bool, ``image``'s grid;
    ``click`` inside the arrays), see the module's docstring; None where the click lies outside
    the mask, the mask's core is too thin to read, or the lesion does not stand clearly apart
    from the shell around the mask."""
    index = tuple(int(round(c)) for c in click)
    if not mask.any() or not mask[index]:
        return None
    smoothed = ndimage.gaussian_filter(image.astype(np.float32), [SMOOTH_MM / s for s in spacing])
    core = core_values(smoothed, mask)
    if core is None:
        return None
    lesion = float(np.median(core))
    near = _bounding_slices(mask, np.ceil(SHELL_MM[1] / np.asarray(spacing)).astype(int) + 1)
    distance = ndimage.distance_transform_edt(~mask[near], sampling=spacing)  # all within SHELL_MM of it
    shell = (distance >= SHELL_MM[0]) & (distance <= SHELL_MM[1])
    if not shell.any():
        return None
    surroundings = float(np.median(smoothed[near][shell]))
    if abs(lesion - surroundings) < MIN_SEPARATION * max(robust_std(core), 1e-6):
        return None
    side = (smoothed - (lesion + surroundings) / 2) * np.sign(lesion - surroundings) > 0
    side = ndimage.binary_opening(side, IN_PLANE) | mask
    components, _ = ndimage.label(side)
    clicked = components == components[index]
    around = _bounding_slices(clicked, np.ones(3, dtype=int))  # the object, one voxel of background about it
    origin = np.array([part.start for part in around])
    region = ndimage.binary_fill_holes(clicked[around])
    depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    centre = _deepest_reached(depth, tuple(int(c) for c in np.asarray(index) - origin)) + origin
    on_slices = np.flatnonzero(region.any(axis=(1, 2))) + origin[0]
    return ImageObject(centre.astype(np.float64), (int(on_slices[0]), int(on_slices[-1])))


def _bounding_slices(mask: np.ndarray, margin: np.ndarray) -> tuple[slice, slice, slice]:
    """The slices of ``mask``'s (non-empty) bounding box widened by ``margin`` voxels per axis,
    inside the array."""
    found = np.argwhere(mask)
    lo = np.maximum(found.min(axis=0) - margin, 0)
    hi = np.minimum(found.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))


def _deepest_reached(depth: np.ndarray, start: tuple[int, int, int], max_steps: int = 1000) -> tuple[int, ...]:
    """The voxel where a climb from ``start`` up ``depth``, one voxel at a time to the deepest of
    the 26 neighbours while that is deeper, stops: the centre of the part of a region that holds
    ``start``, not of another part that a narrow neck joins to it."""
    current = start
    for _ in range(max_steps):
        lo = [max(c - 1, 0) for c in current]
        window = depth[lo[0]:current[0] + 2, lo[1]:current[1] + 2, lo[2]:current[2] + 2]
        best = tuple(int(l + w) for l, w in zip(lo, np.unravel_index(int(np.argmax(window)), window.shape)))
        if depth[best] <= depth[current]:
            break
        current = best
    return current


def shifted_centre(click: np.ndarray, centre: np.ndarray, spacing: Sequence[float], crop_size: int,
                   crop_spacing_mm: float) -> np.ndarray | None:
    """The re-centred crop's centre (native kji): the object's ``centre``, moved back towards ``click`` as
    far as keeps the click ``crop_size / 8`` crop voxels inside the crop; None where it lies
    within ``MIN_SHIFT_CROP_VOXELS`` crop voxels of the click."""
    click = np.asarray(click, dtype=np.float64)
    shift_crop = (np.asarray(centre, dtype=np.float64) - click) * np.asarray(spacing) / crop_spacing_mm
    if np.linalg.norm(shift_crop) < MIN_SHIFT_CROP_VOXELS:
        return None
    most = (crop_size - 1) / 2 - crop_size / 8
    shift_crop = np.clip(shift_crop, -most, most)
    return click + shift_crop * crop_spacing_mm / np.asarray(spacing)


def reaches_click(mask: np.ndarray, click: np.ndarray, spacing: Sequence[float]) -> bool:
    """Whether ``mask`` (bool) holds a voxel within ``CLICK_GAP_MM`` of ``click`` (kji in the
    array): a re-centred answer that still answers the click, whose rim voxel it may leave out."""
    lo, hi = _box_around(click, CLICK_GAP_MM, spacing, mask.shape)
    window = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    near = squared_distance_mm(window.shape, np.asarray(click, dtype=np.float64) - lo, spacing) <= CLICK_GAP_MM ** 2
    return bool(np.any(window & near))
