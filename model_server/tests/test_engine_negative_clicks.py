"""Negative clicks the 3D model does not honour (``engine.negative_clicks``): what a negative click
removes from the model's mask, and what it must leave; what a 2D pathway's cut gets back
(``spare_believed_voxels``)."""

from __future__ import annotations

import numpy as np
import pytest

from sam3d.data.clicks import next_click
from sam3d.data.phantoms import case_seed, generate_case
from sam3d.engine.negative_clicks import (RIM_REACH_MM, doubt_reads_box_object, honour_negative_clicks, spare_believed_voxels,
                                         squared_distance_mm)
from sam3d.engine.predictor import Predictor
from sam3d.engine.session import Session
from sam3d.evaluate.simulation import clicked_object, first_box
from sam3d.model.checkpoint import BUNDLED_MODELS

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


def _cut() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability, before, after): the mask before is the bar; a 2D cut for a negative click at
    i = 30 (probability 0.2 there) removed i >= 20 on slice 2, where the model says 0.9 for
    i < 28 and 0.2 beyond."""
    probability = np.zeros(SHAPE, dtype=np.float32)
    probability[1:4, 2:7, :] = 0.9
    probability[2, 2:7, 28:] = 0.2
    before = probability > 0.1
    after = before.copy()
    after[2, :, 20:] = False
    return probability, before, after


def test_a_2d_cut_gives_back_what_the_model_believes_clearly_more_than_the_click():
    probability, before, after = _cut()
    result = spare_believed_voxels(probability, before, after, np.array([[2, 4, 30]], dtype=float), np.array([0]))
    np.testing.assert_array_equal(result[2, :, 20:28], before[2, :, 20:28])  # 0.9 > 1.5 x 0.2: given back
    assert not result[2, :, 28:].any()  # as doubtful as the click: stays cut
    np.testing.assert_array_equal(result[[1, 3]], after[[1, 3]])


def test_a_cut_at_a_click_the_model_believes_gives_nothing_back():
    probability, before, after = _cut()
    probability[2, 2:7, 28:] = 0.7  # 1.5 x 0.7 is above every probability
    result = spare_believed_voxels(probability, before, after, np.array([[2, 4, 30]], dtype=float), np.array([0]))
    np.testing.assert_array_equal(result, after)


def test_no_cut_is_spared_where_no_crop_covers_or_no_negative_click_was_answered():
    probability, before, after = _cut()
    click = np.array([[2, 4, 30]], dtype=float)
    uncovered = np.full(SHAPE, -1.0, dtype=np.float32)
    np.testing.assert_array_equal(spare_believed_voxels(uncovered, before, after, click, np.array([0])), after)
    np.testing.assert_array_equal(spare_believed_voxels(probability, before, after, click, np.array([1])), after)
    kept_click = np.array([[2, 4, 5]], dtype=float)  # a negative click the answer did not remove
    np.testing.assert_array_equal(spare_believed_voxels(probability, before, after, kept_click, np.array([0])), after)


def _doubted_shell() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability, distance from the centre, centre): a ball whose core the model believes (0.9)
    and whose outer shell, from 7 to 10 mm, it doubts (0.6)."""
    centre = np.array([15.0, 15.0, 15.0])
    distance = np.sqrt(squared_distance_mm((31, 31, 31), centre, SPACING))
    probability = np.where(distance <= 7, 0.9, np.where(distance <= 10, 0.6, 0.0)).astype(np.float32)
    return probability, distance, centre


def test_a_click_on_the_mask_s_rim_takes_only_what_lies_near_it():
    """A negative click on the doubted shell of an object with a positive click at its centre
    corrects the rim there and removes only the shell within ``RIM_REACH_MM`` of it. The rest of
    the shell, as doubtful and nearer the negative click than the positive one, stays (the rule
    before took the whole connected half of the shell)."""
    probability, distance, centre = _doubted_shell()
    mask = probability > 0.5
    click = centre + np.array([0.0, 0.0, 9.0])
    result = honour_negative_clicks(probability, mask, np.stack([centre, click]), np.array([1, 0]), SPACING)
    removed = np.argwhere(mask & ~result)
    assert not result[tuple(click.astype(int))]
    assert np.sqrt(((removed - click) ** 2).sum(axis=1)).max() <= RIM_REACH_MM
    far_shell = tuple((centre + np.array([0.0, 7.0, 6.0])).astype(int))  # 7.6 mm from the click, 9.2 from the centre
    assert mask[far_shell] and result[far_shell]
    np.testing.assert_array_equal(result[distance <= 7], mask[distance <= 7])


def test_without_a_positive_click_the_doubted_shell_goes_whole():
    """A box's object, no positive click: a negative click on the doubted shell takes all of it,
    the believed core stays (a box's answer often holds a thin halo of false positives all round;
    with the rim's reach it would go 4 mm per click)."""
    probability, distance, centre = _doubted_shell()
    mask = probability > 0.5
    click = (centre + np.array([0.0, 0.0, 9.0]))[None]
    result = honour_negative_clicks(probability, mask, click, np.array([0]), SPACING)
    assert not result[distance > 7].any()
    np.testing.assert_array_equal(result[distance <= 7], mask[distance <= 7])


def _assert_the_click_takes_the_whole_region(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                                             radius_mm: float, region: np.ndarray, click: np.ndarray) -> None:
    """A ball of ``radius_mm`` at the array's centre the model believes (0.9), with ``region``
    beyond it doubted (0.4); a positive click at the centre and a negative one at ``click``: the
    whole region goes and the ball stays."""
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    inside = squared_distance_mm(shape, centre, spacing) <= radius_mm ** 2
    probability = np.where(inside, 0.9, np.where(region, 0.4, 0.0)).astype(np.float32)
    mask = probability > 0.3
    result = honour_negative_clicks(probability, mask, np.stack([centre, click]), np.array([1, 0]), spacing)
    assert not result[region & ~inside].any()
    np.testing.assert_array_equal(result[inside], mask[inside])


def test_a_click_on_a_lobe_the_model_doubts_takes_the_whole_lobe():
    """A 9 mm thick lobe grown out of the ball's side: a negative click in the lobe lies in the
    mask's outer part, yet what it marks is a lobe, not a layer at the rim, so the whole lobe goes
    (a reach of ``RIM_REACH_MM`` would leave the lobe's far corners)."""
    lobe = np.zeros((47, 47, 47), dtype=bool)
    lobe[19:28, 19:28, 34:43] = True
    _assert_the_click_takes_the_whole_region(lobe.shape, SPACING, 11.0, lobe, np.array([23.0, 23.0, 38.0]))


def test_a_click_on_a_thin_strand_running_away_from_the_mask_takes_the_whole_strand():
    """A thin strand (2.1 mm thick, 2.5 mm slices) running from the ball's rim across 15 slices:
    the click on the strand near the ball lies in the mask's outer part and the strand is thin,
    but it does not lie along the rest of the mask, so all of it goes, on every slice (a reach of
    ``RIM_REACH_MM`` would take the clicked slice's piece alone)."""
    strand = np.zeros((25, 81, 81), dtype=bool)
    strand[6:21, 39:42, 54:73] = True
    _assert_the_click_takes_the_whole_region(strand.shape, (2.5, 0.7, 0.7), 10.0, strand, np.array([12.0, 40.0, 62.0]))


def test_a_lobe_cut_by_the_array_s_face_is_read_as_going_on_beyond_it():
    """The lobe of the test above, the arrays ending 4 voxels into it (the crops' reach): the part
    the array shows is 4 mm deep from the ball, and it may go on beyond the face, so it is a lobe
    and goes whole, as it does where the array shows all of it (read with the face as the lobe's
    edge, it was a 2 mm layer and the click took only what lay within 4 mm)."""
    shape = (47, 47, 38)
    lobe = np.zeros(shape, dtype=bool)
    lobe[19:28, 19:28, 34:] = True
    centre = np.array([23.0, 23.0, 23.0])
    inside = squared_distance_mm(shape, centre, SPACING) <= 11.0 ** 2
    probability = np.where(inside, 0.9, np.where(lobe, 0.4, 0.0)).astype(np.float32)
    mask = probability > 0.3
    click = np.array([23.0, 23.0, 37.0])
    result = honour_negative_clicks(probability, mask, np.stack([centre, click]), np.array([1, 0]), SPACING)
    assert not result[lobe & ~inside].any()
    np.testing.assert_array_equal(result[inside], mask[inside])


@pytest.mark.skipif(not BUNDLED_MODELS["default"].is_file(), reason="the bundled default model is not there")
def test_a_negative_click_after_a_box_keeps_a_lesion_the_3d_model_does_not_see():
    """Unseen design dev21 case 9: the lesion's 3D box, then the protocol's negative click on the
    2D pathway's overgrown answer. The 3D model does not see this faint lesion (its mask does not
    agree with the box's), so its doubt covers the lesion too: read as the click's mark it took
    the whole mask, lesion and all (566 lesion voxels to 0). The 2D pathway's cut stands alone."""
    image, label = generate_case(case_seed(21, 9))  # `sam3d phantoms --seed 21`, the unseen design dev21
    _, target = clicked_object(label.array == 2, 0, "phantom_009")
    session = Session(Predictor.load("default", device="cpu"), image.array, image.spacing)
    session.interact(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), box_kji=first_box(target, "box3d", 0.0, image.spacing))
    boxed = np.count_nonzero(session.mask & target)
    point, kind = next_click(session.mask, target, image.spacing)
    assert kind == 0 and boxed > 0.5 * np.count_nonzero(target)
    session.interact([point], [0])
    assert not session.mask[tuple(int(c) for c in point)]
    assert np.count_nonzero(session.mask & target) >= 0.9 * boxed


def test_a_box_s_object_is_read_from_the_3d_model_s_doubt_where_it_sees_it_and_the_cut_leaves_most():
    """``doubt_reads_box_object`` on a 100-voxel mask: a model that believes none of it (a faint
    lesion it does not see) is not read; one that believes a fifth, or under a tenth (a leak the
    model doubts around the part it sees), is, while the cut leaves half; voxels no crop covers
    count for neither share."""
    mask = np.zeros((1, 10, 20), dtype=bool)
    mask[0, :, :10] = True
    unseen = np.where(mask, 0.01, 0.0).astype(np.float32)
    seen = unseen.copy()
    seen[0, :2, :10] = 0.9  # a fifth believed
    small_cut, large_cut = mask.copy(), mask.copy()
    small_cut[0, 8:, :10] = False  # 20 of 100 voxels
    large_cut[0, 3:, :10] = False  # 70
    assert not doubt_reads_box_object(unseen, mask, small_cut)
    assert doubt_reads_box_object(seen, mask, small_cut)
    assert not doubt_reads_box_object(seen, mask, large_cut)
    barely_seen = unseen.copy()
    barely_seen[0, 0, :8] = 0.9  # under a tenth believed
    assert doubt_reads_box_object(barely_seen, mask, small_cut)
    uncovered = seen.copy()
    uncovered[0, 2:, :10] = -1.0  # a crop covers only the believed fifth: all of that seen, none of it cut
    assert doubt_reads_box_object(uncovered, mask, large_cut)
