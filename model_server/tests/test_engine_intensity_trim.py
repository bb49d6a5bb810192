"""A first click's mask trimmed at the lesion's intensity step and grown to it
(``engine.intensity_trim``): what goes and what is added where the step is clear, and what is
left alone."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sam3d.engine.intensity_trim import (GROW_PX, MIN_CONTRAST, core_level, grow_to_lesion_intensity,
                                        trim_homogeneous_lesion, trim_to_lesion_intensity)

SHAPE = (9, 40, 40)
CENTRE = np.array([4.0, 20.0, 20.0])


def _ball(radius: float, centre: np.ndarray = CENTRE) -> np.ndarray:
    k, j, i = np.indices(SHAPE)
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


def _with_rim(mask: np.ndarray, pixels: int = 2) -> np.ndarray:
    """``mask`` grown in-plane by ``pixels``: the model's mask with a rim of the surroundings."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(mask, in_plane, iterations=pixels)


def _nodule(lesion: float = 20.0, lung: float = -800.0, noise: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """(image, lesion mask): a ball of radius 4 at ``lesion`` HU in ``lung`` HU, with noise."""
    lesion_mask = _ball(4)
    image = np.where(lesion_mask, lesion, lung) + np.random.default_rng(0).normal(0, noise, SHAPE)
    return image.astype(np.float32), lesion_mask


def test_a_rim_of_lung_around_a_nodule_is_trimmed_to_the_nodule():
    image, lesion = _nodule()
    model_mask = _with_rim(lesion)
    trimmed = trim_to_lesion_intensity(image, model_mask, CENTRE)
    np.testing.assert_array_equal(trimmed, lesion)


def test_a_mask_mostly_of_rim_is_trimmed_at_the_clicks_level():
    """A 4-pixel rim around the nodule: the eroded mask's median is the lung's, so the lesion is
    read at the click, and the rim goes."""
    image, lesion = _nodule()
    model_mask = _with_rim(lesion, pixels=4)
    assert np.count_nonzero(model_mask & ~lesion) > 2 * np.count_nonzero(lesion)
    np.testing.assert_array_equal(trim_to_lesion_intensity(image, model_mask, CENTRE), lesion)


def test_a_dark_lesion_in_brighter_tissue_is_trimmed_the_same_way():
    image, lesion = _nodule(lesion=-60.0, lung=60.0, noise=5.0)  # 120 HU darker, noise 5 HU
    trimmed = trim_to_lesion_intensity(image, _with_rim(lesion), CENTRE)
    np.testing.assert_array_equal(trimmed, lesion)


def test_a_subtle_lesion_is_left_as_it_is():
    """A step below MIN_CONTRAST interquartile ranges of the ring: nothing is trimmed."""
    noise = 20.0  # the ring's interquartile range is about 1.35 x 20 = 27 HU
    image, lesion = _nodule(lesion=30.0, lung=0.0, noise=noise)
    assert 30.0 < MIN_CONTRAST * 1.35 * noise
    model_mask = _with_rim(lesion)
    assert trim_to_lesion_intensity(image, model_mask, CENTRE) is model_mask


def test_a_click_on_the_surroundings_side_leaves_the_mask_as_it_is():
    image, lesion = _nodule()
    model_mask = _with_rim(lesion)
    rim_voxel = np.array([4.0, 20.0, 25.0])  # 5 px from the centre: in the rim, not the nodule
    assert model_mask[4, 20, 25] and not lesion[4, 20, 25]
    assert trim_to_lesion_intensity(image, model_mask, rim_voxel) is model_mask


def test_only_the_part_holding_the_click_stays():
    """A second bright blob the mask reaches only through the rim of lung goes with the rim."""
    image, lesion = _nodule()
    other = _ball(2, np.array([4.0, 20.0, 28.0]))  # i 26-30; the nodule ends at 24, its rim at 26
    image[other] = 20.0
    model_mask = _with_rim(lesion) | other
    trimmed = trim_to_lesion_intensity(image, model_mask, CENTRE)
    np.testing.assert_array_equal(trimmed, lesion)


def test_an_empty_mask_or_a_click_outside_changes_nothing():
    image, lesion = _nodule()
    empty = np.zeros(SHAPE, dtype=bool)
    assert trim_to_lesion_intensity(image, empty, CENTRE) is empty
    model_mask = _with_rim(lesion)
    assert trim_to_lesion_intensity(image, model_mask, np.array([4.0, 20.0, 60.0])) is model_mask


def test_a_partial_volume_slice_is_trimmed_at_the_level_read_in_the_object():
    """A nodule's tip slice: a blurred blob whose brightest pixel reaches 60 % of the way from the
    lung to the lesion. Read at the click, the lesion's level is the blob's own, and the
    half-way level keeps most of the blob; read in the object's mask on the other slices
    (``core_level``), the half-way level keeps only its core."""
    lesion, lung = 20.0, -800.0
    distance = np.hypot(*(np.indices(SHAPE[1:]) - CENTRE[1:, None, None]))
    blob = lung + (lesion - lung) * 0.6 * np.exp(-(distance / 3.0) ** 2)  # its peak: -308 HU
    image = np.full(SHAPE, lung, dtype=np.float32)
    image[4] = blob
    object_image, object_mask = _nodule(lesion=lesion, lung=lung, noise=0.0)
    level = core_level(object_image, object_mask)
    assert level == lesion
    filled = distance <= 4  # the 2D answer on the tip slice: the disc of the slice beside it
    mask = np.zeros(SHAPE, dtype=bool)
    mask[4] = filled
    at_click = trim_to_lesion_intensity(image, mask, CENTRE)
    at_object = trim_to_lesion_intensity(image, mask, CENTRE, lesion_level=level)
    assert at_object[4, 20, 20] and not (at_object & ~at_click).any()
    assert np.count_nonzero(at_object) < np.count_nonzero(at_click) / 2
    np.testing.assert_array_equal(at_object[4], blob > (lesion + lung) / 2)


def test_a_core_level_needs_a_core():
    image, lesion = _nodule(noise=0.0)
    assert core_level(image, lesion) == 20.0
    assert core_level(image, np.zeros(SHAPE, dtype=bool)) is None


def test_a_homogeneous_nodule_in_a_box_answer_is_trimmed():
    image, lesion = _nodule()
    np.testing.assert_array_equal(trim_homogeneous_lesion(image, _with_rim(lesion, pixels=1), CENTRE), lesion)


def test_a_ring_enhancing_tumour_in_a_box_answer_is_left_whole():
    """A brain tumour as MRI shows it: a bright enhancing rim (900) around a necrotic core (450)
    darker than the brain (600). From a click on the rim the plain trim cuts the core away; the
    lesion spreads more widely than it stands off the brain, so the box's trim leaves it."""
    distance = np.sqrt(((np.indices(SHAPE) - CENTRE[:, None, None, None]) ** 2).sum(axis=0))
    lesion = distance <= 4
    image = np.where(lesion, np.where(distance <= 2.5, 450.0, 900.0), 600.0)
    image = (image + np.random.default_rng(0).normal(0, 10, SHAPE)).astype(np.float32)
    model_mask = _with_rim(lesion, pixels=1)
    on_rim = CENTRE + [0.0, 0.0, 3.0]
    necrosis = distance <= 2.5
    assert not trim_to_lesion_intensity(image, model_mask, on_rim)[necrosis].any()
    assert trim_homogeneous_lesion(image, model_mask, on_rim) is model_mask


def test_a_loose_box_answer_around_a_nodule_is_trimmed_to_the_nodule():
    """A box drawn loosely: the answer holds a rim of lung 5 pixels wide, more lung than nodule,
    so the whole mask's core reads as a mix and fails the homogeneity gate. The lesion is read at
    the mask's deep core on the click's slice instead, and the rim goes."""
    image, lesion = _nodule()
    model_mask = _with_rim(lesion, pixels=5)
    assert np.count_nonzero(model_mask & ~lesion) > 2 * np.count_nonzero(lesion)
    np.testing.assert_array_equal(trim_homogeneous_lesion(image, model_mask, CENTRE), lesion)


def test_a_loose_box_answer_with_a_hole_at_the_nodule_is_read_around_the_hole():
    """LiteMedSAM's answer to a loose box may leave a hole where the nodule is brightest: the deep
    core is read with the hole filled, and the trim keeps the part holding the mask's deepest
    pixel, not the hole's."""
    image, lesion = _nodule()
    model_mask = _with_rim(lesion, pixels=5) & ~_ball(1.5)
    trimmed = trim_homogeneous_lesion(image, model_mask, CENTRE + [0.0, 3.0, 0.0])
    np.testing.assert_array_equal(trimmed, lesion & model_mask)


def test_a_loose_box_answer_is_not_trimmed_at_a_level_its_deep_core_did_not_read():
    """A nodule (100) with a calcified centre (3000) in a loose answer whose ring is mixed (-300,
    0 and 300 at random): the deep core's step is not clear against the ring's spread, so the
    mask stays whole instead of being cut at the calcification's level."""
    rng = np.random.default_rng(0)
    lesion = _ball(4)
    model_mask = _with_rim(lesion, pixels=5)
    _, j, i = np.indices(SHAPE)
    image = np.where(lesion, 100.0, 0.0) + rng.normal(0, 5, SHAPE)
    image[lesion & (abs(j - 20) <= 1) & (abs(i - 20) <= 1)] = 3000.0
    ring = _with_rim(model_mask, pixels=3) & ~model_mask
    image[ring] = rng.choice([-300.0, 0.0, 300.0], size=int(np.count_nonzero(ring)))
    assert trim_homogeneous_lesion(image.astype(np.float32), model_mask, CENTRE) is model_mask


def test_a_loose_box_answer_around_a_ring_enhancing_tumour_is_left_whole():
    """The same loose rim around a ring-enhancing tumour: its deep core holds necrosis and rim,
    spread more widely than it stands off the brain, so nothing is trimmed."""
    distance = np.sqrt(((np.indices(SHAPE) - CENTRE[:, None, None, None]) ** 2).sum(axis=0))
    lesion = distance <= 4
    image = np.where(lesion, np.where(distance <= 2.5, 450.0, 900.0), 600.0)
    image = (image + np.random.default_rng(0).normal(0, 10, SHAPE)).astype(np.float32)
    model_mask = _with_rim(lesion, pixels=4)
    assert trim_homogeneous_lesion(image, model_mask, CENTRE) is model_mask


def _in_plane_erosion(mask: np.ndarray, pixels: int) -> np.ndarray:
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(mask, in_plane, iterations=pixels)


def _large_nodule(lesion: float = 20.0, background: float = -800.0, noise: float = 10.0):
    """(image, lesion mask): a ball of radius 8 at ``lesion`` HU in ``background`` HU, with noise."""
    lesion_mask = _ball(8)
    image = np.where(lesion_mask, lesion, background) + np.random.default_rng(0).normal(0, noise, SHAPE)
    return image.astype(np.float32), lesion_mask


def test_a_mask_short_of_a_nodules_edge_grows_to_it():
    """The model's mask two pixels inside the nodule on every slice: it grows to the nodule."""
    image, lesion = _large_nodule()
    model_mask = _in_plane_erosion(lesion, 2)
    grown = grow_to_lesion_intensity(image, model_mask, CENTRE)
    assert np.count_nonzero(lesion & ~model_mask) > 0.3 * np.count_nonzero(lesion)
    np.testing.assert_array_equal(grown, lesion)


def test_a_vessel_touching_the_nodule_grows_only_as_a_stub():
    """A bright vessel leaving the nodule: the growth takes at most ``GROW_PX`` pixels of it."""
    image, lesion = _large_nodule()
    vessel = np.zeros(SHAPE, dtype=bool)
    vessel[3:6, 19:22, 20:] = True
    image[vessel & ~lesion] = 40.0
    grown = grow_to_lesion_intensity(image, _in_plane_erosion(lesion, 1), CENTRE)
    added_vessel = grown & vessel & ~lesion
    assert added_vessel.any()
    assert np.nonzero(added_vessel)[2].max() <= np.nonzero(lesion[4, 20])[0].max() + GROW_PX


def test_a_subtle_or_a_dark_lesion_does_not_grow():
    """A step below ``MIN_CONTRAST`` interquartile ranges of the background, or a lesion darker
    than its surroundings: the mask stays as it is."""
    subtle, lesion = _large_nodule(lesion=30.0, background=0.0, noise=20.0)
    dark, _ = _large_nodule(lesion=-60.0, background=60.0, noise=5.0)
    model_mask = _in_plane_erosion(lesion, 2)
    assert grow_to_lesion_intensity(subtle, model_mask, CENTRE) is model_mask
    assert grow_to_lesion_intensity(dark, model_mask, CENTRE) is model_mask


def test_growing_an_empty_mask_or_from_a_click_outside_changes_nothing():
    image, lesion = _large_nodule()
    empty = np.zeros(SHAPE, dtype=bool)
    assert grow_to_lesion_intensity(image, empty, CENTRE) is empty
    model_mask = _in_plane_erosion(lesion, 2)
    assert grow_to_lesion_intensity(image, model_mask, np.array([4.0, 20.0, 60.0])) is model_mask
