"""Negative clicks the 3D model does not honour (``engine.negative_clicks``): what a negative click
removes from the model's mask, and what it must leave."""

from __future__ import annotations

import numpy as np

from sam3d.engine.negative_clicks import honour_negative_clicks

SHAPE = (5, 9, 40)
SPACING = (1.0, 1.0, 1.0)


def _bar() -> tuple[np.ndarray, np.ndarray]:
    """A bar along i (the mask) whose probability falls from 0.95 at i = 0 to 0.55 at i = 39."""
    probability = np.zeros(SHAPE, dtype=np.float32)
    probability[1:4, 2:7, :] = np.linspace(0.95, 0.55, SHAPE[2], dtype=np.float32)
    return probability, probability > 0.5


def test_a_negative_click_removes_the_part_the_model_is_no_surer_of():
    probability, mask = _bar()
    points = np.array([[2, 4, 2], [2, 4, 30]], dtype=float)
    result = honour_negative_clicks(probability, mask, points, np.array([1, 0]), SPACING)
    assert not result[2, 4, 30]
    assert not result[:, :, 30:].any()  # every voxel of lower probability, all connected to the click
    np.testing.assert_array_equal(result[:, :, :30], mask[:, :, :30])  # the surer part stays whole


def test_a_negative_click_never_takes_what_lies_nearer_a_positive_click():
    probability, mask = _bar()
    # the user's positive click at i = 36 (where the model is least sure) and a negative one at i = 24
    points = np.array([[2, 4, 2], [2, 4, 36], [2, 4, 24]], dtype=float)
    result = honour_negative_clicks(probability, mask, points, np.array([1, 1, 0]), SPACING)
    assert not result[2, 4, 24] and not result[:, :, 24:30].any()  # nearer the negative click: removed
    np.testing.assert_array_equal(result[:, :, 30:], mask[:, :, 30:])  # nearer the positive at 36: kept
    np.testing.assert_array_equal(result[:, :, :24], mask[:, :, :24])


def test_nearer_is_measured_in_millimetres():
    probability, mask = _bar()
    labels = np.array([1, 0])
    # 1 mm voxels, both clicks on slice 2: everything from the negative click to the bisector goes
    thin = honour_negative_clicks(probability, mask, np.array([[2, 4, 36], [2, 4, 24]], dtype=float), labels,
                                  SPACING)
    assert not thin[1:4, :, 24:30].any()
    # 4 mm slices, the negative click on slice 1: slice 3 lies 8 mm from it and 4 mm from the
    # positive click, so it keeps all of its mask
    thick = honour_negative_clicks(probability, mask, np.array([[2, 4, 36], [1, 4, 24]], dtype=float), labels,
                                   (4.0, 1.0, 0.5))
    assert not thick[1, 4, 24]
    np.testing.assert_array_equal(thick[3], mask[3])


def test_clicks_the_mask_does_not_hold_or_no_crop_covers_change_nothing():
    probability, mask = _bar()
    outside_mask = np.array([[0, 0, 5]], dtype=float)
    outside_arrays = np.array([[2, 4, 60]], dtype=float)
    for point in (outside_mask, outside_arrays):
        np.testing.assert_array_equal(honour_negative_clicks(probability, mask, point, np.array([0]), SPACING), mask)
    uncovered = np.where(np.arange(SHAPE[2]) >= 20, np.float32(-1.0), probability)  # no crop there
    points = np.array([[2, 4, 30]], dtype=float)
    np.testing.assert_array_equal(honour_negative_clicks(uncovered, mask, points, np.array([0]), SPACING), mask)


def test_positive_clicks_alone_change_nothing():
    probability, mask = _bar()
    points = np.array([[2, 4, 2], [2, 4, 30]], dtype=float)
    np.testing.assert_array_equal(honour_negative_clicks(probability, mask, points, np.array([1, 1]), SPACING), mask)
