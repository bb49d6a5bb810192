"""A positive click that no pathway answers still changes the mask (``unanswered_clicks``)."""

from __future__ import annotations

import numpy as np
import pytest

from sam3d.data.clicks import next_click
from sam3d.data.phantoms import DESIGNS, case_seed
from sam3d.engine.negative_clicks import RIM_REACH_MM, squared_distance_mm
from sam3d.engine.predictor import Predictor
from sam3d.engine.session import Session
from sam3d.engine.unanswered_clicks import region_at_click
from sam3d.evaluate.simulation import clicked_object, first_box
from sam3d.model.checkpoint import BUNDLED_MODELS

SPACING = (2.0, 1.0, 1.0)


def _disc_lesion(level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, lesion, mask): a cylinder of radius 10 px and ``level`` in a background of 0, on
    9 slices, with a partial-volume ring (half the level) of radius 10-12; the mask is the
    lesion less its outer 2 px on one side (i > 30): the layer a rim click marks."""
    k, j, i = np.ogrid[:9, :48, :48]
    radius = np.sqrt((j - 24.0) ** 2 + (i - 24.0) ** 2) + 0 * k
    lesion = radius <= 10
    image = np.where(lesion, level, np.where(radius <= 12, level / 2, 0.0)).astype(np.float32)
    mask = lesion & ~((radius > 8) & (i > 30))
    return image, lesion, mask


@pytest.mark.parametrize("level", [100.0, -100.0])
def test_a_rim_click_adds_the_missed_layer_near_it_and_no_background(level):
    """A click on the partial-volume rim beside the missed layer, on a brighter and on a darker
    lesion: the layer near the click comes (voxels at least as lesion-like as the rim), nothing
    of the background, nothing farther than the rim's reach."""
    image, lesion, mask = _disc_lesion(level)
    click = (4, 24, 35)  # radius 11: the rim, half the lesion's level
    window, added = region_at_click(image, SPACING, mask, click, np.zeros((0, 3)))
    result = np.zeros_like(mask)
    result[tuple(slice(a, b) for a, b in zip(*window))] = added
    assert result[click]
    missed = lesion & ~mask
    near = squared_distance_mm(mask.shape, click, SPACING) <= RIM_REACH_MM ** 2
    assert np.count_nonzero(missed & near) >= 10
    assert np.count_nonzero(result & missed) >= 0.8 * np.count_nonzero(missed & near)
    assert not (result & (image == 0)).any()
    assert not (result & ~near).any()


def test_voxels_nearer_a_negative_click_are_left_out():
    """A negative click 3 mm from the positive one: what lies nearer it stays out."""
    image, lesion, mask = _disc_lesion(100.0)
    click, negative = (4, 24, 35), np.array([[4, 21, 35]])
    window, added = region_at_click(image, SPACING, mask, click, negative)
    result = np.zeros_like(mask)
    result[tuple(slice(a, b) for a, b in zip(*window))] = added
    nearer_negative = squared_distance_mm(mask.shape, negative[0], SPACING) < squared_distance_mm(mask.shape, click, SPACING)
    assert result[click] and not (result & nearer_negative).any()
    assert (result & (lesion & ~mask)).any()


def test_a_click_far_from_the_mask_reads_its_own_level():
    """A click in a uniform region far from the mask (no mask voxel to read the lesion's level
    from): the region at the click's own level within the reach comes, not a brighter patch 3 mm
    away, which a level read as the lesion's (100) would take in."""
    image, lesion, mask = _disc_lesion(100.0)
    image[:, 40:, :] = 30.0
    patch = np.zeros_like(mask)
    patch[:, 42:47, 13:16] = True
    image[patch] = 60.0
    click = (4, 44, 10)
    window, added = region_at_click(image, SPACING, mask, click, np.zeros((0, 3)))
    result = np.zeros_like(mask)
    result[tuple(slice(a, b) for a, b in zip(*window))] = added
    assert result[click] and not (result & patch).any()
    assert np.count_nonzero(result) > 10


@pytest.mark.skipif(not BUNDLED_MODELS["default"].is_file(), reason="the bundled default model is not there")
def test_a_positive_click_on_the_rim_after_a_box_changes_the_mask():
    """Synthetic 93 case 3: the lesion's 3D box, then the protocol's clicks. Its second click is a
    positive one on a layer the box's answer misses; the 2D pathway's widened box does not hold
    it and the 3D model adds nothing there, so the same click came back three times, the mask
    unchanged. Now the click's voxel, and more of the lesion, are in the mask."""
    image, label = DESIGNS["synth"].generate(case_seed(93, 3))  # `sam3d phantoms --design synth --seed 93`
    _, target = clicked_object(label.array == 1, 0, "synth_003")
    session = Session(Predictor.load("default", device="cpu"), image.array, image.spacing)
    session.interact(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), box_kji=first_box(target, "box3d", 0.0, image.spacing))
    before = np.count_nonzero(session.mask & target)
    point, kind = next_click(session.mask, target, image.spacing)
    assert kind == 1
    boxed_mask = session.mask.copy()
    session.interact([point], [1])
    assert session.mask[tuple(int(round(c)) for c in point)]
    assert np.count_nonzero(session.mask & target) > before
    session.undo()
    np.testing.assert_array_equal(session.mask, boxed_mask)
