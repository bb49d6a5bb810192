"""A first click's threshold chosen by the image's edges (``engine/edge_threshold.py``), on crops
drawn by hand: a lower or higher threshold is taken where its mask's boundary is the object's
edge, and not where the image has no edge there; a mask on an edge is marked for the 2D
pathway's corrections, one without an edge is not."""

from __future__ import annotations

import numpy as np

from scipy import ndimage

from sam3d.engine.edge_threshold import (CANDIDATES, DEFAULT_THRESHOLD, MIN_CORRECTION_EDGE, MIN_EDGE, _region_of, _voxel,
                                        boundary_edge, click_component, edge_threshold)

SIZE = 48
CENTRE = np.array([24.0, 24.0, 24.0])


def _radius() -> np.ndarray:
    grid = np.indices((SIZE,) * 3).astype(np.float32)
    return np.sqrt(sum((axis - c) ** 2 for axis, c in zip(grid, CENTRE)))


def _timid_probability(radius: np.ndarray) -> np.ndarray:
    """A model's answer that is sure of a core (radius 5) and only 0.2 sure of the rest of a
    ball of radius 12."""
    return np.where(radius <= 5, 0.9, np.where(radius <= 12, 0.2, 0.01)).astype(np.float32)


def test_a_lower_threshold_is_taken_where_its_boundary_is_the_objects_edge():
    radius = _radius()
    image = np.where(radius <= 12, 0.6, 0.05).astype(np.float32)  # a mass in lung: a strong step at 12
    threshold, on_edge = edge_threshold(image, _timid_probability(radius), CENTRE)
    assert threshold < 0.2 and on_edge  # the whole ball (radius 12), not its core
    mask = click_component(_timid_probability(radius) > threshold, CENTRE)
    assert abs(int(mask.sum()) - int((radius <= 12).sum())) < 0.05 * (radius <= 12).sum()


def test_the_default_threshold_stands_where_the_image_has_no_edge_there():
    radius = _radius()
    flat = np.full((SIZE,) * 3, 0.4, dtype=np.float32)
    assert edge_threshold(flat, _timid_probability(radius), CENTRE) == (DEFAULT_THRESHOLD, False)
    faint = np.where(radius <= 12, 0.42, 0.4).astype(np.float32)  # a lesion of like intensity in an organ
    edge = boundary_edge(np.sqrt(sum(g ** 2 for g in np.gradient(faint))), radius <= 12)
    assert edge < MIN_CORRECTION_EDGE < MIN_EDGE
    assert edge_threshold(faint, _timid_probability(radius), CENTRE) == (DEFAULT_THRESHOLD, False)  # 3D corrects


def test_the_default_threshold_stands_where_the_core_already_ends_on_the_edge():
    radius = _radius()
    image = np.where(radius <= 5, 0.6, 0.05).astype(np.float32)  # a nodule: the step is at the core
    assert edge_threshold(image, _timid_probability(radius), CENTRE) == (DEFAULT_THRESHOLD, True)  # 2D corrects


def test_a_higher_threshold_is_taken_where_the_half_mask_reaches_past_a_nodule():
    radius = _radius()
    overreaching = np.where(radius <= 5, 0.95, np.where(radius <= 9, 0.55, 0.01)).astype(np.float32)
    image = np.where(radius <= 5, 0.6, 0.05).astype(np.float32)  # the nodule ends at 5
    threshold, on_edge = edge_threshold(image, overreaching, CENTRE)
    assert threshold > 0.55 and on_edge
    assert click_component(overreaching > threshold, CENTRE).sum() == (radius <= 5).sum()


def test_the_clicked_part_is_kept_or_the_nearest_one():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    mask[6:9, 6:9, 6:9] = True
    assert click_component(mask, np.array([7.2, 7.0, 6.8])).sum() == 27
    assert click_component(mask, np.array([3.4, 3.0, 3.0])).sum() == 8  # nearest part: the small one
    assert not click_component(np.zeros((4, 4, 4), dtype=bool), np.array([1.0, 1.0, 1.0])).any()


def test_the_choice_does_not_depend_on_where_the_object_lies_in_the_crop():
    """The scores are taken on the candidates' own region of the crop: the same object moved by an
    odd offset in a larger crop, clicked half-way between voxels, chooses the same."""
    radius = _radius()
    image = np.where(radius <= 12, 0.6, 0.05).astype(np.float32)
    probability = _timid_probability(radius)
    probability[CENTRE.astype(int)[0], :, :] *= 0.1  # the core cut in two at the click's slice
    click = CENTRE + [0.5, 0.5, 0.5]
    here = edge_threshold(image, probability, click)
    shifted_image = np.full((SIZE + 11,) * 3, 0.05, dtype=np.float32)
    shifted_probability = np.full((SIZE + 11,) * 3, 0.01, dtype=np.float32)
    shifted_image[11:, 11:, 11:], shifted_probability[11:, 11:, 11:] = image, probability
    assert edge_threshold(shifted_image, shifted_probability, click + 11) == here
    assert here.threshold != DEFAULT_THRESHOLD  # the case is one where the choice matters


def test_each_candidate_scores_on_its_region_as_on_the_whole_crop():
    """What ``edge_threshold`` relies on: every candidate's clicked part and its boundary ring lie in
    ``_region_of``, and a click half-way between voxels, or beside the mask, finds the same part
    there (the click is rounded before the shift)."""
    radius = _radius()
    probability = _timid_probability(radius)
    probability[24, :, :] *= 0.1  # the core cut in two at the click's slice
    gradient = np.sqrt(sum(axis ** 2 for axis in np.gradient(ndimage.gaussian_filter(
        np.where(radius <= 12, 0.6, 0.05).astype(np.float32), 1.0))))
    for click in (np.array([24.5, 23.5, 24.5]), np.array([24.0, 24.0, 41.5])):  # between voxels; beside the ball
        voxel = _voxel(click, probability.shape)
        region = _region_of(probability > min(CANDIDATES), voxel)
        start = [part.start for part in region]
        assert any(part.start > 0 for part in region)  # the region is smaller than the crop
        for threshold in CANDIDATES:
            whole = click_component(probability > threshold, click)
            part = click_component(probability[region] > threshold, voxel - start)
            placed = np.zeros_like(whole)
            placed[region] = part
            np.testing.assert_array_equal(placed, whole)
            assert boundary_edge(gradient[region], part) == boundary_edge(gradient, whole)
