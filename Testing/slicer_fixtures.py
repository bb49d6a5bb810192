"""Fixtures for the Slicer-side tests: a real MRML scene from slicer-core and volume nodes.

Import the fixtures by name in a test module (``from slicer_fixtures import mrml_scene``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "SAM3DPrompt"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
import vtk  # noqa: E402  (slicer-core pins its own vtk)

from SAM3DPromptLib.mrml_io import numpy_to_matrix  # noqa: E402


@pytest.fixture
def mrml_scene():
    """A fresh scene, set as ``slicer.mrmlScene``, with the segmentation converters registered."""
    scene = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)
    yield scene
    segmentations_logic.SetMRMLScene(None)
    scene.Clear(True)
    slicer.mrmlScene = previous


def oblique_ijk_to_ras(spacing=(0.8, 1.3, 2.1), origin=(-31.5, 12.25, 47.0)) -> np.ndarray:
    """IJK -> RAS of an oblique (25 degrees about a tilted axis), flipped (det < 0) grid with
    non-unit spacing (i, j, k order) and a non-zero origin."""
    axis = np.array([0.3, -0.5, 0.81])
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(25.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    directions = rotation @ np.diag([1.0, -1.0, 1.0])  # flip the j axis
    matrix = np.eye(4)
    matrix[:3, :3] = directions @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def add_volume(scene, array: np.ndarray, ijk_to_ras: np.ndarray, name: str = "volume"):
    """A scalar volume node holding ``array`` (k, j, i) on the grid ``ijk_to_ras``."""
    assert scene is slicer.mrmlScene, "slicer.util works on slicer.mrmlScene"
    return slicer.util.addVolumeFromArray(np.ascontiguousarray(array), ijkToRAS=ijk_to_ras, name=name)


def load_volume_file(scene, path, name: str = "volume"):
    """Read a NRRD / NIfTI file into a volume node with Slicer's own reader (LPS -> RAS)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        raise RuntimeError(f"Slicer could not read {path}")
    return node


def add_linear_transform(scene, matrix: np.ndarray, name: str = "transform"):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(numpy_to_matrix(matrix))
    return node


def rigid_matrix(degrees: float, axis, translation) -> np.ndarray:
    """A rotation about ``axis`` followed by a translation, as a 4x4 matrix."""
    transform = vtk.vtkTransform()
    transform.Translate(*translation)
    transform.RotateWXYZ(degrees, *axis)
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


# -- server and phantom data -------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
TEST_MODEL_FILE = REPO / "model_server" / "sam3d" / "models" / "small_phantoms.pt"
needs_trained_model = pytest.mark.skipif(
    not TEST_MODEL_FILE.is_file(),
    reason=f"needs the bundled small-phantoms model {TEST_MODEL_FILE.relative_to(REPO)}: "
           "a random-weight model cannot show a meaningful segmentation")


def load_phantom(scene, directory: Path, seed: int = 0, shape=(40, 40, 40), name: str = "phantom"):
    """A synthetic CT with a tumor (shape None: the generator's own drawn size), written as NRRD
    by sam3d's IO and read by Slicer's reader.

    Returns (image node, label node, image Volume, label Volume), the Volumes as generated."""
    from sam3d.data.io import write_image
    from sam3d.data.phantoms import generate_case
    image, label = generate_case(seed, shape=shape)
    image_path = write_image(image, directory / f"{name}.nrrd")
    label_path = write_image(label, directory / f"{name}-label.nrrd")
    return (load_volume_file(scene, image_path, name), load_volume_file(scene, label_path, f"{name}-label"),
            image, label)


def place_click(logic, world, positive: bool = True):
    """Place a point in the logic's prompt list as the Widget's place mode does; its click."""
    node = logic.prompt_list()
    node.AddControlPointWorld(*world)
    [click] = logic.new_clicks(node, positive)
    return click


def clicks_sent(logic) -> int:
    """The clicks of the logic's applied steps (white-box: what undo would walk back)."""
    return sum(len(step.clicks) for step in logic._steps)


def server_sessions(server_url: str) -> int:
    """The sessions a server holds now (GET /v1/metrics)."""
    import requests

    return requests.get(f"{server_url}/v1/metrics", timeout=30).json()["sessions"]
