"""Crop geometry: native <-> crop coordinates, resampling, paste-back and mask prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam3d.data.intensity import IntensityPreset
from sam3d.engine.crops import (MASK_PROMPT_LOGIT, CropGeometry, _resample, extract_crop, mask_prompt, paste_back,
                                touched_faces)


def to_native(geometry: CropGeometry, points_crop) -> np.ndarray:
    """The inverse of ``geometry.to_crop``: continuous crop kji -> native kji (computed here, apart
    from the engine, so the tests check to_crop against it)."""
    points = np.atleast_2d(np.asarray(points_crop, dtype=np.float64))
    return (points - (geometry.size - 1) / 2) * geometry.scale + np.asarray(geometry.center)


SPACING = (3.0, 0.8, 1.1)  # anisotropic, kji
SHAPE = (30, 70, 60)
IDENTITY = IntensityPreset("identity", -1e9, 1e9, 0.0, 1.0)


def geometry(center=(15.0, 35.0, 30.0), size=16, crop_spacing=2.0) -> CropGeometry:
    return CropGeometry.around(center, SPACING, SHAPE, size, crop_spacing)


def linear_volume() -> np.ndarray:
    """value = 1000 k + 10 j + i (exactly reproduced by trilinear interpolation)."""
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij")
    return 1000 * k + 10 * j + i


def test_crop_and_native_coordinates_are_inverse_and_centred():
    g = geometry(center=(10.3, 40.7, 20.2))
    points = np.array([[10.3, 40.7, 20.2], [3.0, 12.0, 50.0]])
    crop = g.to_crop(points)
    np.testing.assert_allclose(crop[0], [(16 - 1) / 2] * 3)
    np.testing.assert_allclose(to_native(g, crop), points)
    # one crop voxel step is crop_spacing / native spacing native voxels along each axis
    step = to_native(g, [[1, 1, 1]]) - to_native(g, [[0, 0, 0]])
    np.testing.assert_allclose(step[0], 2.0 / np.array(SPACING))


def test_extract_crop_samples_the_native_voxels_trilinearly():
    volume = linear_volume()
    g = geometry(center=(14.5, 33.25, 28.0))
    crop = extract_crop(volume, g, IDENTITY)[0, 0].numpy()
    assert crop.shape == (16, 16, 16)
    native = to_native(g, np.argwhere(np.ones((16, 16, 16))))
    expected = native @ np.array([1000.0, 10.0, 1.0])
    np.testing.assert_allclose(crop.ravel(), expected, rtol=1e-5)


def test_extract_crop_applies_the_intensity_preset_after_resampling():
    volume = np.full(SHAPE, 300.0)
    preset = IntensityPreset("p", -100.0, 200.0, 50.0, 25.0)
    crop = extract_crop(volume, geometry(), preset)
    np.testing.assert_allclose(crop.numpy(), (200.0 - 50.0) / 25.0)


def test_outside_the_volume_the_edge_is_replicated():
    volume = linear_volume()
    g = geometry(center=(0.0, 0.0, 0.0))
    crop = extract_crop(volume, g, IDENTITY)[0, 0].numpy()
    # crop voxel 0 lies before native index 0 on every axis: reads the corner voxel
    assert crop[0, 0, 0] == pytest.approx(0.0)
    assert crop[-1, -1, -1] == pytest.approx(to_native(g, [[15, 15, 15]])[0] @ [1000, 10, 1], rel=1e-5)


def test_paste_back_covers_the_crop_footprint_and_inverts_extraction():
    volume = linear_volume()
    g = geometry(center=(15.0, 35.0, 30.0))
    (lo, hi), pasted = paste_back(g, extract_crop(volume, g, IDENTITY)[0, 0])
    extent = 7.5 * 2.0 / np.array(SPACING)
    np.testing.assert_array_equal(lo, np.ceil(np.array([15.0, 35.0, 30.0]) - extent).astype(int))
    np.testing.assert_array_equal(hi, np.floor(np.array([15.0, 35.0, 30.0]) + extent).astype(int) + 1)
    expected = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    np.testing.assert_allclose(pasted, expected, rtol=1e-4)  # a linear field survives both resamplings


def test_footprint_is_clamped_to_the_volume():
    (lo, hi) = geometry(center=(1.0, 69.0, 30.0)).footprint()
    assert lo[0] == 0 and hi[1] == SHAPE[1]
    assert all(0 <= l < h <= n for l, h, n in zip(lo, hi, SHAPE))


def test_mask_prompt_is_a_saturated_logit_of_the_resampled_mask():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10:20, 30:40, 25:35] = True
    g = geometry(center=(15.0, 35.0, 30.0))
    (lo, hi) = g.source_box()
    logit = mask_prompt(g, mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])[0, 0]
    assert logit.shape == (16, 16, 16)
    assert logit[7, 7, 7] == pytest.approx(MASK_PROMPT_LOGIT, rel=1e-3)  # the centre is inside
    assert logit[0, 0, 0] == pytest.approx(-MASK_PROMPT_LOGIT, rel=1e-3)
    assert logit.abs().max() <= MASK_PROMPT_LOGIT + 1e-3


def test_touched_faces_and_half_crop_shift():
    foreground = torch.zeros(16, 16, 16, dtype=torch.bool)
    foreground[5:9, 0:4, 6:16] = True
    assert sorted(touched_faces(foreground)) == [(1, -1), (2, 1)]
    g = geometry()
    moved = g.shifted(2, +1)
    assert moved.center[2] == pytest.approx(g.center[2] + 8 * 2.0 / SPACING[2])
    assert moved.center[:2] == g.center[:2]
    assert not g.contains([moved.center]).any()


def test_contains_honours_the_margin():
    g = geometry()
    near_face = to_native(g, [[15, 7.5, 7.5]])
    assert g.contains(near_face).all()
    assert not g.contains(near_face, margin=2).any()


@pytest.mark.parametrize("outside", ["border", "zeros"])
def test_resampling_gives_torchs_grid_sample_on_a_separable_grid(outside):
    """The matrix-product resampling equals F.grid_sample at the same points: inside, across
    the edges and beyond them, on a one-voxel-thick axis too."""
    source = torch.from_numpy(np.random.default_rng(2).random((1, 1, 5, 9, 7), dtype=np.float32))
    axes = [torch.linspace(-1.3, 1.2, 11), torch.linspace(-1.0, 1.0, 4), torch.linspace(-0.9, 1.4, 13)]

    def grid_sample(values, normalised):
        k, j, i = torch.meshgrid(*normalised, indexing="ij")
        return F.grid_sample(values, torch.stack([i, j, k], dim=-1)[None], mode="bilinear",
                             padding_mode=outside, align_corners=True)[0, 0]

    def positions(normalised, shape):  # grid_sample's [-1, 1] -> voxel positions
        return [(a.double().numpy() + 1) / 2 * (n - 1) for a, n in zip(normalised, shape)]

    np.testing.assert_allclose(_resample(source[0, 0], positions(axes, source.shape[2:]), outside),
                               grid_sample(source, axes), atol=1e-6)
    flat, flat_axes = source[:, :, :1], [torch.zeros(3), axes[1], axes[2]]
    flat_positions = [np.array([0.4, -0.7, 1.6])] + positions(axes[1:], flat.shape[3:])  # any position: its voxel
    np.testing.assert_allclose(_resample(flat[0, 0], flat_positions, outside), grid_sample(flat, flat_axes), atol=1e-6)
