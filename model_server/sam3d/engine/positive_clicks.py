"""Positive clicks the 2D pathway answers with a leak.

The 2D pathway answers a positive click on a mask it corrects by segmenting the clicked slice
again from the slice mask's box widened to the click; where that box reaches past the lesion,
LiteMedSAM follows the organ's edge instead, and one click adds hundreds or thousands of voxels
beside a tumour (on complex chest dev91, 3098 voxels for 247 of the tumour's: docs/BENCHMARKS.md,
"Positive clicks kept where the 3D model believes them"). ``keep_believed_additions`` keeps of
such an addition only what the 3D model believes at least half as much as the clicked voxel
(``BELIEF_FRACTION``), connected to the click: the mirror of
``negative_clicks.honour_negative_clicks``. Left alone: a click on a slice the mask does not
cover yet (the 2D pathway extends the mask there from the nearest covered slice's box, not from
a box widened past the lesion), and any click while the 3D model's own mask disagrees with the
object's (Dice below ``MIN_AGREEMENT`` where its crops cover; the caller checks ``agreement``
once for this rule and ``negative_clicks.spare_believed_voxels``): a model that does not see
the object the user is building cannot say what belongs to it. Without these two, the rule cost
a small real tumour the 3D model misses (brain2) and synthetic lesions it half sees more than it
saved. ``judgeable_additions`` says beforehand whether the rule can apply at all, so that no
decoder runs for nothing.
"""

from __future__ import annotations

import numpy as np

from ..data.clicks import label_objects

# what of a click's addition stays: at least this fraction of the model's probability at the click
# (chosen on development data over 0.33, 0.75 and 1: docs/BENCHMARKS.md)
BELIEF_FRACTION = 0.5
# the least Dice between the 3D model's mask and the object's for the model to judge (over 0.5 and 0.6)
MIN_AGREEMENT = 0.7


def keep_believed_additions(probability: np.ndarray, before: np.ndarray, after: np.ndarray, points: np.ndarray,
                            labels: np.ndarray) -> np.ndarray:
    """``after`` (the 2D pathway's answer, bool) with what it added to ``before`` (the object's
    mask before the clicks) kept only where the 3D model believes it, for each positive click
    the addition holds. Apply only where ``agreement(probability, before) >= MIN_AGREEMENT``.

    ``probability``: the 3D model's foreground probability on the same grid, negative where no
    crop covers a voxel (there the addition stays); ``points``: kji of the object's clicks
    relative to the arrays, ``labels`` 1 / 0. A positive click whose voxel the addition does not
    hold, that lies on a slice (axis 0) ``before`` does not cover, or that no crop covers, leaves
    the part of the addition connected to it as it is. What the answer removed (negative clicks)
    is not touched."""
    added = after & ~before
    kept = np.zeros_like(added)
    judged = False
    for _, index in clicks_inside(points, labels, 1, added.shape):
        if not added[index]:
            continue
        if probability[index] < 0 or not _judgeable(before, index):
            believed = added
        else:
            level = BELIEF_FRACTION * float(probability[index])
            believed = added & ((probability >= level) | (probability < 0))
            judged = True
        components, _ = label_objects(believed | before)
        kept |= (components == components[index]) & added
    if not judged:
        return after
    return after & ~(added & ~kept)


def judgeable_additions(before: np.ndarray, after: np.ndarray, points: np.ndarray, labels: np.ndarray) -> bool:
    """Whether ``keep_believed_additions`` can change ``after`` whatever the model's probability:
    a positive click whose voxel ``after`` adds to ``before``, on a slice ``before`` covers."""
    return any(after[index] and not before[index] and _judgeable(before, index)
               for _, index in clicks_inside(points, labels, 1, after.shape))


def _judgeable(before: np.ndarray, index: tuple[int, ...]) -> bool:
    """Whether an added voxel is judged: its slice (axis 0) of ``before`` is covered."""
    return bool(before[index[0]].any())


def agreement(probability: np.ndarray, mask: np.ndarray) -> float:
    """Dice between the model's mask (probability >= 0.5) and ``mask`` where a crop covers."""
    covered = probability >= 0
    model = covered & (probability >= 0.5)
    ours = covered & mask
    total = np.count_nonzero(model) + np.count_nonzero(ours)
    return 2.0 * np.count_nonzero(model & ours) / total if total else 0.0


def clicks_inside(points: np.ndarray, labels: np.ndarray, label: int,
                  shape: tuple[int, ...]) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """(click, its voxel index rounded) of each click of ``label`` whose voxel lies inside an array of ``shape``."""
    inside = []
    for point, click_label in zip(points, labels):
        index = tuple(int(round(float(c))) for c in point)
        if click_label == label and all(0 <= c < n for c, n in zip(index, shape)):
            inside.append((point, index))
    return inside
