"""A first click's mask carried to the extent of a lesion too subtle for the 3D model's input.

The 3D model sees a crop scaled by its own 0.5 / 99.5 percentiles. A lesion 20-50 HU off its organ,
in a crop that holds air and bone, is then 0.02 of the model's input range; every lesion of the
training generator stood 0.14 or more (docs/BENCHMARKS.md, "Why the unseen-design phantoms'
first click stays low"). On such lesions the model answers a blob of a typical size that does not
follow the lesion's edge. The image itself still tells the lesion apart once its noise is
smoothed: the rule here reads, on the image smoothed by ``SMOOTH_MM``,

- the lesion's level at the click (the median of the click's 3 x 3 in-plane pixels) and its
  spread (the robust standard deviation of the 5 x 5 x 3 voxels around the click);
- the surroundings' level: the median of a shell ``SHELL_MM`` away from the model's mask.

Where the two levels differ by less than ``MAX_FIELD_FRACTION`` of the crop's percentile range
(subtle for the model) yet by at least ``MIN_SEPARATION`` spreads (clear in the image), the mask
becomes the voxels nearer the lesion's level than the surroundings' (and not past the lesion's
level by more than half the step), within ``REACH_MM`` of the model's mask, opened by one pixel
in-plane, connected to the click, holes filled. Elsewhere - a clear step the model already sees,
such as a nodule in the lung, or no step the image shows - the mask stays as it is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..data.clicks import label_objects
from .positive_clicks import clicks_inside

SMOOTH_MM = 1.0  # Gaussian smoothing of the image before its levels are read (sigma, mm)
SHELL_MM = (3.0, 12.0)  # the surroundings: this far from the model's mask (mm, inner and outer)
REACH_MM = 12.0  # the new mask stays within this distance of the model's mask (mm)
MIN_SEPARATION = 2.0  # the least |lesion - surroundings| in the click's robust standard deviations
# the largest |lesion - surroundings| as a fraction of the crop's percentile range for the rule to
# apply: under the least contrast of the training generator's lesions (0.14), where the model is blind
MAX_FIELD_FRACTION = 0.14

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def _robust_std(values: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def grow_to_subtle_lesion(image: np.ndarray, spacing: Sequence[float], mask: np.ndarray, click: np.ndarray,
                          field_range: float) -> np.ndarray:
    """``mask`` (bool, on ``image``'s grid, spacing kji in mm) carried to the extent of the subtle
    lesion ``click`` (kji) lies in, or ``mask`` as it is where the rule does not apply (see the
    module's docstring). ``field_range`` is the 3D model crop's percentile range (its input's
    scale); ``image`` should reach ``REACH_MM`` + ``SHELL_MM[1]`` past the mask (it is cut where
    it does not)."""
    inside = clicks_inside(np.asarray(click, dtype=float)[None], np.ones(1), 1, mask.shape)
    if not mask.any() or not inside or not field_range > 0:
        return mask
    k, j, i = inside[0][1]
    sigma = [SMOOTH_MM / s for s in spacing]
    smoothed = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    lesion = float(np.median(smoothed[k, max(0, j - 1):j + 2, max(0, i - 1):i + 2]))
    spread = _robust_std(smoothed[max(0, k - 1):k + 2, max(0, j - 2):j + 3, max(0, i - 2):i + 3].ravel())
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
    shell = (distance > SHELL_MM[0]) & (distance <= SHELL_MM[1])
    if not shell.any():
        return mask
    surroundings = float(np.median(smoothed[shell]))
    step = abs(lesion - surroundings)
    if step >= MAX_FIELD_FRACTION * field_range or step < MIN_SEPARATION * max(spread, 1e-6):
        return mask
    nearer_lesion = np.abs(smoothed - lesion) < step / 2
    candidate = ndimage.binary_opening(nearer_lesion & (distance <= REACH_MM), _IN_PLANE)
    components, _ = label_objects(candidate)
    if not components[k, j, i]:
        return mask
    return ndimage.binary_fill_holes(components == components[k, j, i])
