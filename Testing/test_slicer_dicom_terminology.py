"""The module's lesion segments carry a tumor terminology (SNOMED CT "Neoplasm"), what Slicer's
DICOM SEG export codes a segment with: a segment saved by Slicer's own writer keeps it, slicerio
reads it, and a DICOM SEG written from that .seg.nrrd with those codes (highdicom, as the
exporter does) opens again with the codes and the voxels. Slicer's DICOM module itself (its
exporter and browser) is not part of slicer-core and is not run here."""

from __future__ import annotations

import numpy as np
import pytest
import slicerio

from slicer_fixtures import add_volume, mrml_scene, slicer  # noqa: F401  (fixture)

hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install 'sam3dprompt-server[dicom]')")

from SAM3DPromptLib.logic import PromptLogic  # noqa: E402
from SAM3DPromptLib.mrml_io import read_segment_mask, write_segment_box  # noqa: E402
from dicom_helpers import write_dicom_series  # noqa: E402
from sam3d.data.io import Volume, read_dicom_series  # noqa: E402
from sam3d.data.resample import resample_to_reference  # noqa: E402
from sam3d.data.segio import read_segmentation  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def test_lesion_segments_are_tumors_and_their_dicom_seg_opens_again(mrml_scene, tmp_path):
    # a right-handed LPS grid (DICOM stacks slices along row x column), tilted, non-unit spacing
    angle = np.deg2rad(10)
    direction = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image = Volume(np.random.default_rng(1).integers(-100, 100, (12, 20, 24)).astype(np.int16),
                   spacing=(2.0, 0.9, 0.8), origin=(-20.0, 30.0, 55.0), direction=direction)
    write_dicom_series(image, tmp_path / "ct")
    series = read_dicom_series(tmp_path / "ct")
    volume_node = add_volume(mrml_scene, series.volume.array, LPS_TO_RAS @ series.volume.ijk_to_lps)

    logic = PromptLogic(scene=mrml_scene)
    segmentation_node = logic.create_segmentation(volume_node)
    segment_id = logic.add_lesion_segment(segmentation_node)
    box = np.zeros((3, 5, 4), bool)
    box[1:, 1:4, :3] = True
    write_segment_box(segmentation_node, segment_id, volume_node, (4, 7, 9), box)
    expected = read_segment_mask(segmentation_node, segment_id, volume_node)
    assert expected.sum() == box.sum()

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "lesions.seg.nrrd"))
    assert storage.WriteData(segmentation_node)
    segmentation = slicerio.read_segmentation(str(tmp_path / "lesions.seg.nrrd"))
    [segment] = segmentation["segments"]
    terminology = segment["terminology"]
    assert terminology["category"][:2] == ["SCT", "49755003"]  # [scheme, code, meaning]
    assert terminology["type"] == ["SCT", "108369006", "Neoplasm"]

    # the .seg.nrrd's voxels as (k, row, column) frames of the series, coded from its terminology
    [saved], grid = read_segmentation(tmp_path / "lesions.seg.nrrd")  # Slicer may crop the grid
    mask = resample_to_reference(grid.with_array(saved.mask.astype(np.uint8)), series.volume,
                                 interpolator="nearest", default_value=0).array > 0
    np.testing.assert_array_equal(mask, expected)

    def code(entry):
        scheme, value, meaning = entry
        return hd.sr.CodedConcept(value, scheme, meaning)

    import pydicom

    sources = [pydicom.dcmread(path) for path in series.files]
    for source in sources:  # GDCM leaves the patient / study identifiers of the test series empty
        source.PatientID, source.PatientName, source.StudyID = "P1", "Test^Patient", "1"
        source.AccessionNumber, source.ReferringPhysicianName = "A1", ""
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=segment["name"], segmented_property_category=code(terminology["category"]),
        segmented_property_type=code(terminology["type"]), algorithm_type="SEMIAUTOMATIC",
        algorithm_identification=hd.AlgorithmIdentificationSequence("SAM3DPrompt", hd.sr.CodedConcept(
            "123110", "DCM", "Artificial Intelligence"), "test"))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint8), segmentation_type="BINARY",
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=10,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="1")
    seg.save_as(tmp_path / "lesions.dcm")

    reopened = hd.seg.segread(tmp_path / "lesions.dcm")
    again = reopened.get_segment_description(1)
    assert again.segmented_property_type.value == "108369006" and again.segment_label == "Lesion 1"
    frames = reopened.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(s.SOPInstanceUID) for s in sources], segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(frames > 0, mask)
