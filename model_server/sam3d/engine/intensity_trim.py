"""A first click's mask trimmed to the lesion's side of a clear intensity step.

The 3D model sees a crop scaled by its own percentiles, where a lesion's edge is a soft ramp; its
first mask around a nodule in the lung often carries a rim of parenchyma (on chest dev2 a
third of some masks: docs/BENCHMARKS.md, "A first click's mask trimmed at the lesion's
intensity step"). Where the lesion stands clearly apart from what surrounds the mask - the
median inside the mask (eroded by one voxel in-plane; where that does not stand apart, as in a
mask mostly of rim, the median of the click's 3 x 3 pixels) and the median of a ring around it
differ by at least ``MIN_CONTRAST`` times the ring's interquartile range - the voxels on the
surroundings' side of the midpoint between the two medians are removed, and of what stays the
part connected to the click is kept. That is the half-way threshold classical nodule
segmentation uses, applied only inside the model's mask: it never adds a voxel. Where the
lesion is subtle (soft-tissue lesions in an organ, brain MRI) the ring's spread hides the step
and the mask is left as it is; so is a mask whose click lands on the surroundings' side.
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

IN_PLANE = np.zeros((3, 3, 3), dtype=bool)  # the in-plane 4-neighbourhood as a 3D structuring element
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def trim_to_lesion_intensity(image: np.ndarray, mask: np.ndarray, click: np.ndarray,
                             min_contrast: float = MIN_CONTRAST) -> np.ndarray:
    """``mask`` (bool, on ``image``'s grid) without the voxels on the surroundings' side of a
    clear intensity step (at least ``min_contrast`` interquartile ranges of the ring), the part
    holding ``click`` (kji in the arrays) kept; ``mask`` as it is where the step is not clear or
    the click's voxel would go. ``image`` should reach ``RING_PX`` past the mask in-plane (the
    ring is cut where it does not)."""
    inside = clicks_inside(np.asarray(click, dtype=float)[None], np.ones(1), 1, mask.shape)
    if not mask.any() or not inside:
        return mask
    index = inside[0][1]
    ring = ndimage.binary_dilation(mask, IN_PLANE, iterations=RING_PX) & ~mask
    if not ring.any():
        return mask
    values = image.astype(np.float32, copy=False)
    surroundings = float(np.median(values[ring]))
    quartile_1, quartile_3 = np.percentile(values[ring], [25, 75])
    for lesion in _lesion_levels(values, mask, index):
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


def _lesion_levels(values: np.ndarray, mask: np.ndarray, index: tuple[int, ...]) -> list[float]:
    """The lesion's level as read inside the mask (eroded by one voxel in-plane, where that holds
    ``MIN_CORE_VOXELS``), then at the click's 3 x 3 pixels: a mask mostly of surroundings (a thick
    rim around a small nodule) has the surroundings' median inside."""
    core = ndimage.binary_erosion(mask, IN_PLANE)
    levels = [float(np.median(values[core]))] if np.count_nonzero(core) >= MIN_CORE_VOXELS else []
    k, j, i = index
    levels.append(float(np.median(values[k, max(0, j - 1):j + 2, max(0, i - 1):i + 2])))
    return levels
