"""DICOM in, DICOM SEG out, without a PACS: `sam3d segment --out seg.dcm` on an oblique, flipped
series whose files are not in slice order lands on the voxels of the .seg.nrrd output and
references the right instances; bad DICOM input gets a clear message; a DICOM SEG serves as a
batch's prior mask and reference."""

from __future__ import annotations

import csv
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_helpers import assert_frames_reference_their_slices, oblique_direction, on_grid, phantom_ct, write_ct_series
from sam3d import __version__
from sam3d.cli import main
from sam3d.data.dicom_seg import read_dicom_seg
from sam3d.data.io import file_sha256, read_dicom_series
from sam3d.data.segio import read_segmentation

FLIPPED_OBLIQUE = oblique_direction(15) @ np.diag([-1.0, -1.0, 1.0])  # rows run right-to-left, columns up


def run_cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """An oblique, flipped CT series (files named by UID, instance numbers against the positions)."""
    volume, tumor_kji = phantom_ct(FLIPPED_OBLIQUE)
    folder = tmp_path_factory.mktemp("dicom") / "ct"
    write_ct_series(volume, folder)
    return volume, tumor_kji, folder


def test_series_reads_in_slice_order_whatever_the_file_order(ct):
    volume, _, folder = ct
    series = read_dicom_series(folder)
    assert series.volume.same_grid(volume, tolerance=1e-4)
    np.testing.assert_array_equal(series.volume.array, volume.array)
    positions = [np.array([float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient])
                 for f in series.files]
    np.testing.assert_allclose(positions, volume.kji_to_lps(np.c_[np.arange(40), np.zeros((40, 2))]), atol=1e-4)


def test_segment_out_dcm_lands_on_the_voxels_of_the_seg_nrrd(tiny_model, ct, tmp_path):
    volume, tumor_kji, folder = ct
    ras = volume.kji_to_ras([tumor_kji])[0]
    common = [str(folder), "--point=" + ",".join(f"{v:.4f}" for v in ras), "--model", str(tiny_model), "--device", "cpu"]
    status, text = run_cli("segment", *common, "--out", str(tmp_path / "tumor.dcm"))
    assert status == 0, text
    status, text = run_cli("segment", *common, "--out", str(tmp_path / "tumor.seg.nrrd"))
    assert status == 0, text
    nrrd_segments, nrrd_grid = read_segmentation(tmp_path / "tumor.seg.nrrd")
    assert nrrd_grid.same_grid(volume, tolerance=1e-4) and nrrd_segments[0].mask.any()

    seg = hd.seg.segread(tmp_path / "tumor.dcm")  # highdicom reads it: a valid SEG
    segments, grid = read_dicom_seg(tmp_path / "tumor.dcm")
    assert [s.name for s in segments] == ["Tumor"]
    np.testing.assert_array_equal(on_grid(grid, segments[0].mask, volume), nrrd_segments[0].mask)
    assert_frames_reference_their_slices(seg, folder)
    source = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert {str(r.SeriesInstanceUID) for r in seg.ReferencedSeriesSequence} == {str(source.SeriesInstanceUID)}
    description = seg.get_segment_description(1)
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    assert description.algorithm_identification[0].AlgorithmName == "tiny-random"
    assert description.algorithm_identification[0].AlgorithmVersion == __version__
    assert description.algorithm_identification[0].AlgorithmParameters == f"checkpoint_sha256={file_sha256(tiny_model)}"
    assert description.segmented_property_type.value == "108369006"  # SNOMED CT Neoplasm


def test_segment_out_dcm_needs_a_dicom_series(tiny_model, tmp_path):
    from sam3d.data.io import write_image

    volume, _ = phantom_ct()
    image = write_image(volume, tmp_path / "ct.nii.gz")
    status, text = run_cli("segment", str(image), "--point=0,0,0", "--out", str(tmp_path / "x.dcm"),
                           "--model", str(tiny_model))
    assert status == 2 and "give the series' folder as the image" in text
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize("problem", ["missing slice", "two series", "only a SEG", "a SEG file"])
def test_bad_dicom_input_gets_a_clear_message(tiny_model, ct, tmp_path, problem):
    volume, tumor_kji, folder = ct
    if problem == "missing slice":
        image, expected = tmp_path / "gappy", "1 slice(s) missing"
        write_ct_series(volume, image, drop=(17,))
    elif problem == "two series":
        image, expected = tmp_path / "mixed", "holds 2 image series"
        shutil.copytree(folder, image)
        write_ct_series(volume, image, description="CT second")
    else:
        seg_folder = tmp_path / "seg"
        seg_folder.mkdir()
        ras = volume.kji_to_ras([tumor_kji])[0]
        status, text = run_cli("segment", str(folder), "--point=" + ",".join(f"{v:.4f}" for v in ras),
                               "--out", str(seg_folder / "tumor.dcm"), "--model", str(tiny_model), "--device", "cpu")
        assert status == 0, text
        if problem == "only a SEG":
            image, expected = seg_folder, "holds no image series, only DICOM Segmentation Storage object(s)"
        else:
            image, expected = seg_folder / "tumor.dcm", "it is a DICOM Segmentation Storage object, not an image"
    out = tmp_path / "out.seg.nrrd"
    status, text = run_cli("segment", str(image), "--point=0,0,0", "--out", str(out), "--model", str(tiny_model))
    assert status == 2, text
    assert expected in text
    assert not out.exists()


def test_batch_takes_a_dicom_seg_as_prior_mask_and_reference(tiny_model, ct, tmp_path):
    volume, tumor_kji, folder = ct
    prior = np.zeros(volume.shape, bool)
    prior[tumor_kji[0] - 1:tumor_kji[0] + 2, tumor_kji[1] - 3:tumor_kji[1] + 4, tumor_kji[2] - 3:tumor_kji[2] + 4] = True
    prior[30:33, 40:44, 20:24] = True  # a second lesion
    from sam3d.data.dicom_seg import write_dicom_seg
    from sam3d.data.segio import Segment

    write_dicom_seg(tmp_path / "prior.dcm", [Segment("earlier", prior)], read_dicom_series(folder), "reader", False)
    manifest = tmp_path / "cases.json"
    manifest.write_text(json.dumps([
        {"id": "dicom", "image": str(folder), "prior_mask": "prior.dcm", "reference": "prior.dcm"},
        {"id": "nifti", "image": "ct.nii.gz", "prior_mask": "prior.dcm"}]))
    from sam3d.data.io import write_image

    write_image(volume, tmp_path / "ct.nii.gz")
    status, text = run_cli("batch", str(manifest), "--out", str(tmp_path / "out"), "--prompts-from-mask",
                           "--output-format", "both", "--model", str(tiny_model), "--device", "cpu", "--quiet")
    assert status == 1, text  # the NIfTI case cannot get a DICOM SEG
    rows = {row["id"]: row for row in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    assert rows["dicom"]["status"] == "done" and rows["dicom"]["lesions"] == "2" and rows["dicom"]["dice"] != ""
    assert rows["nifti"]["status"] == "failed" and "refers to the slices of a DICOM series" in rows["nifti"]["error"]
    assert not list((tmp_path / "out").glob("nifti.*"))
    seg = hd.seg.segread(tmp_path / "out" / "dicom.seg.dcm")
    assert seg.get_segment_description(1).algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert seg.get_segment_description(1).algorithm_identification[0].AlgorithmParameters == \
        f"checkpoint_sha256={file_sha256(tiny_model)}"
    nrrd_segments, _ = read_segmentation(tmp_path / "out" / "dicom.seg.nrrd")
    segments, grid = read_dicom_seg(tmp_path / "out" / "dicom.seg.dcm")
    assert [s.name for s in segments] == [s.name for s in nrrd_segments] == ["lesion 1", "lesion 2"]
    for from_seg, from_nrrd in zip(segments, nrrd_segments):
        np.testing.assert_array_equal(on_grid(grid, from_seg.mask, volume), from_nrrd.mask)
        np.testing.assert_allclose(from_seg.color, from_nrrd.color, atol=0.02)
    assert_frames_reference_their_slices(seg, folder)
    # resume: both files intact, nothing runs again
    status, text = run_cli("batch", str(manifest), "--out", str(tmp_path / "out"), "--prompts-from-mask", "--resume",
                           "--output-format", "both", "--model", str(tiny_model), "--device", "cpu", "--quiet")
    assert "ran 1 in" in text and "(1 finished before)" in text
