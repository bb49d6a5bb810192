"""Box prompts as a Markups ROI (no Qt): the volume's box ROI, its box in the uploaded array's
continuous kji indices, a 2D box on a slice, and snapshots of the ROI for undo.

The module keeps one box ROI per volume, tied to it by the same node reference as the prompt
list (``prompts.VOLUME_REFERENCE_ROLE``); an earlier lesion's box loses that reference when the
user goes on to the next lesion, but keeps a second one (``BOX_VOLUME_ROLE``), so that
``volume_box_rois`` finds every box of the volume (to save them with its point list). A box ROI is
named after its lesion, "<volume> lesion N box" (N as in its points' descriptions), so that in a
saved file it is the box of the list "<volume> lesion N" (``prompts.saved_lesions``). The box sent to the server is the ROI in the volume's
continuous kji indices (world RAS -> the volume's frame through its parent transforms ->
``RASToIJK``, the same conversion as clicks): centred where the ROI is, and along each index
axis as long as the ROI's edge nearest that axis - the ROI itself when it is aligned with the
volume's axes, and a box of the size drawn on an oblique volume, whose slice views stay aligned
with RAS (the smallest box holding the ROI's eight corners would take in up to 1.7 times more
tissue per axis; it is used only where the ROI's edges do not pair off with the volume's axes,
near 45 degrees). Where the box is thinner than one voxel along k, both corners go to the
nearest slice: a 2D box on that slice (as nnInteractive does). The 2D pathway works on the
volume's k slices, so a box drawn in a view across them (a coronal or sagittal view of an axial
scan) becomes a 3D box as deep as it is wide (``make_roi_deep``), and a box thinner than a voxel
along j or i is refused with a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .geometry import ras_to_kji
from .mrml_io import matrix_to_numpy, numpy_to_matrix, world_to_local_matrix
from .prompts import ROI_CLASS, VOLUME_REFERENCE_ROLE, PromptError

BOX_COLOR = (1.0, 0.85, 0.10)
# The node reference from every box ROI the module made for a volume (kept on release).
BOX_VOLUME_ROLE = "SAM3DPrompt.boxVolume"


@dataclass
class RoiState:
    """Where an ROI was: its orientation and centre in its own node frame, its size, and its
    parent transform (enough to put a box back on undo, also into a new ROI node)."""

    object_to_node: np.ndarray
    size: Tuple[float, float, float]
    transform_id: Optional[str]


def find_box_roi(scene, volume_node):
    """The box ROI tied to ``volume_node`` (by the node reference), or None."""
    rois = _rois_of(scene, volume_node, VOLUME_REFERENCE_ROLE)
    return rois[0] if rois else None


def volume_box_rois(scene, volume_node) -> list:
    """Every box ROI the module made for ``volume_node``: the current one and those released
    (earlier lesions'), in the scene's order (the order they were made)."""
    return _rois_of(scene, volume_node, BOX_VOLUME_ROLE)


def _rois_of(scene, volume_node, role: str) -> list:
    """The scene's ROIs whose ``role`` reference is ``volume_node``, in the scene's order."""
    if volume_node is None:
        return []
    return [node for node in (scene.GetNthNodeByClass(n, ROI_CLASS)
                              for n in range(scene.GetNumberOfNodesByClass(ROI_CLASS)))
            if node.GetNodeReferenceID(role) == volume_node.GetID()]


def box_roi_name(volume_node, lesion: Optional[int]) -> str:
    """The name of lesion ``lesion``'s box ROI ("<volume> box" while the lesion is not known)."""
    name = volume_node.GetName()
    return f"{name} box" if lesion is None else f"{name} lesion {lesion} box"


def create_box_roi(scene, volume_node, lesion: Optional[int] = None):
    """A new, not yet placed box ROI for ``volume_node``, named after it and its lesion (see
    ``box_roi_name``) and tied to it."""
    node = scene.AddNewNodeByClass(ROI_CLASS, box_roi_name(volume_node, lesion))
    node.CreateDefaultDisplayNodes()
    node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    node.SetNodeReferenceID(BOX_VOLUME_ROLE, volume_node.GetID())
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*BOX_COLOR)
    return node


def release_box_roi(roi) -> None:
    """Keep an earlier lesion's box in the scene, locked, but no longer as the volume's box
    (it stays among ``volume_box_rois``)."""
    roi.RemoveNodeReferenceIDs(VOLUME_REFERENCE_ROLE)
    roi.SetLocked(True)


def roi_defined(roi) -> bool:
    """Whether the ROI is a placed box: every control point defined (none still being placed)
    and a size along at least one axis."""
    count = roi.GetNumberOfControlPoints()
    if count == 0 or any(roi.GetNthControlPointPositionStatus(n) != roi.PositionDefined for n in range(count)):
        return False
    return max(roi.GetSize()) > 0.0


def roi_frame_world(roi) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROI in world RAS (its parent transform must be linear): its centre ``[3]``, its axes
    as unit column vectors ``[3, 3]`` and its size along them in mm ``[3]``."""
    object_to_world = np.linalg.inv(world_to_local_matrix(roi)) @ matrix_to_numpy(roi.GetObjectToNodeMatrix())
    linear = object_to_world[:3, :3]
    scale = np.linalg.norm(linear, axis=0)  # a parent transform may stretch the ROI
    return object_to_world[:3, 3], linear / scale, np.asarray(roi.GetSize(), dtype=np.float64) * scale


def kji_per_mm(ras_to_ijk: np.ndarray, world_to_local: Optional[np.ndarray]) -> np.ndarray:
    """``[3, 3]``: how far (in voxels along k, j, i: the rows) one mm along world R, A, S (the
    columns) moves; the conversion is affine, so the same everywhere."""
    origin = ras_to_kji(np.zeros((1, 3)), ras_to_ijk, world_to_local)[0]
    return (ras_to_kji(np.eye(3), ras_to_ijk, world_to_local) - origin).T


def volume_axes_world(to_kji: np.ndarray) -> np.ndarray:
    """Unit world directions ``[3, 3]`` (rows k, j, i) of the volume's index axes, from
    :func:`kji_per_mm` (exact for the orthogonal grids scanners write)."""
    return to_kji / np.linalg.norm(to_kji, axis=1, keepdims=True)


def nearest_axis(directions: np.ndarray, towards: Sequence[float]) -> int:
    """Which of ``directions`` (unit vectors, as rows) lies closest to the line of ``towards``."""
    return int(np.argmax(np.abs(np.asarray(directions) @ np.asarray(towards, dtype=np.float64))))


def roi_extent_kji(axes: np.ndarray, size: np.ndarray, to_kji: np.ndarray) -> np.ndarray:
    """The box's length in voxels along k, j, i for an ROI with world ``axes`` (unit columns) and
    ``size`` (mm): the ROI's edge nearest each index axis (see the module docstring), or the
    extent of its eight corners where its edges do not pair off with the axes."""
    nearest = [nearest_axis(axes.T, direction) for direction in volume_axes_world(to_kji)]
    if len(set(nearest)) == 3:
        return size[nearest] * np.linalg.norm(to_kji, axis=1)
    return np.abs(to_kji @ (axes * size)).sum(axis=1)


def box_from_bounds(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``[lo, hi]`` (kji, float) cut to the volume; thinner than one voxel along k, both corners
    go to the nearest slice (a 2D box). Raises PromptError when the box misses the volume, or
    is thinner than a voxel along j or i (drawn across the volume's slices)."""
    lo, hi = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
    upper = np.asarray(shape, dtype=np.float64) - 0.5
    if np.any(hi < -0.5) or np.any(lo > upper):
        raise PromptError("The box lies outside the input volume; draw it on the volume, around the lesion.")
    if np.any(hi[1:] - lo[1:] < 1.0):
        raise PromptError("The box is thinner than one voxel across the volume's slices (drawn in a view that "
                          "cuts across them); give it depth, or draw it in the view that shows the slices.")
    lo, hi = np.maximum(lo, -0.5), np.minimum(hi, upper)
    if np.any(hi[1:] - lo[1:] < 1.0):
        raise PromptError("The box barely touches the input volume; draw it on the volume, around the lesion.")
    if hi[0] - lo[0] < 1.0:
        lo[0] = hi[0] = np.clip(np.round((lo[0] + hi[0]) / 2.0), 0, shape[0] - 1)
    return np.stack([lo, hi])


def roi_box_kji(roi, ras_to_ijk: np.ndarray, world_to_local: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The ROI as a box ``[lo, hi]`` in the continuous kji indices of a volume (see the module
    docstring); ``ras_to_ijk`` / ``world_to_local`` as for :func:`geometry.ras_to_kji`."""
    centre, axes, size = roi_frame_world(roi)
    centre_kji = ras_to_kji(centre[None], ras_to_ijk, world_to_local)[0]
    half = roi_extent_kji(axes, size, kji_per_mm(ras_to_ijk, world_to_local)) / 2.0
    return box_from_bounds(centre_kji - half, centre_kji + half, shape)


def make_roi_deep(roi, normal_world: Sequence[float], width_world: Sequence[float]) -> None:
    """Give a box drawn in a slice view (normal ``normal_world``) a depth along that normal equal
    to its width along ``width_world`` (a direction in the slice): a 3D box as deep as it is wide."""
    _, axes, size = roi_frame_world(roi)
    flatten_roi(roi, normal_world, float(size[nearest_axis(axes.T, width_world)]))


def flatten_roi(roi, normal_world: Sequence[float], thickness: float) -> None:
    """Make the ROI ``thickness`` mm thin along its axis closest to ``normal_world`` (the normal
    of the slice it was drawn on): Slicer pads a box drawn in a slice view to a cube-like depth."""
    node_to_world = np.linalg.inv(world_to_local_matrix(roi))[:3, :3]
    normal_node = node_to_world.T @ np.asarray(normal_world, dtype=np.float64)  # normals go by M^T
    axes = matrix_to_numpy(roi.GetObjectToNodeMatrix())[:3, :3].T @ normal_node
    size = list(roi.GetSize())
    size[int(np.argmax(np.abs(axes)))] = float(thickness)
    roi.SetSize(*size)


def roi_state(roi) -> RoiState:
    return RoiState(object_to_node=matrix_to_numpy(roi.GetObjectToNodeMatrix()),
                    size=tuple(float(v) for v in roi.GetSize()), transform_id=roi.GetTransformNodeID())


def restore_roi(roi, state: RoiState) -> None:
    """Put ``roi`` where ``state`` says (also a new, empty ROI node)."""
    roi.SetAndObserveTransformNodeID(state.transform_id)
    roi.SetSize(*state.size)
    roi.GetObjectToNodeMatrix().DeepCopy(numpy_to_matrix(state.object_to_node))
