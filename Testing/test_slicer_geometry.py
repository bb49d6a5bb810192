"""A click placed in world RAS lands on the voxel it was placed on: oblique, flipped,
non-unit spacing, non-zero origin, under (nested) parent transforms; MRML nodes from slicer-core."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import (add_linear_transform, add_volume, load_volume_file, mrml_scene,  # noqa: F401
                             oblique_ijk_to_ras, rigid_matrix, slicer)
from SAM3DPromptLib.geometry import kji_to_ras, ras_to_kji
from SAM3DPromptLib.wire import outside_volume
from SAM3DPromptLib.logic import PromptLogic
from SAM3DPromptLib.mrml_io import GeometryError, ras_to_ijk_matrix, world_to_local_matrix
from SAM3DPromptLib.prompts import Click, click_from_markup

SHAPE = (12, 16, 20)  # k, j, i
TARGET_KJI = (5.0, 7.0, 9.0)


def _world_of_voxel(volume_node, kji) -> np.ndarray:
    """World RAS of a voxel centre computed by VTK / MRML alone (not by the module)."""
    import vtk
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    local = ijk_to_ras.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])[:3]
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return np.array(local)
    to_world = vtk.vtkGeneralTransform()
    parent.GetTransformToWorld(to_world)
    return np.array(to_world.TransformPoint(local))


def test_numpy_round_trip_oblique_flipped_with_parent():
    ijk_to_ras = oblique_ijk_to_ras()
    assert np.linalg.det(ijk_to_ras[:3, :3]) < 0  # the grid really is flipped
    local_to_world = rigid_matrix(33.0, (0.2, 1.0, 0.4), (10.0, -4.0, 7.5))
    points = np.array([[0, 0, 0], [5, 7, 9], [11.4, 0.2, 19.5]], dtype=float)
    world = kji_to_ras(points, ijk_to_ras, local_to_world)
    back = ras_to_kji(world, np.linalg.inv(ijk_to_ras), np.linalg.inv(local_to_world))
    np.testing.assert_allclose(back, points, atol=1e-9)
    # Axis order on the wire is k, j, i: the origin voxel's neighbour along i moves the last axis.
    step_i = ras_to_kji(kji_to_ras([[0, 0, 1]], ijk_to_ras), np.linalg.inv(ijk_to_ras))
    np.testing.assert_allclose(step_i, [[0, 0, 1]], atol=1e-9)


def test_outside_volume_allows_half_a_voxel():
    flags = outside_volume(np.array([[-0.4, 0, 0], [-0.6, 0, 0], [11.49, 15, 19], [0, 15.6, 0]]), SHAPE)
    assert flags.tolist() == [False, True, False, True]


def test_markup_under_nested_transforms_lands_on_intended_voxel(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros(SHAPE, np.int16), oblique_ijk_to_ras())
    outer = add_linear_transform(mrml_scene, rigid_matrix(-20.0, (1, 0, 0), (0, 15, -3)), "outer")
    inner = add_linear_transform(mrml_scene, rigid_matrix(40.0, (0.1, 0.3, 1.0), (7, -2, 11)), "inner")
    inner.SetAndObserveTransformNodeID(outer.GetID())
    volume.SetAndObserveTransformNodeID(inner.GetID())
    world = _world_of_voxel(volume, TARGET_KJI)

    # The point list has a transform of its own: its world position is what counts.
    markups = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "SAM3D positive")
    markups.SetAndObserveTransformNodeID(
        add_linear_transform(mrml_scene, rigid_matrix(90.0, (0, 0, 1), (1, 2, 3)), "points").GetID())
    markups.AddControlPointWorld(*world)
    click = click_from_markup(markups, 0)
    np.testing.assert_allclose(click.ras, world, atol=1e-6)

    logic = PromptLogic(scene=mrml_scene)
    logic.volume_node = volume
    np.testing.assert_allclose(logic.points_kji([click])[0], TARGET_KJI, atol=1e-6)
    # Forgetting the parent transform lands far away: the check above can fail.
    naive = ras_to_kji([world], ras_to_ijk_matrix(volume))[0]
    assert np.abs(naive - TARGET_KJI).max() > 2.0


def test_world_to_local_of_untransformed_node_is_identity(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros(SHAPE, np.int16), oblique_ijk_to_ras())
    np.testing.assert_array_equal(world_to_local_matrix(volume), np.eye(4))


def test_nonlinear_parent_transform_is_refused_with_advice(mrml_scene):
    import vtk
    volume = add_volume(mrml_scene, np.zeros(SHAPE, np.int16), oblique_ijk_to_ras())
    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for p, q in (((0, 0, 0), (1, 0, 0)), ((50, 0, 0), (50, 2, 0)), ((0, 50, 0), (0, 50, 3)),
                 ((0, 0, 50), (2, 1, 50))):
        source.InsertNextPoint(p)
        target.InsertNextPoint(q)
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    node = mrml_scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    node.SetAndObserveTransformToParent(warp)
    volume.SetAndObserveTransformNodeID(node.GetID())
    logic = PromptLogic(scene=mrml_scene)
    logic.volume_node = volume
    with pytest.raises(GeometryError, match="non-linear transform 'warp'.*Harden"):
        logic.points_kji([Click(ras=(0.0, 0.0, 0.0), label=1)])


def test_file_written_by_sam3d_io_and_read_by_slicer_agrees_on_voxels(mrml_scene, tmp_path):
    """sam3d's IO (LPS, ITK) and Slicer's reader (RAS) put a voxel at the same world point."""
    io = pytest.importorskip("sam3d.data.io")
    ijk_to_ras = oblique_ijk_to_ras()
    # ITK direction (LPS) of the same grid: negate the first two rows of the RAS directions.
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing_ijk = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    direction = lps @ ijk_to_ras[:3, :3] / spacing_ijk
    array = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    volume = io.Volume(array, spacing=tuple(spacing_ijk[::-1]), origin=tuple(lps @ ijk_to_ras[:3, 3]),
                       direction=direction)
    path = io.write_image(volume, tmp_path / "oblique.nrrd")
    node = load_volume_file(mrml_scene, path)
    loaded = slicer.util.arrayFromVolume(node)
    assert sorted(loaded.ravel().tolist()) == sorted(array.ravel().tolist())
    logic = PromptLogic(scene=mrml_scene)
    logic.volume_node = node
    for target in (TARGET_KJI, (0.0, 0.0, 0.0), (11.0, 15.0, 19.0), (3.0, 12.0, 1.0)):
        world = volume.kji_to_ras(np.array([target]))[0]
        kji = logic.points_kji([Click(ras=tuple(world), label=1)])[0]
        # Slicer may store the slices in another order (it keeps grids right-handed), so the
        # index can differ; the voxel it lands on must hold the intended voxel's value.
        rounded = np.round(kji).astype(int)
        np.testing.assert_allclose(kji, rounded, atol=1e-4)
        assert loaded[tuple(rounded)] == array[tuple(int(v) for v in target)]
