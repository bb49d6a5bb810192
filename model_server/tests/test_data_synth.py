"""The domain-randomised lesion generator produces what its docstring claims."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sam3d.data.synth import (AIR_HU, LESION_DIAMETER_MM, PIXEL_MM, SETTINGS, SLICE_THICKNESS_MM,
                              SUBTLE_CONTRAST_HU, SUBTLE_SETTINGS, _smooth_noise, generate_synth_case)


@pytest.fixture(scope="module")
def cases():
    """One case per setting, CT-like and MRI-like alternating (seeded)."""
    return {setting: generate_synth_case(100 + n, setting=setting, ct_like=n % 2 == 0)
            for n, setting in enumerate(SETTINGS)}


def test_grid_and_lesion_size_are_within_the_stated_ranges(cases):
    for setting, case in cases.items():
        stats = case.stats
        assert stats["setting"] == setting
        assert SLICE_THICKNESS_MM[0] <= stats["slice_thickness_mm"] <= SLICE_THICKNESS_MM[1]
        assert PIXEL_MM[0] <= stats["pixel_mm"] <= PIXEL_MM[1]
        assert case.image.spacing == pytest.approx((stats["slice_thickness_mm"], stats["pixel_mm"], stats["pixel_mm"]))
        assert case.image.array.shape == case.label.array.shape
        assert LESION_DIAMETER_MM[0] <= stats["diameter_mm"] <= LESION_DIAMETER_MM[1]
        voxels = int(case.label.array.sum())
        assert voxels > 0, setting
        # equivalent-sphere diameter of the label: a deformed, lobulated ellipsoid of that size
        volume_mm3 = voxels * float(np.prod(case.image.spacing))
        diameter = (6 * volume_mm3 / np.pi) ** (1 / 3)
        assert 0.3 * stats["diameter_mm"] <= diameter <= 1.3 * stats["diameter_mm"], (setting, diameter, stats)
        labelled, count = ndimage.label(case.label.array)
        assert count == 1  # one lesion per case


def test_lesion_is_darker_or_brighter_than_its_surroundings_as_drawn(cases):
    for setting, case in cases.items():
        image, lesion = case.image.array, case.label.array > 0
        inner = ndimage.binary_erosion(lesion, iterations=1) if lesion.sum() > 200 else lesion
        ring = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion, iterations=1)
        inside, around = np.median(image[inner]), np.median(image[ring])
        assert (inside > around) == case.stats["brighter"], (setting, inside, around, case.stats)


def test_ct_like_cases_are_in_hounsfield_units_and_mri_like_in_arbitrary_units(cases):
    lung = cases["lung"]  # CT-like (index 0)
    assert lung.stats["ct_like"]
    parenchyma = np.median(lung.image.array[~ndimage.binary_dilation(lung.label.array > 0, iterations=3)])
    assert -950 < parenchyma < -700  # air-filled lung around a soft-tissue tumour
    assert -20 - 60 < np.median(lung.image.array[lung.label.array > 0]) < 80 + 60
    liver = cases["liver"]  # MRI-like (index 1)
    assert not liver.stats["ct_like"] and liver.image.array.min() > -0.5 * np.ptp(liver.image.array)


def test_cases_are_a_pure_function_of_the_seed(cases):
    first, again = cases["lung"], generate_synth_case(100, setting="lung", ct_like=True)
    assert np.array_equal(first.image.array, again.image.array)
    assert np.array_equal(first.label.array, again.label.array)
    assert first.stats == again.stats


def test_the_draws_cover_both_polarities_modalities_and_every_setting():
    stats = [generate_synth_case(seed).stats for seed in range(4)]
    assert {s["ct_like"] for s in stats} == {True, False}
    assert {s["brighter"] for s in stats} == {True, False}
    assert len({s["setting"] for s in stats}) >= 3


@pytest.mark.parametrize("cells", [3, 6])
def test_smooth_noise_is_the_cubic_spline_zoom_of_its_coarse_grid(cells):
    shape = (20, 27, 33)
    field_ = _smooth_noise(np.random.default_rng(5), shape, cells)
    coarse = np.random.default_rng(5).standard_normal((cells,) * 3)
    zoomed = ndimage.zoom(coarse, [n / cells for n in shape], order=3, mode="reflect")
    assert field_.shape == shape
    np.testing.assert_allclose(field_, zoomed / (np.abs(zoomed).max() + 1e-6), atol=1e-12)


def test_subtle_cases_are_ct_like_low_contrast_lesions_beside_air_as_the_preset_sees_them():
    """``subtle=True``: CT-like, not in lung, the lesion 8-40 HU off its surroundings as drawn,
    air outside a body wall beyond the lesion; scaled by the percentile preset the lesion stands
    under 0.05 of the range from its ring (the ordinary cases: 0.14 and more)."""
    for seed in (7, 8, 9):
        case = generate_synth_case(seed, subtle=True)
        stats, image, lesion = case.stats, case.image.array, case.label.array > 0
        assert stats["subtle"] and stats["ct_like"] and stats["setting"] in SUBTLE_SETTINGS
        assert SUBTLE_CONTRAST_HU[0] <= abs(stats["contrast"]) <= SUBTLE_CONTRAST_HU[1]
        assert stats["air_fraction"] > 0.01 and image.min() < AIR_HU + 200
        ring = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion, iterations=1)
        inside, around = np.median(image[lesion]), np.median(image[ring])
        assert (inside > around) == stats["brighter"]
        assert abs(inside - around) < SUBTLE_CONTRAST_HU[1] + 10
        low, high = np.percentile(image, [0.5, 99.5])
        assert abs(inside - around) / (high - low) < 0.05


def test_ordinary_cases_have_no_air_wall_and_keep_their_contrast_range():
    """Without ``subtle`` no air wall is drawn and CT-like lesions keep 22-150 HU of contrast."""
    for seed in range(6):
        stats = generate_synth_case(seed, ct_like=True, setting="liver").stats
        assert not stats["subtle"] and stats["air_fraction"] == 0.0
        assert 0.15 * 150 <= abs(stats["contrast"]) <= 150
