"""Resampling (SimpleITK, through physical space) and intensity presets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sam3d.data.intensity import PRESETS, IntensityPreset, compute_preset
from sam3d.data.io import Volume
from sam3d.data.resample import resample_to_reference, resample_volume


def physical_ramp(grid: Volume) -> np.ndarray:
    """f(x, y, z) = x + 2y - 3z at every voxel centre of ``grid`` (LPS mm)."""
    kji = np.indices(grid.shape).reshape(3, -1).T
    lps = grid.kji_to_lps(kji)
    return (lps @ np.array([1.0, 2.0, -3.0])).reshape(grid.shape)


def oblique_grid(shape, spacing, origin, angles, flips) -> Volume:
    direction = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(flips)
    return Volume(np.zeros(shape, np.float32), spacing, origin, direction)


def test_resample_to_reference_goes_through_physical_space():
    source = oblique_grid((20, 24, 24), (2.5, 0.8, 0.8), (-10, 5, 40), [8, -6, 12], [-1, 1, 1])
    source = source.with_array(physical_ramp(source).astype(np.float32))
    # a differently oriented, coarser grid lying inside the source
    target = oblique_grid((6, 8, 8), (2.0, 1.5, 1.5), (0, 0, 0), [0, 0, -20], [1, -1, -1])
    centre_source = source.kji_to_lps([(np.array(source.shape) - 1) / 2])[0]
    centre_target = target.kji_to_lps([(np.array(target.shape) - 1) / 2])[0]
    target = Volume(target.array, target.spacing, tuple(np.array(target.origin) + centre_source - centre_target),
                    target.direction)
    resampled = resample_to_reference(source, target)
    assert resampled.same_grid(target)
    # linear interpolation reproduces a linear function of position exactly
    np.testing.assert_allclose(resampled.array, physical_ramp(target), atol=1e-2)


def test_resample_volume_to_a_new_spacing_and_back():
    volume = oblique_grid((10, 32, 30), (3.0, 0.75, 0.75), (12, -3, 7), [5, 0, 30], [1, -1, 1])
    mask = np.zeros(volume.shape, bool)
    mask[3:7, 8:24, 10:20] = True
    labels = volume.with_array(mask)
    coarse = resample_volume(labels, (3.0, 1.5, 1.5))  # "auto" -> nearest for a bool mask
    assert coarse.shape == (10, 16, 15)
    assert coarse.array.dtype == bool
    np.testing.assert_allclose(coarse.origin, volume.origin)
    np.testing.assert_allclose(coarse.direction, volume.direction)
    # the physical size of the object is kept
    assert coarse.array.sum() * np.prod(coarse.spacing) == pytest.approx(mask.sum() * np.prod(volume.spacing), rel=0.1)
    back = resample_to_reference(coarse, labels)
    assert back.same_grid(labels)
    assert (back.array == mask).mean() > 0.97


def test_linear_resampling_of_integer_images_rounds_instead_of_truncating():
    volume = Volume(np.array([0, 10], np.int16).reshape(1, 1, 2) * np.ones((2, 2, 1), np.int16), (1, 1, 1))
    fine = resample_volume(volume, (1.0, 1.0, 0.25), interpolator="linear")
    assert fine.array.dtype == np.int16
    np.testing.assert_array_equal(fine.array[0, 0, :5], [0, 2, 5, 8, 10])  # 0, 2.5, 5, 7.5, 10


def test_resample_rejects_unknown_interpolator():
    volume = Volume(np.zeros((2, 2, 2), np.float32), (1, 1, 1))
    with pytest.raises(ValueError, match="unknown interpolator 'cubic'; choose one of auto, linear"):
        resample_volume(volume, (1, 1, 1), interpolator="cubic")


def test_presets_hold_the_papers_numbers_a_soft_tissue_and_a_percentile_one():
    assert PRESETS["kits21"] == IntensityPreset("kits21", -54.0, 247.0, 59.54, 55.46)
    assert set(PRESETS) == {"kits21", "msd_pancreas", "lits", "msd_colon", "soft_tissue", "percentile",
                            "central_percentile"}
    assert PRESETS["percentile"].kind == "percentile" and PRESETS["lits"].kind == "window"
    preset = PRESETS["lits"]
    assert IntensityPreset.from_dict(preset.to_dict()) == preset



def test_the_central_percentile_preset_keeps_a_faint_lesion_visible_beside_air_and_bone():
    """A CT-like crop: an organ (40 HU) holding a lesion 30 HU brighter at its centre, air and
    bone at its edges. The whole crop's percentiles squeeze the lesion into ~0.02 of [0, 1];
    the central third's, widened 2x, give it several times that, within the whole crop's window."""
    rng = np.random.default_rng(0)
    crop = rng.normal(40.0, 5.0, (30, 30, 30)).astype(np.float32)
    crop[:, :, :4] = -1000.0  # air
    crop[:, :, -3:] = 700.0  # bone
    crop[12:18, 12:18, 12:18] += 30.0  # the lesion
    lesion, organ = (slice(13, 17),) * 3, (slice(8, 11), slice(8, 22), slice(8, 22))
    whole, central = PRESETS["percentile"].apply(crop), PRESETS["central_percentile"].apply(crop)
    assert whole.dtype == central.dtype == np.float32 and central.min() == 0.0 and central.max() == 1.0
    contrast_whole = np.median(whole[lesion]) - np.median(whole[organ])
    contrast_central = np.median(central[lesion]) - np.median(central[organ])
    assert 0.01 < contrast_whole < 0.03 and contrast_central > 5 * contrast_whole
    # the whole crop's own percentiles are what "percentile" always gave
    low, high = np.percentile(crop, [0.5, 99.5])
    np.testing.assert_allclose(whole, (np.clip(crop, low, high) - low) / (high - low), atol=1e-6)
    # a crop whose centre spans the whole range: the window is the whole crop's, not wider
    spread = rng.uniform(-1000, 1000, (30, 30, 30)).astype(np.float32)
    np.testing.assert_array_equal(PRESETS["central_percentile"].apply(spread), PRESETS["percentile"].apply(spread))
    flat = crop.copy()
    flat[10:20, 10:20, 10:20] = 40.0  # a constant centre (a phantom without noise): the whole crop's window
    np.testing.assert_array_equal(PRESETS["central_percentile"].apply(flat), PRESETS["percentile"].apply(flat))
    preset = PRESETS["central_percentile"]
    assert IntensityPreset.from_dict(preset.to_dict()) == preset

def test_compute_preset_uses_foreground_percentiles_and_clipped_statistics():
    rng = np.random.default_rng(3)
    images, labels = [], []
    for _ in range(3):
        image = np.full((20, 20, 20), -1000.0)
        label = np.zeros(image.shape, np.uint8)
        label[5:15, 5:15, 5:15] = 1
        image[label > 0] = rng.normal(60.0, 20.0, size=int(label.sum()))
        images.append(image)
        labels.append(label)
    preset = compute_preset(images, labels, name="mine")
    foreground = np.concatenate([im[lb > 0] for im, lb in zip(images, labels)])
    low, high = np.percentile(foreground, [0.5, 99.5])
    assert preset.name == "mine"
    assert (preset.clip_low, preset.clip_high) == pytest.approx((low, high))
    clipped = np.clip(foreground, low, high)
    assert (preset.mean, preset.std) == pytest.approx((clipped.mean(), clipped.std()))
    assert preset.mean == pytest.approx(60.0, abs=2.0) and preset.std == pytest.approx(20.0, abs=2.0)
    normalised = preset.apply(images[0])[labels[0] > 0]
    assert abs(float(normalised.mean())) < 0.2
    with pytest.raises(ValueError, match="no foreground"):
        compute_preset([images[0]], [np.zeros_like(labels[0])])
