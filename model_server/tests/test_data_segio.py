"""Slicer .seg.nrrd files: named, coloured, overlapping segments on exactly the reference grid,
checked with slicerio and with Slicer's own segmentation storage node (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sam3d.data.io import Volume
from sam3d.data.segio import LESION_COLORS, Segment, lesion_color, read_segmentation, write_segmentation


@pytest.fixture
def reference() -> Volume:
    direction = Rotation.from_euler("xyz", [10, -7, 12], degrees=True).as_matrix() @ np.diag([-1, 1, 1])
    return Volume(np.zeros((6, 7, 8), np.int16), (2.5, 0.8, 0.7), (10.0, -20.0, 30.0), direction)


@pytest.fixture
def segments(reference) -> list[Segment]:
    first = np.zeros(reference.shape, bool)
    first[1:4, 2:5, 3:6] = True
    second = np.zeros(reference.shape, bool)
    second[2:5, 3:6, 4:7] = True  # overlaps the first
    third = np.zeros(reference.shape, bool)
    third[0, 0, 0:2] = True
    return [Segment(f"lesion {n}", mask, lesion_color(n)) for n, mask in enumerate([first, second, third], 1)]


def test_round_trip_keeps_names_colours_overlaps_and_grid(tmp_path, reference, segments):
    path = write_segmentation(tmp_path / "out.seg.nrrd", segments, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]
    read, grid = read_segmentation(path)
    assert [s.name for s in read] == ["lesion 1", "lesion 2", "lesion 3"]
    for got, wanted in zip(read, segments):
        np.testing.assert_allclose(got.color, wanted.color)
        np.testing.assert_array_equal(got.mask, wanted.mask)
    assert grid.same_grid(reference)


def test_slicer_reads_the_file_with_named_coloured_segments_on_the_reference_grid(tmp_path, reference, segments):
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util import numpy_support

    path = write_segmentation(tmp_path / "out.seg.nrrd", segments, reference)
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    ras_from_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    for index, wanted in enumerate(segments):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == wanted.name
        np.testing.assert_allclose(segment.GetColor(), wanted.color, atol=1e-6)
        labelmap = segment.GetRepresentation(labelmap_name)
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(ijk_to_ras, ras_from_lps @ reference.ijk_to_lps, atol=1e-9)
        extent = labelmap.GetExtent()
        assert extent == (0, 7, 0, 6, 0, 5)
        voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(reference.shape)
        np.testing.assert_array_equal(voxels == segment.GetLabelValue(), wanted.mask)


def test_bad_input_is_refused(tmp_path, reference, segments):
    with pytest.raises(ValueError, match=r"must end in \.seg\.nrrd"):
        write_segmentation(tmp_path / "out.nrrd", segments, reference)
    with pytest.raises(ValueError, match="does not match the reference grid"):
        write_segmentation(tmp_path / "out.seg.nrrd", [Segment("x", np.ones((2, 2, 2), bool))], reference)
    with pytest.raises(ValueError, match="color must be 3 numbers in 0..1"):
        write_segmentation(tmp_path / "out.seg.nrrd", [Segment("x", segments[0].mask, (255, 0, 0))], reference)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no such file"):
        read_segmentation(tmp_path / "missing.seg.nrrd")


def test_lesion_colours_are_distinct():
    colours = [lesion_color(n) for n in range(1, len(LESION_COLORS) + 1)]
    assert len(set(colours)) == len(colours)
    assert lesion_color(len(LESION_COLORS) + 1) == lesion_color(1)


def test_same_segments_give_the_same_bytes(tmp_path, reference, segments, monkeypatch):
    import time

    first = write_segmentation(tmp_path / "first.seg.nrrd", segments, reference)
    # pynrrd stamps the write time into the header; the writer removes that line
    monkeypatch.setattr(time, "gmtime", lambda *args: time.struct_time((2001, 2, 3, 4, 5, 6, 0, 34, 0)))
    second = write_segmentation(tmp_path / "second.seg.nrrd", segments, reference)
    assert first.read_bytes() == second.read_bytes()
    assert b"# on " not in first.read_bytes()[:1000]
