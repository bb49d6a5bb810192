"""In real Slicer, without a server: clicks land on their voxel and segment boxes are written
where Slicer's own helpers read them (slicer.util.loadVolume / arrayFromSegmentBinaryLabelmap)."""

from __future__ import annotations

import os
import tempfile
import unittest

import numpy as np
import slicer
import vtk

from SAM3DPromptLib.logic import PromptLogic
from SAM3DPromptLib.mrml_io import read_segment_mask, write_segment_box
from SAM3DPromptLib.prompts import click_from_markup


class SAM3DPromptGeometryTest(unittest.TestCase):
    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def _obliqueFlippedVolume(self):
        """Written to NRRD and loaded back by Slicer's reader, under a linear transform."""
        rng = np.random.default_rng(3)
        array = rng.integers(-500, 500, size=(11, 13, 17)).astype(np.int16)
        angle = np.deg2rad(30.0)
        rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = rotation @ np.diag([-1.0, 1.0, 1.0]) @ np.diag([0.7, 1.1, 2.5])
        ijkToRas[:3, 3] = [12.0, -40.0, 75.5]
        source = slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRas, name="source")
        path = os.path.join(tempfile.mkdtemp(), "oblique.nrrd")
        self.assertTrue(slicer.util.saveNode(source, path))
        volume = slicer.util.loadVolume(path)
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        toParent = vtk.vtkTransform()
        toParent.Translate(-3, 8, 1)
        toParent.RotateWXYZ(35, 1.0, 0.4, 0.1)
        transform.SetMatrixTransformToParent(toParent.GetMatrix())
        volume.SetAndObserveTransformNodeID(transform.GetID())
        return volume

    def test_SAM3DPromptGeometry_ClickLandsOnVoxel(self) -> None:
        volume = self._obliqueFlippedVolume()
        array = slicer.util.arrayFromVolume(volume)
        logic = PromptLogic(scene=slicer.mrmlScene)
        logic.volume_node = volume
        markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "SAM3D positive")
        for kji in [(0, 0, 0), (5, 6, 7), (10, 12, 16), (3, 11, 2)]:
            ijkToRas = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(ijkToRas)
            local = ijkToRas.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])[:3]
            toWorld = vtk.vtkGeneralTransform()
            volume.GetParentTransformNode().GetTransformToWorld(toWorld)
            index = markups.AddControlPointWorld(*toWorld.TransformPoint(local))
            found = logic.points_kji([click_from_markup(markups, index)])[0]
            np.testing.assert_allclose(found, kji, atol=1e-4)
            self.assertEqual(array[tuple(int(round(v)) for v in found)], array[kji])

    def test_SAM3DPromptGeometry_SegmentBoxMatchesSlicerHelpers(self) -> None:
        volume = self._obliqueFlippedVolume()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        segmentId = segmentation.GetSegmentation().AddEmptySegment("", "lesion")
        full = np.random.default_rng(4).random(slicer.util.arrayFromVolume(volume).shape) > 0.5
        slicer.util.updateSegmentBinaryLabelmapFromArray(full.astype(np.uint8), segmentation, segmentId, volume)
        np.testing.assert_array_equal(read_segment_mask(segmentation, segmentId, volume), full)
        box = np.zeros((4, 5, 6), bool)
        box[1:3, 1:4, 2:5] = True
        write_segment_box(segmentation, segmentId, volume, (2, 3, 4), box)
        expected = full.copy()
        expected[2:6, 3:8, 4:10] = box
        actual = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume).astype(bool)
        np.testing.assert_array_equal(actual, expected)
