"""Simulated clicks: the paper's training clicks, its first evaluation click, and correction clicks.

All points are kji voxel indices (float arrays) of the array they were drawn from; labels are
1 (positive, inside the target) and 0 (negative, outside).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def training_clicks(
    label_crop: np.ndarray, rng: np.random.Generator, n_fg: int = 10, n_any: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's training prompt: ``n_fg`` voxels drawn from the tumor inside the crop plus
    ``n_any`` voxels drawn from anywhere in the crop.

    The paper leaves them unlabelled; here each is labelled 1 inside the tumor, 0 outside.
    When the crop holds no tumor, all ``n_fg + n_any`` come from anywhere. Returns points
    [N, 3] float32 (kji) and labels [N] int64.
    """
    target = np.asarray(label_crop) > 0
    tumor = np.argwhere(target)
    if len(tumor):
        from_tumor = tumor[rng.integers(0, len(tumor), size=n_fg)]
        n_anywhere = n_any
    else:
        from_tumor = np.zeros((0, 3), dtype=np.int64)
        n_anywhere = n_fg + n_any
    anywhere = rng.integers(0, target.shape, size=(n_anywhere, 3))
    points = np.concatenate([from_tumor, anywhere]).astype(np.int64)
    labels = target[tuple(points.T)].astype(np.int64)
    return points.astype(np.float32), labels


def first_click(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The paper's evaluation click: a tumor voxel drawn at random. Returns [3] float (kji)."""
    tumor = np.argwhere(np.asarray(gt) > 0)
    if not len(tumor):
        raise ValueError("first_click: the ground truth holds no foreground voxel to click")
    return tumor[rng.integers(len(tumor))].astype(np.float64)


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (26-connected) of a bool mask: (int32 labels, count). The objects a
    user clicks one by one: lesions of a reference, of a prior mask, of a phantom."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return components.astype(np.int32, copy=False), int(count)


def centre_click(gt: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """The deterministic first click: the foreground voxel farthest from the background
    (Euclidean distance in mm when ``spacing`` is given). Returns [3] float (kji)."""
    target = np.asarray(gt) > 0
    if not target.any():
        raise ValueError("centre_click: the ground truth holds no foreground voxel to click")
    return _deepest_voxel(target, spacing)


def rim_click(gt: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """A click on the object's rim: its edge voxel (one with a background 6-neighbour, the array
    border counting as background) farthest from its deepest voxel (``centre_click``; distances
    in mm when ``spacing`` is given). Returns [3] float (kji)."""
    target = np.asarray(gt) > 0
    deepest = centre_click(target, spacing)
    edge = np.argwhere(target & ~ndimage.binary_erosion(target))
    scale = np.ones(3) if spacing is None else np.asarray(spacing, dtype=np.float64)
    return edge[np.argmax(np.linalg.norm((edge - deepest) * scale, axis=1))].astype(np.float64)


def next_click(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, int] | None:
    """The correction click a user makes next: at the centre of the largest error region.

    Error regions are the connected components of the misses (gt and not pred: a positive
    click, label 1) and of the false positives (pred and not gt: a negative click, label 0);
    the click goes to the voxel of the largest one farthest from its boundary. A miss wins a
    tie. Returns (point [3] float kji, label), or None when ``pred`` equals ``gt``.
    """
    pred = np.asarray(pred) > 0
    gt = np.asarray(gt) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"next_click: prediction shape {pred.shape} != ground truth shape {gt.shape}")
    best: tuple[int, int, np.ndarray] | None = None  # (size, label, component mask)
    for error, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        components, count = ndimage.label(error)
        if not count:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes))
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), label, components == largest + 1)
    if best is None:
        return None
    return _deepest_voxel(best[2], spacing), best[1]


def _deepest_voxel(region: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    """The voxel of ``region`` farthest from its boundary; the array border counts as boundary
    (the first such voxel in C order on ties)."""
    boxes = ndimage.find_objects(region.astype(np.uint8))
    box = boxes[0]
    padded = np.pad(region[box], 1)  # background all around, so the array border is boundary
    distance = ndimage.distance_transform_edt(padded, sampling=spacing)
    index = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([index[a] - 1 + box[a].start for a in range(3)], dtype=np.float64)
