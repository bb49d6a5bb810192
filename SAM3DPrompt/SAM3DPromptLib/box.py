"""Box prompts as a Markups ROI (no Qt): the volume's box ROI, its box in the uploaded array's
continuous kji indices, a 2D box on a slice, and snapshots of the ROI for undo.

The module keeps one box ROI per volume, tied to it by the same node reference as the prompt
list (``prompts.VOLUME_REFERENCE_ROLE``). The box sent to the server is the smallest kji box
that holds the ROI's eight corners (world RAS -> the volume's frame through its parent
transforms -> ``RASToIJK``, the same conversion as clicks): the ROI itself when it is aligned
with the volume's axes. Along an index axis where the box spans less than one voxel, both
corners go to the nearest slice: that is a 2D box on that slice (as nnInteractive does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .geometry import ras_to_kji
from .mrml_io import matrix_to_numpy, numpy_to_matrix, world_to_local_matrix
from .prompts import VOLUME_REFERENCE_ROLE, PromptError

ROI_CLASS = "vtkMRMLMarkupsROINode"
BOX_COLOR = (1.0, 0.85, 0.10)
# Object-frame signs of a box's eight corners (times half its size).
_CORNER_SIGNS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)


@dataclass
class RoiState:
    """Where an ROI was: its orientation and centre in its own node frame, its size, and its
    parent transform (enough to put a box back on undo, also into a new ROI node)."""

    object_to_node: np.ndarray
    size: Tuple[float, float, float]
    transform_id: Optional[str]


def find_box_roi(scene, volume_node):
    """The box ROI tied to ``volume_node`` (by the node reference), or None."""
    if volume_node is None:
        return None
    for index in range(scene.GetNumberOfNodesByClass(ROI_CLASS)):
        node = scene.GetNthNodeByClass(index, ROI_CLASS)
        if node.GetNodeReferenceID(VOLUME_REFERENCE_ROLE) == volume_node.GetID():
            return node
    return None


def create_box_roi(scene, volume_node):
    """A new, not yet placed box ROI for ``volume_node``, named after it and tied to it."""
    node = scene.AddNewNodeByClass(ROI_CLASS, f"{volume_node.GetName()} box")
    node.CreateDefaultDisplayNodes()
    node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*BOX_COLOR)
    return node


def release_box_roi(roi) -> None:
    """Keep an earlier lesion's box in the scene, locked, but no longer as the volume's box."""
    roi.RemoveNodeReferenceIDs(VOLUME_REFERENCE_ROLE)
    roi.SetLocked(True)


def roi_defined(roi) -> bool:
    """Whether the ROI is a placed box: every control point defined (none still being placed)
    and a size along at least one axis."""
    count = roi.GetNumberOfControlPoints()
    if count == 0 or any(roi.GetNthControlPointPositionStatus(n) != roi.PositionDefined for n in range(count)):
        return False
    return max(roi.GetSize()) > 0.0


def roi_corners_world(roi) -> np.ndarray:
    """World RAS of the ROI's eight corners ``[8, 3]`` (its parent transform must be linear)."""
    half = 0.5 * np.asarray(roi.GetSize(), dtype=np.float64)
    corners = np.concatenate([_CORNER_SIGNS * half, np.ones((8, 1))], axis=1)
    node_to_world = np.linalg.inv(world_to_local_matrix(roi))
    world = corners @ (node_to_world @ matrix_to_numpy(roi.GetObjectToNodeMatrix())).T
    return world[:, :3] / world[:, 3:4]


def box_from_corners(corners_kji: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``[lo, hi]`` (kji, float) of the box holding ``corners_kji``, cut to the volume; an axis
    spanning less than one voxel goes to its nearest slice (a 2D box). Raises PromptError when
    the box misses the volume."""
    lo, hi = corners_kji.min(axis=0), corners_kji.max(axis=0)
    upper = np.asarray(shape, dtype=np.float64) - 0.5
    if np.any(hi < -0.5) or np.any(lo > upper):
        raise PromptError("The box lies outside the input volume; draw it on the volume, around the lesion.")
    lo, hi = np.maximum(lo, -0.5), np.minimum(hi, upper)
    flat = hi - lo < 1.0
    middle = np.clip(np.round((lo + hi) / 2.0), 0, np.asarray(shape) - 1)
    lo[flat] = hi[flat] = middle[flat]
    return np.stack([lo, hi])


def roi_box_kji(roi, ras_to_ijk: np.ndarray, world_to_local: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The ROI as a box ``[lo, hi]`` in the continuous kji indices of a volume (see the module
    docstring); ``ras_to_ijk`` / ``world_to_local`` as for :func:`geometry.ras_to_kji`."""
    return box_from_corners(ras_to_kji(roi_corners_world(roi), ras_to_ijk, world_to_local), shape)


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
