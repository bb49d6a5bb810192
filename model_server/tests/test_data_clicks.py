"""Click simulation: training clicks, first clicks and correction clicks land where they must."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from sam3d.data.clicks import centre_click, first_click, next_click, rim_click, training_clicks


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius ** 2


def at(mask: np.ndarray, point: np.ndarray) -> bool:
    return bool(mask[tuple(np.round(point).astype(int))])


def test_training_clicks_ten_in_the_tumor_twenty_anywhere_labelled_by_the_mask():
    label = np.zeros((16, 16, 16), np.uint8)
    label[ball(label.shape, (8, 8, 8), 3)] = 2  # any non-zero value is the target
    points, labels = training_clicks(label, np.random.default_rng(0))
    assert points.shape == (30, 3) and points.dtype == np.float32
    assert labels.shape == (30,) and labels.dtype == np.int64
    assert all(at(label > 0, p) for p in points[:10])
    np.testing.assert_array_equal(labels[:10], 1)
    expected = [int(at(label > 0, p)) for p in points]
    np.testing.assert_array_equal(labels, expected)
    assert (points >= 0).all() and (points < 16).all()
    assert len({tuple(p) for p in points[10:]}) > 15  # spread over the crop, not one voxel
    again, _ = training_clicks(label, np.random.default_rng(0))
    np.testing.assert_array_equal(points, again)


def test_training_clicks_without_tumor_all_come_from_anywhere():
    points, labels = training_clicks(np.zeros((8, 9, 10)), np.random.default_rng(1), n_fg=4, n_any=6)
    assert points.shape == (10, 3)
    np.testing.assert_array_equal(labels, 0)
    assert (points < [8, 9, 10]).all()


def test_rim_click_is_the_edge_voxel_farthest_from_the_deepest():
    gt = ball((21, 21, 30), (10, 10, 10), 5)  # deepest at its centre
    gt[10, 10, 10:26] = True  # and a thin arm along i: its tip is the rim click
    np.testing.assert_array_equal(rim_click(gt), [10, 10, 25])
    # in mm, 4 mm slices: the ball's pole along k (20 mm away) lies farther than the arm's tip (15 mm)
    np.testing.assert_array_equal(rim_click(gt, spacing=(4.0, 1.0, 1.0)), [5, 10, 10])


def test_first_click_is_a_tumor_voxel_and_centre_click_the_deepest():
    gt = ball((20, 20, 20), (9, 10, 11), 4)
    rng = np.random.default_rng(5)
    for _ in range(20):
        assert at(gt, first_click(gt, rng))
    np.testing.assert_array_equal(centre_click(gt), [9, 10, 11])
    # anisotropic voxels: distance is measured in mm
    # a 5^3 cube and a 3 x 9 x 9 slab: in voxels the cube is deeper, in mm (3 mm slices) the slab
    gt = np.zeros((12, 24, 24), bool)
    gt[1:6, 1:6, 1:6] = True
    gt[8:11, 10:19, 10:19] = True
    np.testing.assert_array_equal(centre_click(gt), [3, 3, 3])
    np.testing.assert_array_equal(centre_click(gt, spacing=(3.0, 1.0, 1.0)), [9, 14, 14])
    with pytest.raises(ValueError, match="no foreground"):
        first_click(np.zeros((3, 3, 3)), rng)
    with pytest.raises(ValueError, match="no foreground"):
        centre_click(np.zeros((3, 3, 3)))


def test_next_click_is_positive_in_the_centre_of_the_largest_miss():
    big, small = ball((24, 24, 24), (6, 6, 6), 4), ball((24, 24, 24), (17, 17, 17), 3)
    gt = big | small
    pred = small.copy()
    pred[17, 17, 17] = True
    click, label = next_click(pred, gt)
    assert label == 1
    np.testing.assert_array_equal(click, [6, 6, 6])


def test_next_click_is_negative_in_the_largest_false_positive():
    gt = ball((24, 24, 24), (8, 8, 8), 4)
    leak = ball((24, 24, 24), (18, 18, 18), 4)
    pred = gt.copy()
    pred[8, 8, 8] = False  # a one-voxel miss, smaller than the leak
    pred |= leak
    click, label = next_click(pred, gt)
    assert label == 0
    np.testing.assert_array_equal(click, [18, 18, 18])


def test_next_click_none_when_perfect_and_miss_wins_a_tie():
    gt = ball((10, 10, 10), (5, 5, 5), 2)
    assert next_click(gt.copy(), gt) is None
    pred = gt.copy()
    pred[5, 5, 5] = False
    pred[0, 0, 0] = True
    click, label = next_click(pred, gt)
    assert label == 1
    np.testing.assert_array_equal(click, [5, 5, 5])
    with pytest.raises(ValueError, match="shape"):
        next_click(gt[:-1], gt)


@settings(max_examples=60, deadline=None)
@given(
    pred=arrays(bool, (6, 7, 8), elements=st.booleans()),
    gt=arrays(bool, (6, 7, 8), elements=st.booleans()),
    spacing=st.sampled_from([None, (3.0, 1.0, 0.7)]),
)
def test_next_click_always_lands_in_the_largest_error_region_with_the_right_label(pred, gt, spacing):
    result = next_click(pred, gt, spacing=spacing)
    if np.array_equal(pred, gt):
        assert result is None
        return
    click, label = result
    miss, false_positive = gt & ~pred, pred & ~gt
    region = miss if label == 1 else false_positive
    assert at(region, click)
    components, _ = ndimage.label(region)
    clicked = components == components[tuple(click.astype(int))]
    largest = max(
        (np.bincount(ndimage.label(error)[0].ravel())[1:].max() for error in (miss, false_positive) if error.any()),
    )
    assert clicked.sum() == largest
