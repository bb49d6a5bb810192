"""The chest CT phantom generator produces what its docstring claims."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sam3d.data.chest import (AIR_HU, LUNG_HU, MASS_MM, NODULE_MM, PIXEL_MM, SLICE_MM, _depth, _distance_to,
                              generate_chest_case)

NODULE_SEED, MASS_SEED = 2, 0  # seeds whose tumour is of that kind


@pytest.fixture(scope="module")
def cases():
    return {seed: generate_chest_case(seed, matrix=256) for seed in (NODULE_SEED, MASS_SEED)}


def _ring(label: np.ndarray) -> np.ndarray:
    """In-plane ring 2-4 pixels around the tumour (the slices are thick: plane by plane)."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    outer = ndimage.binary_dilation(label, structure, iterations=4)
    return outer & ~ndimage.binary_dilation(label, structure, iterations=2)


def test_grid_sizes_and_kinds_are_within_the_stated_ranges(cases):
    for seed, (image, label, stats) in cases.items():
        assert image.array.shape == label.array.shape and image.array.shape[1:] in ((256, 256), (255, 255))
        thickness, pixel, _ = image.spacing
        assert SLICE_MM[0] <= thickness <= SLICE_MM[1]
        assert 2 * PIXEL_MM[0] <= pixel <= 2 * PIXEL_MM[1]  # matrix 256: twice the 512 pixel
        low, high = NODULE_MM if stats["kind"] == "nodule" else MASS_MM
        assert low <= stats["diameter_mm"] <= high
        assert ndimage.label(label.array)[1] >= 1 and label.array.sum() > 0
    assert cases[NODULE_SEED][2]["kind"] == "nodule" and cases[MASS_SEED][2]["kind"] == "mass"


def test_hounsfield_units_of_air_lung_and_tumour(cases):
    for image, label, stats in cases.values():
        volume, tumour = image.array, label.array > 0
        assert abs(np.median(volume[:, :5, :5]) - AIR_HU) < 60  # outside the body
        lungish = volume[(volume < -500) & (volume > -950)]
        assert abs(np.median(lungish) - LUNG_HU) < 60
        assert -40 < np.median(volume[tumour]) < 110, stats  # soft tissue (10-60 HU drawn, then partial volume)


def test_a_nodule_lies_in_lung_and_a_mass_touches_soft_tissue(cases):
    image, label, _ = cases[NODULE_SEED]
    ring = image.array[_ring(label.array > 0)]
    assert np.mean(ring < -500) > 0.8  # all round it: lung
    image, label, _ = cases[MASS_SEED]
    ring = image.array[_ring(label.array > 0)]
    assert np.mean(ring < -500) > 0.3  # mostly lung ...
    assert np.mean(ring > -200) > 0.05  # ... and it abuts the wall or the mediastinum


def test_cases_are_a_pure_function_of_the_seed(cases):
    image, label, stats = generate_chest_case(NODULE_SEED, matrix=256)
    first = cases[NODULE_SEED]
    assert np.array_equal(image.array, first[0].array) and np.array_equal(label.array, first[1].array)
    assert stats == first[2]


COMPLEX_SEEDS = (1, 3, 7)  # at 256 px: necrosis + atelectasis + effusion; spicules + cavity; vessels + spicules


@pytest.fixture(scope="module")
def complicated():
    return {seed: (generate_chest_case(seed, matrix=256),
                   generate_chest_case(seed, matrix=256, complicated=True)) for seed in COMPLEX_SEEDS}


def test_a_complicated_case_is_the_plain_case_with_the_same_tumour_label(complicated):
    for (plain_image, plain_label, plain_stats), (image, label, stats) in complicated.values():
        assert np.array_equal(label.array, plain_label.array) and image.spacing == plain_image.spacing
        assert stats["kind"] == plain_stats["kind"] and "complications" not in plain_stats


def test_a_complicated_case_is_stored_as_a_scanner_stores_it(complicated):
    for (plain_image, _, _), (image, _, _) in complicated.values():
        volume = image.array
        assert np.array_equal(volume, np.round(volume))  # integer HU
        assert volume[0, 0, 0] in (-1024.0, -2048.0, -3024.0) and volume[0, 0, 0] == volume[-1, -1, -1]
        # noise shaped by the kernel: neighbouring pixels of the air outside the body correlate
        def neighbour_correlation(array):
            air = array[:, 20:40, 100:156] - np.median(array[:, 20:40, 100:156])
            return np.corrcoef(air[:, :, :-1].ravel(), air[:, :, 1:].ravel())[0, 1]
        assert neighbour_correlation(volume) > 0.3 > 0.1 > neighbour_correlation(plain_image.array)


def _around(label: np.ndarray, pixels: int) -> np.ndarray:
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    return ndimage.binary_dilation(label, structure, iterations=pixels) & ~label


def test_complications_put_tumour_density_against_the_tumour_and_change_its_inside(complicated):
    for seed, ((plain_image, label, _), (image, _, stats)) in complicated.items():
        tumour, ring = label.array > 0, _around(label.array > 0, 6)
        dense_plain = np.sum(plain_image.array[ring] > -300)
        dense = np.sum(image.array[ring] > -300)
        if "vessels" in stats["complications"]:  # each a few voxels wide where it leaves the tumour
            assert dense >= dense_plain + 5, (seed, stats, dense, dense_plain)
        if "atelectasis" in stats["complications"]:  # a slab of lung
            assert dense > dense_plain + 0.02 * ring.sum(), (seed, stats, dense, dense_plain)
        if "effusion" in stats["complications"]:
            fluid = (image.array > -5) & (image.array < 30) & (plain_image.array < -500)
            assert fluid.sum() > 1000, (seed, stats)
        if "cavity" in stats["complications"]:
            assert np.mean(image.array[tumour] < -500) > 0.02, (seed, stats)
        if "necrosis" in stats["complications"]:
            interior = ndimage.binary_erosion(tumour, iterations=3)
            assert np.mean(image.array[interior]) < np.mean(plain_image.array[interior]) - 5, (seed, stats)
    drawn = set().union(*(stats["complications"] for _, (_, _, stats) in complicated.values()))
    assert {"vessels", "spicules", "necrosis", "cavity", "atelectasis", "effusion"} <= drawn


@pytest.mark.parametrize("seed", range(4))
def test_the_distance_transforms_on_a_box_equal_the_whole_volumes(seed):
    """The generator's distance transforms run on a mask's bounding box; they must give what
    scipy gives on the whole volume, for blobs inside and touching the volume's faces."""
    rng = np.random.default_rng(seed)
    shape = (30, 41, 37)
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 2)
    blobs = smooth > np.quantile(smooth, 0.7)
    mask = np.zeros(shape, bool)
    low = rng.integers(0, 12, 3) if seed % 2 else np.zeros(3, int)  # even seeds: at the faces
    region = tuple(slice(int(lo), int(lo) + 18) for lo in low)
    mask[region] = blobs[region]
    assert mask.any() and not mask.all()
    np.testing.assert_array_equal(_depth(mask), ndimage.distance_transform_edt(mask))
    whole = ndimage.distance_transform_edt(~mask)
    within = 4.5
    np.testing.assert_array_equal(_distance_to(mask, within) <= within, whole <= within)
    near = _distance_to(mask, within)
    np.testing.assert_array_equal(near[near <= within], whole[near <= within])
