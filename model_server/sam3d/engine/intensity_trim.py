"""A first click's mask trimmed to the lesion's side of a clear intensity step, and grown to it.

The 3D model sees a crop scaled by its own percentiles, where a lesion's edge is a soft ramp; its
first mask around a nodule in the lung often carries a rim of parenchyma (on chest dev2 a
third of some masks: docs/BENCHMARKS.md, "A first click's mask trimmed at the lesion's
intensity step"). Where the lesion stands clearly apart from what surrounds the mask - the
median inside the mask (eroded by one voxel in-plane; where that does not stand apart, as in a
mask mostly of rim, the median of the click's 3 x 3 pixels) and the median of a ring around it
differ by at least ``MIN_CONTRAST`` times the ring's interquartile range - the voxels on the
surroundings' side of the midpoint between the two medians are removed, and of what stays the
part connected to the click is kept. That is the half-way threshold classical nodule
segmentation uses, applied inside the model's mask. Where the
lesion is subtle (soft-tissue lesions in an organ, brain MRI) the ring's spread hides the step
and the mask is left as it is; so is a mask whose click lands on the surroundings' side.

The model's first mask also often stops short of a lesion's edge: on the chest phantoms the
mask of a nodule lies inside it, a pixel or three short of the half-way level on most slices
(docs/BENCHMARKS.md, "A first click's mask grown to the lesion's edge"). Where the lesion stands
clearly above a darker background - its level against the median of the ring's voxels below the
half-way level between it and the ring's ``BACKGROUND_PERCENTILE``-th percentile, at least
``MIN_CONTRAST`` interquartile ranges of those voxels apart - the mask grows in-plane, pixel by
pixel, by at most ``GROW_PX``, over the voxels on the lesion's side of the half-way level
between the lesion and that background. The ring around a mask that lies inside its lesion holds
lesion as well as background, which is why the background is read from its darker part. The
bounded growth keeps a vessel or the chest wall that touches a nodule to a stub.

A box's answer is trimmed only where the lesion is homogeneous (``trim_homogeneous_lesion``): a
brain tumour's enhancing rim and necrotic core spread as widely as they stand off the brain, and
the half-way level cuts them (docs/BENCHMARKS.md, "A box's answer trimmed where the lesion is
homogeneous"). A box drawn loosely gives an answer with more surroundings than lesion, whose
whole core reads as a mix; the lesion is then read at the answer's deep core on the box's
central slice (docs/BENCHMARKS.md, "A loose box's answer trimmed at its deep core").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..data.clicks import label_objects
from .positive_clicks import clicks_inside

RING_PX = 3  # the surroundings: the in-plane ring this many pixels wide around the mask
# the least |lesion - surroundings| in interquartile ranges of the ring for the trim to apply
# (chosen on development data over 0, 1, 1.5 and 3: benchmarks/first_click_trim.py, docs/BENCHMARKS.md)
MIN_CONTRAST = 2.0
MIN_CORE_VOXELS = 5  # a mask whose in-plane erosion holds fewer is read at the click's 3 x 3 pixels only
# the growth: at most this many pixels in-plane (1-6 tried on development data; docs/BENCHMARKS.md)
GROW_PX = 3
BACKGROUND_PERCENTILE = 10  # the ring's darkest voxels: where its background is read from
MIN_BACKGROUND_VOXELS = 10  # a ring with fewer voxels below the half-way level has no background to read
# a homogeneous lesion: its core's median at least this many of the core's interquartile ranges
# from the ring's median (real brain MRI tumours 0.6-1.0, chest phantoms' tumours 1.0-19; 0-4
# tried on development data: docs/BENCHMARKS.md)
MIN_STEP_IN_LESION_IQRS = 1.5
# a loose box's mask: the lesion read at its deep core on one slice (the pixels at least this fraction
# of the deepest pixel's depth in, holes filled), which must stand this many of its own
# interquartile ranges off the ring (real brain MRI tumours 2.0-2.3, nodules in the chest phantoms'
# lung 3.9-58; fixed before any held-out run: docs/BENCHMARKS.md)
DEEP_FRACTION = 0.5
MIN_STEP_IN_DEEP_CORE_IQRS = 3.0

IN_PLANE = np.zeros((3, 3, 3), dtype=bool)  # the in-plane 4-neighbourhood as a 3D structuring element
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def trim_to_lesion_intensity(image: np.ndarray, mask: np.ndarray, click: np.ndarray,
                             min_contrast: float = MIN_CONTRAST, lesion_level: float | None = None) -> np.ndarray:
    """``mask`` (bool, on ``image``'s grid) without the voxels on the surroundings' side of a
    clear intensity step (at least ``min_contrast`` interquartile ranges of the ring), the part
    holding ``click`` (kji in the arrays) kept; ``mask`` as it is where the step is not clear or
    the click's voxel would go. ``image`` should reach ``RING_PX`` past the mask in-plane (the
    ring is cut where it does not). ``lesion_level``: the lesion's level read elsewhere (an
    object's mask: ``core_level``), tried before the levels read inside ``mask``."""
    read = _read_around(image, mask, click)
    return mask if read is None else _trim(*read, mask, min_contrast, lesion_level)


def _trim(values: np.ndarray, ring: np.ndarray, index: tuple[int, ...], mask: np.ndarray,
          min_contrast: float = MIN_CONTRAST, lesion_level: float | None = None,
          only_given_level: bool = False) -> np.ndarray:
    """``trim_to_lesion_intensity`` on what ``_read_around`` read; ``only_given_level``: no
    fallback to the levels read inside ``mask`` where ``lesion_level`` is not a clear step."""
    surroundings = float(np.median(values[ring]))
    quartile_1, quartile_3 = np.percentile(values[ring], [25, 75])
    levels = [] if only_given_level else _lesion_levels(values, mask, index)
    for lesion in levels if lesion_level is None else [lesion_level] + levels:
        if lesion != surroundings and abs(lesion - surroundings) >= min_contrast * float(quartile_3 - quartile_1):
            break
    else:
        return mask
    middle = (lesion + surroundings) / 2
    kept = mask & ((values > middle) if lesion > surroundings else (values < middle))
    if not kept[index]:
        return mask
    components, _ = label_objects(kept)
    return components == components[index]


def trim_homogeneous_lesion(image: np.ndarray, mask: np.ndarray, click: np.ndarray,
                            plane_offset: int = 0) -> np.ndarray:
    """``trim_to_lesion_intensity`` where the lesion inside ``mask`` is homogeneous: the median of
    the mask's in-plane core (the whole mask where the core is too small) stands at least
    ``MIN_STEP_IN_LESION_IQRS`` of the core's interquartile ranges from the ring's median. Where
    the whole core is not, the mask may be loose (``_loose_mask_trim``, read on the slice
    ``plane_offset`` slices from the click's: a box's central slice); ``mask`` as it is
    otherwise."""
    read = _read_around(image, mask, click)
    if read is None:
        return mask
    values, ring, index = read
    core = core_values(values, mask)
    surroundings = float(np.median(values[ring]))
    if _stands_apart(values[mask] if core is None else core, surroundings):
        return _trim(*read, mask)
    loose = _loose_mask_trim(values, ring, surroundings, mask, index[0] + plane_offset)
    return mask if loose is None else loose


def _stands_apart(lesion: np.ndarray, surroundings: float, min_iqrs: float = MIN_STEP_IN_LESION_IQRS) -> bool:
    """Whether ``lesion``'s median stands ``min_iqrs`` of its own interquartile ranges or more
    from ``surroundings``."""
    quartile_1, quartile_3 = np.percentile(lesion, [25, 75])
    step = abs(float(np.median(lesion)) - surroundings)
    return step > 0 and step >= min_iqrs * float(quartile_3 - quartile_1)


def _loose_mask_trim(values: np.ndarray, ring: np.ndarray, surroundings: float, mask: np.ndarray,
                     plane: int) -> np.ndarray | None:
    """``mask`` trimmed as the answer to a loosely drawn box, or None where it should stay.

    Such an answer holds a rim of its surroundings (the ring's median, ``surroundings``) around
    the lesion, and its whole core reads as a mix. The lesion is read at the mask's deep core on
    ``plane`` instead: the pixels at least ``DEEP_FRACTION`` of the deepest pixel's depth in, the
    mask's holes filled. Where that core stands ``MIN_STEP_IN_DEEP_CORE_IQRS`` of its own
    interquartile ranges off the surroundings, and ``MIN_CONTRAST`` of the ring's, the mask is
    trimmed at the half-way level to the core's median (``_trim``, the part holding the mask's
    deepest pixel kept). What goes must look like the surroundings: None where its median lies
    past theirs, away from the core, by more than half the core's step (a necrotic core read as
    the lesion, its enhancing rim going)."""
    if not 0 <= plane < mask.shape[0] or not mask[plane].any():
        return None
    depth = ndimage.distance_transform_edt(np.pad(ndimage.binary_fill_holes(mask[plane]), 1))[1:-1, 1:-1]
    deep = values[plane][depth >= DEEP_FRACTION * depth.max()]
    if deep.size < MIN_CORE_VOXELS or not _stands_apart(deep, surroundings, MIN_STEP_IN_DEEP_CORE_IQRS):
        return None
    lesion = float(np.median(deep))
    deepest = (plane, *np.unravel_index(int(np.argmax(np.where(mask[plane], depth, 0))), depth.shape))
    trimmed = _trim(values, ring, deepest, mask, lesion_level=lesion, only_given_level=True)
    removed = values[mask & ~trimmed]
    beyond = (surroundings - float(np.median(removed))) * np.sign(lesion - surroundings) if removed.size else 0.0
    return trimmed if beyond <= abs(lesion - surroundings) / 2 else None


def grow_to_lesion_intensity(image: np.ndarray, mask: np.ndarray, click: np.ndarray) -> np.ndarray:
    """``mask`` (bool, on ``image``'s grid) grown in-plane by at most ``GROW_PX`` pixels over the
    voxels on the lesion's side of the half-way level between the lesion and a darker background
    it stands clearly above (see the module's docstring); ``mask`` as it is where there is none
    or ``click`` (kji in the arrays) lies outside. ``image`` should reach ``RING_PX`` past the
    mask in-plane."""
    read = _read_around(image, mask, click)
    if read is None:
        return mask
    values, ring, index = read
    lesion = _lesion_levels(values, mask, index)[0]
    ring_values = values[ring]
    darkest = float(np.percentile(ring_values, BACKGROUND_PERCENTILE))
    background = ring_values[ring_values < (lesion + darkest) / 2]
    if lesion <= darkest or background.size < MIN_BACKGROUND_VOXELS:
        return mask
    level = float(np.median(background))
    quartile_1, quartile_3 = np.percentile(background, [25, 75])
    if lesion - level < MIN_CONTRAST * float(quartile_3 - quartile_1):
        return mask
    return ndimage.binary_dilation(mask, IN_PLANE, iterations=GROW_PX, mask=values > (lesion + level) / 2)


def _read_around(image: np.ndarray, mask: np.ndarray,
                 click: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]] | None:
    """(``image`` as float32, the in-plane ring ``RING_PX`` wide around ``mask``, the click's
    voxel index): what the trim and the growth read; None where the mask or the ring is empty or
    ``click`` lies outside the arrays."""
    inside = clicks_inside(np.asarray(click, dtype=float)[None], np.ones(1), 1, mask.shape)
    if not mask.any() or not inside:
        return None
    ring = ndimage.binary_dilation(mask, IN_PLANE, iterations=RING_PX) & ~mask
    if not ring.any():
        return None
    return image.astype(np.float32, copy=False), ring, inside[0][1]


def core_level(image: np.ndarray, mask: np.ndarray, min_voxels: int = MIN_CORE_VOXELS) -> float | None:
    """The median of ``image`` inside ``mask`` eroded by one voxel in-plane: a lesion's level away
    from its partial-volume edge; None where the erosion holds fewer than ``min_voxels``."""
    core = core_values(image, mask, min_voxels)
    return None if core is None else float(np.median(core))


def core_values(image: np.ndarray, mask: np.ndarray, min_voxels: int = MIN_CORE_VOXELS) -> np.ndarray | None:
    """``image``'s values inside ``mask`` eroded by one voxel in-plane; None where the erosion
    holds fewer than ``min_voxels``."""
    core = ndimage.binary_erosion(mask, IN_PLANE)
    return image[core] if np.count_nonzero(core) >= min_voxels else None


def _lesion_levels(values: np.ndarray, mask: np.ndarray, index: tuple[int, ...]) -> list[float]:
    """The lesion's level as read inside the mask (``core_level``), then at the click's 3 x 3
    pixels: a mask mostly of surroundings (a thick rim around a small nodule) has the
    surroundings' median inside."""
    inside = core_level(values, mask)
    levels = [] if inside is None else [inside]
    k, j, i = index
    levels.append(float(np.median(values[k, max(0, j - 1):j + 2, max(0, i - 1):i + 2])))
    return levels
