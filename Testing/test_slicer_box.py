"""Box prompts from a Markups ROI: the Logic against real MRML nodes (slicer-core) and a real
`sam3d serve` (uvicorn on 127.0.0.1) with a random tiny model that takes boxes."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import vtk

from slicer_fixtures import (clicks_sent, add_linear_transform, add_volume, mrml_scene, oblique_ijk_to_ras,  # noqa: F401
                             place_click, rigid_matrix, slicer)
from SAM3DPromptLib.client import InvalidBox, SAM3DClient, SessionExpired, SessionLimitReached, TLSError
from SAM3DPromptLib.logic import PromptLogic, describe_server, user_message
from SAM3DPromptLib.mrml_io import numpy_to_matrix, read_segment_mask, volume_spacing_kji
from SAM3DPromptLib.prompts import PromptError

SHAPE = (14, 18, 22)  # k, j, i


@pytest.fixture(scope="module")
def box_url(start_server, tiny_box_model):
    with start_server("--model", str(tiny_box_model)) as url:
        yield url


def lesion_volume(scene, ijk_to_ras: np.ndarray, transform: np.ndarray = None):
    """A noisy SHAPE volume with a bright block lesion, optionally under a parent transform."""
    array = np.random.default_rng(0).normal(0, 20, SHAPE)
    array[4:10, 5:13, 6:16] += 90
    volume = add_volume(scene, array.astype(np.int16), ijk_to_ras)
    if transform is not None:
        volume.SetAndObserveTransformNodeID(add_linear_transform(scene, transform).GetID())
    return volume


def target_logic(scene, url: str, volume) -> PromptLogic:
    """A Logic on ``url`` targeting a new lesion segment of a new segmentation of ``volume``."""
    logic = PromptLogic(SAM3DClient(url, timeout=60), scene=scene)
    segmentation = logic.create_segmentation(volume)
    logic.set_target(volume, segmentation, logic.add_lesion_segment(segmentation))
    return logic


def _local_to_world(volume) -> np.ndarray:
    """The volume's parent transform as a matrix, read through MRML (identity without one)."""
    matrix = vtk.vtkMatrix4x4()
    parent = volume.GetParentTransformNode()
    if parent is not None:
        parent.GetMatrixTransformToWorld(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def shape_roi(roi, volume, lo_kji, hi_kji):
    """Make ``roi`` (no parent transform) the box aligned with the volume's voxel axes whose corners
    are the kji corners ``lo_kji`` / ``hi_kji``, built with the volume's own IJKToRAS matrix and
    parent transform; returns it."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    ijk_to_world = _local_to_world(volume) @ np.array(
        [[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    lo_ijk, hi_ijk = np.asarray(lo_kji, float)[::-1], np.asarray(hi_kji, float)[::-1]
    columns = ijk_to_world[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    x, y = columns[:, 0] / spacing[0], columns[:, 1] / spacing[1]
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = np.column_stack([x, y, np.cross(x, y)])
    object_to_world[:3, 3] = (ijk_to_world @ np.append((lo_ijk + hi_ijk) / 2, 1.0))[:3]
    roi.SetSize(*((hi_ijk - lo_ijk) * spacing))
    roi.GetObjectToNodeMatrix().DeepCopy(numpy_to_matrix(object_to_world))
    return roi


def _segment(logic) -> np.ndarray:
    return read_segment_mask(logic.segmentation_node, logic.segment_id, logic.volume_node)


def test_roi_on_an_oblique_transformed_volume_reaches_the_server_as_its_kji_corners(mrml_scene, box_url):
    volume = lesion_volume(mrml_scene, oblique_ijk_to_ras(), rigid_matrix(30.0, (0.3, 1, 0.2), (4, -9, 12)))
    logic = target_logic(mrml_scene, box_url, volume)
    lo, hi = [3.25, 4.5, 5.0], [9.75, 12.0, 15.5]
    roi = shape_roi(mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode"), volume, lo, hi)
    np.testing.assert_allclose(logic.box_kji(roi), [lo, hi], atol=1e-6)
    result = logic.prepare_box(roi)
    result.run()
    result = result.finish()
    info = logic.client.session_info(logic.session_id)
    np.testing.assert_allclose(info["box"], [lo, hi], atol=1e-6)
    assert info["points"] == [] and result.clicks == 0
    assert int(_segment(logic).sum()) == result.voxels
    # The same box again is no new request; a box beyond the volume is cut to it.
    assert logic.prepare_box(roi) is None
    wide = shape_roi(mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode"), volume,
                      [-3.0, 4.5, 5.0], [9.75, 30.0, 15.5])
    np.testing.assert_allclose(logic.box_kji(wide), [[-0.5, 4.5, 5.0], [9.75, 17.5, 15.5]], atol=1e-6)
    logic.close()


def test_a_box_drawn_in_a_slice_view_is_a_2d_box_on_that_slice(mrml_scene):
    """Slicer pads a box placed with two points in a slice view to a cube-like depth;
    make_box_2d thins it along the slice normal and it goes out as a box on that one slice."""
    ijk_to_ras = np.diag([-0.8, -0.9, 2.5, 1.0])  # LPS-like flipped axes, thick slices
    ijk_to_ras[:3, 3] = (40.0, 30.0, -70.0)
    volume = lesion_volume(mrml_scene, ijk_to_ras)
    logic = PromptLogic(None, scene=mrml_scene)
    logic.set_target(volume, None, None)
    roi = logic.new_box_roi()
    assert logic.box_kji(roi) is None  # not placed yet
    slice_s = -70.0 + 2.5 * 7  # the axial slice k = 7
    roi.AddControlPointWorld(40.0 - 0.8 * 5, 30.0 - 0.9 * 4, slice_s)
    roi.AddControlPointWorld(40.0 - 0.8 * 15, 30.0 - 0.9 * 12, slice_s)
    padded = logic.box_kji(roi)
    assert padded[1][0] - padded[0][0] > 1.0  # Slicer's padding: a 3D box
    logic.make_box_2d(roi, (0.0, 0.0, 1.0))
    np.testing.assert_allclose(logic.box_kji(roi), [[7.0, 4.0, 5.0], [7.0, 12.0, 15.0]], atol=1e-6)


def _ras_aligned_roi(scene, centre, size):
    """An ROI aligned with world RAS (as a slice view of the default layout draws it)."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    matrix = np.eye(4)
    matrix[:3, 3] = centre
    roi.GetObjectToNodeMatrix().DeepCopy(numpy_to_matrix(matrix))
    roi.SetSize(*size)
    return roi


def test_on_an_oblique_volume_a_ras_box_keeps_the_size_drawn_and_an_axial_one_stays_2d(mrml_scene):
    """Slice views stay aligned with RAS: on an oblique volume a box drawn there goes out with the
    size drawn along the volume's nearest axes (the kji box around its corners takes in far more
    tissue), and a box drawn in the axial view stays a 2D box on one slice."""
    volume = lesion_volume(mrml_scene, oblique_ijk_to_ras())
    logic = PromptLogic(None, scene=mrml_scene)
    logic.set_target(volume, None, None)
    centre_kji = np.array([7.0, 9.0, 11.0])
    centre = logic_world(volume, tuple(centre_kji))
    size = np.array([9.0, 10.0, 11.0])  # mm along R, A, S
    box = logic.box_kji(_ras_aligned_roi(mrml_scene, centre, size))
    np.testing.assert_allclose((box[0] + box[1]) / 2, centre_kji, atol=1e-6)
    extent = box[1] - box[0]
    spacing_kji = np.array([2.1, 1.3, 0.8])
    assert sorted(np.round(extent * spacing_kji, 6)) == sorted(size)  # the edges drawn, paired off
    roi = _ras_aligned_roi(mrml_scene, centre, size)
    logic.make_box_2d(roi, (0.0, 0.0, 1.0))
    flat = logic.box_kji(roi)
    assert flat[0][0] == flat[1][0] == 7.0  # one slice: a 2D box
    assert np.all(flat[1][1:] - flat[0][1:] > 5.0)


def test_a_box_drawn_across_the_slices_becomes_a_3d_box_as_deep_as_it_is_wide(mrml_scene):
    """The server's 2D boxes lie on k slices: a box drawn in a coronal view of an axial scan gets
    a depth (A) equal to its width (R), with a note; a hand-made ROI thinner than a voxel across
    the slices is refused with a message, and so is one that barely touches the volume."""
    ijk_to_ras = np.diag([-0.8, -0.9, 2.5, 1.0])
    ijk_to_ras[:3, 3] = (40.0, 30.0, -70.0)
    volume = lesion_volume(mrml_scene, ijk_to_ras)
    logic = PromptLogic(None, scene=mrml_scene)
    logic.set_target(volume, None, None)
    centre = (40.0 - 0.8 * 11, 30.0 - 0.9 * 9, -70.0 + 2.5 * 7)
    roi = _ras_aligned_roi(mrml_scene, centre, (8.0, 20.0, 10.0))  # Slicer's padded depth along A
    note = logic.make_box_2d(roi, (0.0, 1.0, 0.0))  # the coronal view's normal
    assert "3D box" in note
    box = logic.box_kji(roi)
    np.testing.assert_allclose(box[1] - box[0], [10.0 / 2.5, 8.0 / 0.9, 8.0 / 0.8], atol=1e-6)
    thin = _ras_aligned_roi(mrml_scene, centre, (8.0, 0.3, 10.0))
    with pytest.raises(PromptError, match="thinner than one voxel"):
        logic.box_kji(thin)
    edge = _ras_aligned_roi(mrml_scene, (40.0 + 0.8 * 0.4, 30.0 - 0.9 * 9, -70.0 + 2.5 * 7), (1.0, 8.0, 10.0))
    with pytest.raises(PromptError, match="barely touches"):
        logic.box_kji(edge)


def _lesion_with_a_box(scene, url: str):
    """A Logic on an oblique volume whose lesion holds a box sent to the server; (logic, its ROI)."""
    volume = lesion_volume(scene, oblique_ijk_to_ras())
    logic = target_logic(scene, url, volume)
    roi = shape_roi(logic.new_box_roi(), volume, [4.0, 5.0, 6.0], [9.0, 12.0, 15.0])
    request = logic.prepare_box()
    request.run()
    request.finish()
    return logic, roi


def test_a_box_dragged_off_the_volume_goes_back_to_the_lesions_box(mrml_scene, box_url):
    logic, roi = _lesion_with_a_box(mrml_scene, box_url)
    placed = logic.box_kji()
    centre = [0.0, 0.0, 0.0]
    roi.GetCenter(centre)
    roi.SetCenter(centre[0] + 500.0, centre[1], centre[2])
    with pytest.raises(PromptError, match="outside the input volume"):
        logic.prepare_box()
    np.testing.assert_allclose(logic.box_kji(), placed, atol=1e-6)  # shown where the server has it
    logic.close()


def test_a_deleted_box_roi_is_shown_again_while_the_lesion_holds_the_box(mrml_scene, box_url):
    """The box bounds the lesion's corrections on the server until Undo or Reset: a user who
    deletes its ROI gets it shown again, with a note; the Logic's own removals (a new Box) are
    not taken for the user's."""
    logic, roi = _lesion_with_a_box(mrml_scene, box_url)
    seen = []
    observer = mrml_scene.AddObserver(mrml_scene.NodeRemovedEvent, lambda *_: seen.append(logic.user_removed_box()))
    mrml_scene.RemoveNode(roi)  # the user deletes it
    assert seen == [True] and logic.box_roi() is None
    assert "keeps its box" in logic.show_lesion_box()
    np.testing.assert_allclose(logic.box_kji(), [[4.0, 5.0, 6.0], [9.0, 12.0, 15.0]], atol=1e-6)
    logic.new_box_roi()  # the Box button replaces the shown ROI: the Logic's own removal
    assert seen == [True, False]
    mrml_scene.RemoveObserver(observer)
    logic.close()


def test_box_and_clicks_combine_and_undo_restores_segment_and_box(mrml_scene, box_url):
    volume = lesion_volume(mrml_scene, oblique_ijk_to_ras(), rigid_matrix(-20.0, (1, 0.2, 0.5), (7, 3, -11)))
    logic = target_logic(mrml_scene, box_url, volume)
    shape_roi(logic.new_box_roi(), volume, [4.0, 5.0, 6.0], [9.0, 12.0, 15.0])
    empty = _segment(logic)
    request = logic.prepare_box()
    request.run()
    request.finish()
    after_box = _segment(logic)
    assert after_box.any() and not empty.any()
    # A click combines with the box: the server holds both.
    logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
    after_click = _segment(logic)
    assert not np.array_equal(after_click, after_box)
    info = logic.client.session_info(logic.session_id)
    np.testing.assert_allclose(info["box"], [[4.0, 5.0, 6.0], [9.0, 12.0, 15.0]], atol=1e-6)
    assert info["labels"] == [1]
    # A new box replaces the old one (the Box button makes a new ROI).
    shape_roi(logic.new_box_roi(), volume, [5.0, 6.0, 7.0], [8.0, 11.0, 14.0])
    request = logic.prepare_box()
    request.run()
    request.finish()
    np.testing.assert_allclose(logic.client.session_info(logic.session_id)["box"],
                               [[5.0, 6.0, 7.0], [8.0, 11.0, 14.0]], atol=1e-6)
    assert not np.array_equal(_segment(logic), after_click)

    logic.undo()  # the second box: segment, server box and ROI come back
    np.testing.assert_array_equal(_segment(logic), after_click)
    np.testing.assert_allclose(logic.client.session_info(logic.session_id)["box"],
                               [[4.0, 5.0, 6.0], [9.0, 12.0, 15.0]], atol=1e-6)
    np.testing.assert_allclose(logic.box_kji(), [[4.0, 5.0, 6.0], [9.0, 12.0, 15.0]], atol=1e-6)
    assert logic.prepare_box() is None  # the restored ROI is the object's box: nothing to send
    logic.undo()  # the click
    np.testing.assert_array_equal(_segment(logic), after_box)
    logic.undo()  # the first box: the object has no box and no ROI any more
    np.testing.assert_array_equal(_segment(logic), empty)
    assert logic.box_roi() is None
    assert logic.client.session_info(logic.session_id)["box"] is None

    # Reset takes the box away with the clicks; undo brings both back.
    box = [[5.0, 6.0, 7.0], [8.0, 11.0, 14.0]]
    shape_roi(logic.new_box_roi(), volume, *box)
    request = logic.prepare_box()
    request.run()
    request.finish()
    drawn = _segment(logic)
    logic.reset()
    assert logic.box_roi() is None and not _segment(logic).any()
    logic.undo()
    np.testing.assert_array_equal(_segment(logic), drawn)
    np.testing.assert_allclose(logic.box_kji(), box, atol=1e-6)
    logic.cancel_box(logic.new_box_roi())  # a Box press given up (Esc): the lesion's box shows again
    np.testing.assert_allclose(logic.box_kji(), box, atol=1e-6)
    # The reset emptied the server's object: the next click sends the box again with it. (The
    # undos emptied the point list, so Slicer gives this point the ID of an undone one: still a click.)
    logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
    np.testing.assert_allclose(logic.client.session_info(logic.session_id)["box"], box, atol=1e-6)
    logic.close()


def logic_world(volume, kji) -> tuple:
    """World RAS of a kji index through the volume's IJKToRAS and parent transform."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    local = ijk_to_ras.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])
    return tuple((_local_to_world(volume) @ np.asarray(local))[:3])


@pytest.mark.parametrize("server_url", ["tiny"], indirect=True)
def test_a_server_without_boxes_says_so_and_leaves_segment_and_clicks_alone(mrml_scene, server_url):
    volume = lesion_volume(mrml_scene, oblique_ijk_to_ras())
    logic = target_logic(mrml_scene, server_url, volume)
    status = logic.prepare_server_status()
    status.run()
    line = status.finish()
    weights = logic.capabilities["model"]["sha256"]
    assert len(weights) == 64 and f"model tiny-random (tiny, weights {weights[:8]}) on cpu" in line, line
    older = {**logic.capabilities, "model": {"name": "tiny-random", "variant": "tiny"}}  # a server without sha256
    assert "model tiny-random (tiny) on cpu" in describe_server(older, server_url)
    assert logic.supports_box is False  # the Widget disables the Box button with this reason
    logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
    before = _segment(logic)
    shape_roi(logic.new_box_roi(), volume, [4.0, 5.0, 6.0], [9.0, 12.0, 15.0])
    request = logic.prepare_box()
    request.run()
    with pytest.raises(InvalidBox) as error:
        request.finish()
    message = user_message(error.value)
    assert "no box prompt" in message and "tiny-random" in message
    np.testing.assert_array_equal(_segment(logic), before)
    assert logic.box_roi() is None  # the refused box is taken back, as a refused click's point is
    assert clicks_sent(logic) == 1 and logic.prompt_list().GetNumberOfControlPoints() == 1
    logic.undo()  # the click is still the last step
    assert not _segment(logic).any()
    logic.close()


def test_a_session_closed_to_make_room_is_renewed_with_its_box_and_clicks(mrml_scene, start_server,
                                                                          tiny_box_model):
    """410 (evicted while idle for another user): the next click uploads the volume again,
    replays the object's box and clicks, and lands where it would have without the eviction."""
    with start_server("--model", str(tiny_box_model), "--max-sessions", "1",
                      "--evict-idle-after", "0") as url:
        volume = lesion_volume(mrml_scene, oblique_ijk_to_ras(), rigid_matrix(15.0, (0, 1, 1), (2, 2, 2)))
        logic = target_logic(mrml_scene, url, volume)
        shape_roi(logic.new_box_roi(), volume, [4.0, 5.0, 6.0], [9.0, 12.0, 15.0])
        request = logic.prepare_box()
        request.run()
        request.finish()
        logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
        evicted = logic.session_id
        other = SAM3DClient(url, timeout=60)
        other.create_session(np.zeros((8, 16, 16), np.int16), (1.0, 1.0, 1.0))  # takes the only place
        with pytest.raises(SessionExpired, match="make room"):
            other.session_info(evicted)

        result = logic.click_points([place_click(logic, logic_world(volume, (6.0, 8.0, 9.0)), False)])
        assert result.replayed and result.uploaded and logic.session_id != evicted and logic.uploads == 2
        info = logic.client.session_info(logic.session_id)
        np.testing.assert_allclose(info["box"], [[4.0, 5.0, 6.0], [9.0, 12.0, 15.0]], atol=1e-6)
        assert info["labels"] == [1, 0]
        logic.close()

        # The same prompts on a session that was never closed give the same segment.
        reference = target_logic(mrml_scene, url, volume)
        session = reference.client.create_session(slicer.util.arrayFromVolume(volume), volume_spacing_kji(volume))
        expected = np.zeros(SHAPE, bool)
        reference.client.interact(session, [], [], box_kji=[[4.0, 5.0, 6.0], [9.0, 12.0, 15.0]]).apply_to(expected)
        reference.client.interact(session, [[7.0, 9.0, 11.0]], [1]).apply_to(expected)
        reference.client.interact(session, [[6.0, 8.0, 9.0]], [0]).apply_to(expected)
        np.testing.assert_array_equal(_segment(logic), expected)
        reference.client.delete_session(session)


def test_an_https_server_is_trusted_through_the_certificate_setting(mrml_scene, tiny_box_model, tmp_path):
    """Server > Certificate: the Logic's clients (also the ones for other threads) check the
    server's self-signed certificate with the given file; without it, the message says where to
    give it; a file that is not there is named at once."""
    from server_helpers import running_server

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    volume = lesion_volume(mrml_scene, oblique_ijk_to_ras())
    with running_server("--model", str(tiny_box_model), "--ssl-certfile", str(cert),
                        "--ssl-keyfile", str(key), ca_bundle=str(cert)) as url:
        assert url.startswith("https://")
        logic = target_logic(mrml_scene, url, volume)
        with pytest.raises(TLSError) as error:
            logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
        assert "Server > Certificate" in user_message(error.value)
        assert logic.prompt_list().GetNumberOfControlPoints() == 0  # the refused click's point is gone

        logic.connect(url, ca_bundle=str(cert))
        assert logic._own_client().ca_bundle == str(cert)
        result = logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
        assert result.uploaded and int(_segment(logic).sum()) == result.voxels
        logic.close()
    with pytest.raises(TLSError, match="does not exist"):
        logic.connect(url, ca_bundle=str(tmp_path / "missing.pem"))


def test_the_servers_interaction_limit_says_to_go_on_in_the_next_lesion(mrml_scene, start_server, tiny_model):
    with start_server("--model", str(tiny_model), "--max-interactions", "1") as url:
        volume = lesion_volume(mrml_scene, oblique_ijk_to_ras())
        logic = target_logic(mrml_scene, url, volume)
        logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
        before = _segment(logic)
        with pytest.raises(SessionLimitReached) as error:
            logic.click_points([place_click(logic, logic_world(volume, (6.0, 8.0, 9.0)), False)])
        assert "allows 1 per object" in user_message(error.value) and "'Next lesion'" in user_message(error.value)
        np.testing.assert_array_equal(_segment(logic), before)
        assert clicks_sent(logic) == 1 and logic.prompt_list().GetNumberOfControlPoints() == 1
        logic.next_lesion()  # a new object on the same session takes clicks again
        logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
        assert logic.client.session_info(logic.session_id)["interactions"] == 1
        logic.close()
