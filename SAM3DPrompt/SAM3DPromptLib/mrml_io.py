"""Moving data between MRML nodes and numpy arrays (no Qt; works with slicer-core and in Slicer).

Volume voxels and geometry, world positions of markup points, and a segment's voxels on the
volume's own grid. Arrays are (k, j, i), as ``slicer.util.arrayFromVolume`` returns them.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

# A cheap identity of a volume's voxels: node ID, image data MTime and spacing (kji).
VolumeFingerprint = Tuple[str, int, Tuple[float, float, float]]
# A cheap identity of a segment's voxels: the labelmap object and its modification time.
SegmentFingerprint = Tuple[str, int, int]
# What Slicer's DICOM SEG export writes as the segment's category and type (and what any DICOM
# viewer shows): SNOMED CT "Morphologically Altered Structure" / "Neoplasm", in the serialised
# form of Slicer's terminology entries (context~category~type~type modifier~anatomic context~...).
TUMOR_TERMINOLOGY = ("Segmentation category and type - DICOM master list"
                     "~SCT^49755003^Morphologically Altered Structure"
                     "~SCT^108369006^Neoplasm~^^"
                     "~Anatomic codes - DICOM master list~^^~^^")


class GeometryError(ValueError):
    """A node whose geometry the module cannot use; the message says what to do."""


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


# -- volumes ---------------------------------------------------------------------------------
def volume_array(volume_node) -> np.ndarray:
    """The voxels (k, j, i) of a scalar volume, without copying."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise GeometryError("The input volume has no voxels; select a loaded scalar volume.")
    array = slicer.util.arrayFromVolume(volume_node)
    if array.ndim != 3:
        raise GeometryError(f"The input volume has {array.ndim - 3} extra component axis; "
                            "select a single-component scalar volume.")
    return array


def volume_shape(volume_node) -> Tuple[int, int, int]:
    """(k, j, i) size of a volume's voxel grid."""
    dims = volume_node.GetImageData().GetDimensions()
    return int(dims[2]), int(dims[1]), int(dims[0])


def volume_spacing_kji(volume_node) -> Tuple[float, float, float]:
    spacing = volume_node.GetSpacing()
    return float(spacing[2]), float(spacing[1]), float(spacing[0])


def volume_fingerprint(volume_node) -> VolumeFingerprint:
    """(node ID, image data MTime, spacing): changes when the voxels are replaced or edited."""
    return (volume_node.GetID(), int(volume_node.GetImageData().GetMTime()),
            volume_spacing_kji(volume_node))


def ras_to_ijk_matrix(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    return matrix_to_numpy(matrix)


def ijk_to_ras_matrix(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


def world_to_local_matrix(node) -> np.ndarray:
    """World RAS -> the node's own frame: the inverse of its parent transforms (linear only)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise GeometryError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'. "
            "Harden the transform on the volume (Data module, right-click > Harden transform) "
            "and place the points again.")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformFromWorld(matrix)
    return matrix_to_numpy(matrix)


def _between_matrix(source_node, target_node) -> np.ndarray:
    """Frame of ``source_node`` -> frame of ``target_node`` (both through world; linear only)."""
    return world_to_local_matrix(target_node) @ np.linalg.inv(world_to_local_matrix(source_node))


# -- segments --------------------------------------------------------------------------------
def _grid_in_segmentation_frame(volume_node, segmentation_node,
                                extent: Sequence[int]) -> "slicer.vtkOrientedImageData":
    """An empty oriented image on the volume's voxel grid, in the segmentation's own frame."""
    ijk_to_seg = _between_matrix(volume_node, segmentation_node) @ ijk_to_ras_matrix(volume_node)
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_seg))
    image.SetExtent(*[int(v) for v in extent])
    return image


def _full_extent(volume_node) -> Tuple[int, int, int, int, int, int]:
    k, j, i = volume_shape(volume_node)
    return 0, i - 1, 0, j - 1, 0, k - 1


def use_binary_labelmap(segmentation_node) -> None:
    """Make voxels the segmentation's source representation (as the Segment Editor does), so
    that segments made from surfaces (e.g. imported models) can be written voxel by voxel."""
    name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if segmentation_node.GetSegmentation().GetSourceRepresentationName() != name:
        segmentation_node.CreateBinaryLabelmapRepresentation()
        segmentation_node.SetSourceRepresentationToBinaryLabelmap()


def segment_fingerprint(segmentation_node, segment_id: str) -> SegmentFingerprint:
    """Changes whenever anyone (this module, the Segment Editor) modifies the segment's voxels."""
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if labelmap is None or segment is None:
        return ("", 0, 0)
    return (labelmap.__this__, int(labelmap.GetMTime()), int(segment.GetLabelValue()))


def read_segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment's voxels on the volume's grid, bool (k, j, i)."""
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise KeyError(f"segment {segment_id!r} is not in '{segmentation_node.GetName()}'")
    shape = volume_shape(volume_node)
    stored = slicer.vtkOrientedImageData()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, stored, False):
        return np.zeros(shape, dtype=bool)
    extent = stored.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return np.zeros(shape, dtype=bool)
    reference = _grid_in_segmentation_frame(volume_node, segmentation_node, _full_extent(volume_node))
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            stored, reference, resampled):
        raise RuntimeError(f"Could not resample segment {segment_id!r} to the volume's grid.")
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape)
    # Segments may share one labelmap layer; this segment's voxels hold its label value.
    return values == segment.GetLabelValue()


def write_segment_box(segmentation_node, segment_id: str, volume_node,
                      lo: Sequence[int], box: np.ndarray) -> None:
    """Replace the segment's voxels inside the half-open box starting at ``lo`` (kji) by ``box``.

    Voxels outside the box, and other segments, are not touched. ``box`` is bool (k, j, i) on
    the volume's grid.
    """
    box = np.asarray(box, dtype=bool)
    if box.size == 0:
        return
    segmentation = segmentation_node.GetSegmentation()
    shared = []
    segmentation.GetSegmentIDsSharingBinaryLabelmapRepresentation(segment_id, shared, False)
    if shared:  # a layer of its own, so that the merges below see only this segment's values
        segmentation.SeparateSegmentLabelmap(segment_id)
    label_value = int(segmentation.GetSegment(segment_id).GetLabelValue())
    k0, j0, i0 = (int(v) for v in lo)
    nk, nj, ni = box.shape
    extent = (i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
    image = _grid_in_segmentation_frame(volume_node, segmentation_node, extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR if label_value < 256 else vtk.VTK_INT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = box.ravel() * label_value
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    # MODE_REPLACE would replace the whole segment by the box. Within the box, MIN removes the
    # segment's voxels where the box is 0, then MAX adds the box's voxels; outside, nothing changes.
    for mode in (logic.MODE_MERGE_MIN, logic.MODE_MERGE_MAX):
        if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, mode, extent):
            raise RuntimeError(f"Could not write into segment {segment_id!r} of "
                               f"'{segmentation_node.GetName()}'.")


def set_tumor_terminology(segmentation_node, segment_id: str) -> None:
    """Tag the segment as a tumor (``TUMOR_TERMINOLOGY``), so a DICOM SEG export codes it."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    segment.SetTag(segment.GetTerminologyEntryTagName(), TUMOR_TERMINOLOGY)
