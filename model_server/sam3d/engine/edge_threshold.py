"""The threshold of a first click's answer, chosen where the mask's boundary meets the image's edge.

The 3D model's foreground probability after one click is often right in shape but wrong in
extent: on a large mass it holds a core of the mass at 0.5 and the rest of it at 0.02-0.3, and on
a small nodule its 0.5 mask reaches past the nodule (docs/BENCHMARKS.md, "A first click's
threshold chosen by the image's edges"). Which extent is the object's is a question the image
answers: the object's own boundary is where the intensity steps.
So, on the first crop of an object's first click, masks are taken at ``CANDIDATES`` (the connected
part of ``probability > t`` that holds the click) and each scored by the mean gradient magnitude of
the crop's normalised image (smoothed, sigma one crop voxel) on its boundary (the voxels either side
of it). Another threshold than 0.5 is taken only where its boundary is clearly on an edge: its
score is the highest (the candidate nearest 0.5 wins a tie), at least ``MIN_GAIN`` times the 0.5
mask's and at least ``MIN_EDGE`` (crop intensities run
0..1 between their 0.5 / 99.5 percentiles, the ``percentile`` preset) - a lesion of like intensity
inside an organ has no such edge, and there the 0.5 mask stands. Chosen on the development sets only
(chest CT phantoms, real MRI, phantoms dev, synthetic validation).

The chosen mask's score also says who corrects the object: where its boundary lies on an edge
(at least ``MIN_CORRECTION_EDGE``; every threshold other than 0.5 does) the lesion stands out
and LiteMedSAM's 2D pathway, which follows image edges, answers its later clicks; where it does
not (a lesion of like intensity inside an organ) the 3D model does (docs/BENCHMARKS.md, "Who
corrects a first click's mask").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage  # connected parts, distance and smoothing on a 64^3 crop: a few ms each

DEFAULT_THRESHOLD = 0.5
CANDIDATES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05, 0.025)
MIN_GAIN = 1.1
MIN_EDGE = 0.06
MIN_CORRECTION_EDGE = 0.04  # a first mask whose boundary scores at least this is corrected by the 2D pathway


class EdgeChoice(NamedTuple):
    """A first click's threshold and whether its mask's boundary lies on an image edge."""

    threshold: float
    on_edge: bool


def click_component(foreground: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The connected part of ``foreground`` that holds ``point`` (continuous indices), or the
    part nearest to it where the point's voxel is background; all False where there is none."""
    return _part_at(ndimage.label(foreground)[0], point)


def clicked_parts(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that hold (or lie nearest to) one of ``points``: what a
    threshold other than 0.5 keeps of the crops' answer, so that it adds no blob elsewhere."""
    parts = ndimage.label(mask)[0]
    kept = np.zeros(mask.shape, dtype=bool)
    for point in points:
        kept |= _part_at(parts, point)
    return kept


def _part_at(parts: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The labelled part of ``parts`` (``ndimage.label``) at ``point``, or the nearest one."""
    if not parts.any():
        return np.zeros(parts.shape, dtype=bool)
    voxel = tuple(int(c) for c in _voxel(point, parts.shape))
    if not parts[voxel]:
        _, nearest = ndimage.distance_transform_edt(parts == 0, return_indices=True)
        voxel = tuple(int(axis[voxel]) for axis in nearest)
    return parts == parts[voxel]


def _voxel(point: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``point``'s voxel (rounded as ``round`` does, within the array), as ``_part_at`` takes it."""
    return np.array([min(max(round(float(c)), 0), n - 1) for c, n in zip(point, shape)])


def _region_of(foreground: np.ndarray, voxel: np.ndarray, pad: int = 2) -> tuple[slice, slice, slice]:
    """The box of ``foreground`` and of ``voxel``, ``pad`` voxels wider (within the array). Every
    candidate mask lies in it with its boundary ring, so the scores are those of the whole crop;
    on a small lesion's crop the labelling and morphology run on a few thousand voxels, not 64^3
    (a first click on a GPU is mostly this CPU work: docs/BENCHMARKS.md, "GPU")."""
    shape = np.asarray(foreground.shape)
    hits = np.argwhere(foreground)
    lo = np.minimum(hits.min(axis=0), voxel) if len(hits) else voxel
    hi = np.maximum(hits.max(axis=0), voxel) if len(hits) else voxel
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def boundary_edge(gradient: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``gradient`` on the voxels either side of ``mask``'s boundary (0 for an empty mask)."""
    if not mask.any():
        return 0.0
    ring = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    return float(gradient[ring].mean())


def edge_threshold(image: np.ndarray, probability: np.ndarray, point: np.ndarray) -> EdgeChoice:
    """The threshold for one crop's ``probability`` [S, S, S] after a click at ``point`` (crop kji):
    ``DEFAULT_THRESHOLD`` unless a candidate's boundary lies clearly on the edge of ``image`` (the
    crop's normalised intensities, same shape), and whether the chosen mask's boundary lies on an
    edge (``MIN_CORRECTION_EDGE``) - see the module's docstring."""
    smoothed = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), 1.0)
    gradient = np.sqrt(sum(axis ** 2 for axis in np.gradient(smoothed)))
    voxel = _voxel(point, probability.shape)
    region = _region_of(probability > min(CANDIDATES), voxel)  # the candidates' parts and rings, no more
    gradient, probability = gradient[region], np.asarray(probability)[region]
    point = voxel - [part.start for part in region]  # rounded before the shift, as _part_at rounds
    scores = {t: boundary_edge(gradient, click_component(probability > t, point)) for t in CANDIDATES}
    best = max(sorted(CANDIDATES, key=lambda t: abs(t - DEFAULT_THRESHOLD)), key=lambda t: scores[t])
    if best == DEFAULT_THRESHOLD or scores[best] < max(MIN_EDGE, MIN_GAIN * scores[DEFAULT_THRESHOLD]):
        best = DEFAULT_THRESHOLD
    return EdgeChoice(best, scores[best] >= MIN_CORRECTION_EDGE)
