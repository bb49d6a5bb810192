"""Image IO keeps the full geometry: round trips on an oblique, flipped, off-origin volume."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from dicom_helpers import write_dicom_series
from sam3d.data.io import Volume, read_image, write_image

SPACING = (2.5, 0.8, 0.7)  # kji
ORIGIN = (-31.5, 17.25, 104.0)


def oblique(flips=(-1, 1, 1)) -> np.ndarray:
    """An oblique direction matrix (about 15 degrees off the axes) with flipped axes."""
    return Rotation.from_euler("xyz", [10, -7, 12], degrees=True).as_matrix() @ np.diag(flips)


@pytest.fixture
def volume() -> Volume:
    array = np.random.default_rng(0).integers(-1000, 1500, size=(5, 6, 7)).astype(np.int16)
    return Volume(array, SPACING, ORIGIN, oblique())


def assert_same_geometry(read: Volume, written: Volume, tolerance: float = 1e-5) -> None:
    assert read.shape == written.shape
    np.testing.assert_allclose(read.spacing, written.spacing, atol=tolerance)
    np.testing.assert_allclose(read.origin, written.origin, atol=tolerance)
    np.testing.assert_allclose(read.direction, written.direction, atol=tolerance)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_image_round_trip_keeps_voxels_and_geometry(tmp_path, volume, ending):
    assert np.linalg.det(volume.direction) < 0  # a flipped (left-handed) grid
    path = write_image(volume, tmp_path / f"ct{ending}")
    read = read_image(path)
    assert read.array.dtype == np.int16
    np.testing.assert_array_equal(read.array, volume.array)
    assert_same_geometry(read, volume)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ct{ending}"]  # no temp file left


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_mask_is_written_on_exactly_the_input_grid(tmp_path, volume, ending):
    image_path = write_image(volume, tmp_path / f"ct{ending}")
    image = read_image(image_path)
    mask = image.array > 200
    read = read_image(write_image(image.with_array(mask.astype(np.uint8)), tmp_path / f"mask{ending}"))
    assert read.array.dtype == np.uint8
    np.testing.assert_array_equal(read.array, mask.astype(np.uint8))
    assert_same_geometry(read, volume)
    # SimpleITK agrees: the mask can be used with the image as-is
    sitk_image, sitk_mask = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(tmp_path / f"mask{ending}"))
    stats = sitk.LabelStatisticsImageFilter()
    stats.Execute(sitk_image, sitk_mask)  # raises when the grids differ
    assert stats.GetCount(1) == mask.sum()


def test_dicom_series_round_trip_right_handed(tmp_path, volume):
    volume = Volume(volume.array, SPACING, ORIGIN, oblique(flips=(-1, -1, 1)))  # x and y flipped
    files = write_dicom_series(volume, tmp_path / "series")
    assert len(files) == volume.shape[0]
    read = read_image(tmp_path / "series")
    np.testing.assert_array_equal(read.array, volume.array)
    assert_same_geometry(read, volume, tolerance=1e-4)


def test_dicom_series_of_a_left_handed_grid_keeps_every_voxel_in_place(tmp_path, volume):
    # DICOM's slice normal is row x column, so k comes back reversed: same voxel, same place.
    write_dicom_series(volume, tmp_path / "series")
    read = read_image(tmp_path / "series")
    np.testing.assert_array_equal(read.array, volume.array[::-1])
    kji = np.array([[0, 0, 0], [4, 5, 6], [2, 3, 1]], dtype=float)
    flipped = kji * [-1, 1, 1] + [volume.shape[0] - 1, 0, 0]
    np.testing.assert_allclose(read.kji_to_lps(flipped), volume.kji_to_lps(kji), atol=1e-4)


def test_index_and_world_conversions_match_itk(volume):
    image = volume.to_sitk()
    kji = np.array([[0.0, 0.0, 0.0], [4.0, 5.0, 6.0], [1.25, -0.5, 3.75]])
    lps = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p[::-1])) for p in kji])
    np.testing.assert_allclose(volume.kji_to_lps(kji), lps, atol=1e-9)
    ras = lps * [-1, -1, 1]
    np.testing.assert_allclose(volume.kji_to_ras(kji), ras, atol=1e-9)
    np.testing.assert_allclose(volume.ras_to_kji(ras), kji, atol=1e-9)
    back = [image.TransformPhysicalPointToContinuousIndex(tuple(p))[::-1] for p in lps]
    np.testing.assert_allclose(volume.lps_to_kji(lps), back, atol=1e-9)
    assert volume.voxel_volume_ml == pytest.approx(2.5 * 0.8 * 0.7 / 1000)


def test_sitk_conversion_round_trip(volume):
    image = volume.to_sitk()
    assert image.GetSize() == (7, 6, 5)
    assert image.GetSpacing() == pytest.approx(SPACING[::-1])
    back = Volume.from_sitk(image)
    np.testing.assert_array_equal(back.array, volume.array)
    assert_same_geometry(back, volume, tolerance=0)
    assert volume.with_array(volume.array > 0).same_grid(volume)
    with pytest.raises(ValueError, match="does not match the grid"):
        volume.with_array(np.zeros((2, 2, 2)))


def test_read_errors_name_the_path_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read .*missing\.nii\.gz: no such file"):
        read_image(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read .*junk\.nii\.gz: not a NIfTI/NRRD/MHA/DICOM file"):
        read_image(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no DICOM series in .*empty"):
        read_image(tmp_path / "empty")
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkInt16), str(flat))
    with pytest.raises(ValueError, match=r"flat\.nrrd: expected a 3D single-channel image, got 2D"):
        read_image(flat)


def test_write_refuses_unknown_endings(tmp_path, volume):
    with pytest.raises(ValueError, match=r"unsupported file ending; use one of \.nii\.gz"):
        write_image(volume, tmp_path / "ct.png")
    with pytest.raises(ValueError, match="write_segmentation"):
        write_image(volume, tmp_path / "ct.seg.nrrd")
    assert list(tmp_path.iterdir()) == []
