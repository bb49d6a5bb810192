"""The module's Logic against real MRML nodes (slicer-core) and a real `sam3d serve` on loopback."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import (add_linear_transform, add_volume, clicks_sent, load_phantom, mrml_scene,  # noqa: F401
                             needs_trained_model, oblique_ijk_to_ras, place_click, rigid_matrix,
                             slicer)
from SAM3DPromptLib.client import (InvalidServerURL, NothingToUndo, SAM3DClient, ServerUnreachable,
                                   SessionNotFound)
from SAM3DPromptLib.logic import PromptLogic, user_message
from SAM3DPromptLib.mrml_io import read_segment_mask, segment_fingerprint, write_segment_box



@pytest.fixture
def phantom(mrml_scene, tmp_path):
    return load_phantom(mrml_scene, tmp_path, seed=3)


@pytest.fixture
def logic(mrml_scene, server_url, phantom):
    image_node = phantom[0]
    logic = PromptLogic(SAM3DClient(server_url, timeout=60), scene=mrml_scene)
    segmentation = logic.create_segmentation(image_node)
    logic.set_target(image_node, segmentation, logic.add_lesion_segment(segmentation))
    yield logic
    logic.close()


def _tumor_kji(label_node) -> np.ndarray:
    """The tumor voxel nearest the tumor's centroid (a click surely on the tumor)."""
    tumor = np.argwhere(slicer.util.arrayFromVolume(label_node) == 2)
    return tumor[np.argmin(np.linalg.norm(tumor - tumor.mean(axis=0), axis=1))].astype(float)


def _world(volume_node, kji) -> tuple:
    """World RAS of a kji index (via MRML: IJKToRAS then the parent transform)."""
    import vtk
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    local = matrix.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])[:3]
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return tuple(local)
    to_world = vtk.vtkGeneralTransform()
    parent.GetTransformToWorld(to_world)
    return tuple(to_world.TransformPoint(local))


def _segment(logic) -> np.ndarray:
    return read_segment_mask(logic.segmentation_node, logic.segment_id, logic.volume_node)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_click_reaches_server_on_intended_voxel(mrml_scene, server_url):
    """Oblique, flipped, non-zero-origin volume under a parent transform: the server receives
    exactly the voxel index the markup was placed on."""
    array = np.random.default_rng(0).integers(-100, 100, size=(14, 18, 22)).astype(np.int16)
    volume = add_volume(mrml_scene, array, oblique_ijk_to_ras())
    volume.SetAndObserveTransformNodeID(
        add_linear_transform(mrml_scene, rigid_matrix(30.0, (0.3, 1, 0.2), (4, -9, 12))).GetID())
    logic = PromptLogic(SAM3DClient(server_url), scene=mrml_scene)
    segmentation = logic.create_segmentation(volume)
    logic.set_target(volume, segmentation, logic.add_lesion_segment(segmentation))
    target = (6.0, 11.0, 3.0)
    result = logic.click_points([place_click(logic, _world(volume, target))])
    info = logic.client.session_info(logic.session_id)
    np.testing.assert_allclose(info["points"], [target], atol=1e-6)
    assert info["shape"] == list(array.shape)
    assert np.sum(_segment(logic)) == result.voxels
    logic.close()


def test_volume_uploaded_once_per_node_id_and_mtime(logic, phantom):
    image_node, label_node = phantom[:2]
    point = _world(image_node, _tumor_kji(label_node))
    first = logic.click(point)
    session = logic.session_id
    second = logic.click(point, positive=False)
    assert first.uploaded and not second.uploaded
    assert logic.session_id == session and logic.uploads == 1
    assert logic.client.session_info(session)["interactions"] == 2

    slicer.util.arrayFromVolume(image_node)[0, 0, 0] += 1  # edit the voxels: a new MTime
    slicer.util.arrayFromVolumeModified(image_node)
    third = logic.click(point)
    assert third.uploaded and logic.uploads == 2 and logic.session_id != session
    with pytest.raises(SessionNotFound):  # the stale session was freed
        logic.client.session_info(session)


def test_write_segment_box_touches_only_the_box(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((10, 12, 14), np.int16), oblique_ijk_to_ras())
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "s")
    full = np.random.default_rng(1).random((10, 12, 14)) > 0.5
    write_segment_box(segmentation, segment_id, volume, (0, 0, 0), full)
    np.testing.assert_array_equal(read_segment_mask(segmentation, segment_id, volume), full)
    box = np.zeros((3, 4, 5), bool)
    box[1, 1:3, 2:4] = True
    write_segment_box(segmentation, segment_id, volume, (2, 5, 6), box)
    expected = full.copy()
    expected[2:5, 5:9, 6:11] = box
    np.testing.assert_array_equal(read_segment_mask(segmentation, segment_id, volume), expected)


def test_undo_restores_segment_bit_for_bit(logic, phantom):
    image_node, label_node = phantom[:2]
    # The segment already holds a hand-drawn blob before the first click.
    drawn = np.zeros(slicer.util.arrayFromVolume(image_node).shape, bool)
    drawn[2:6, 3:9, 30:36] = True
    write_segment_box(logic.segmentation_node, logic.segment_id, image_node, (0, 0, 0), drawn)
    prompts = logic.prompt_list()
    tumor = _tumor_kji(label_node)
    first = logic.click_points([place_click(logic, _world(image_node, tumor))])
    assert first.prior_sent  # the drawn blob went to the server as the prior
    after_first = _segment(logic)
    # a negative click on the segment's voxel nearest 6 voxels off the tumour's centre: one outside
    # the segment would remove nothing (engine/click_reach.py)
    segmented = np.argwhere(after_first)
    rim = segmented[np.argmin(np.linalg.norm(segmented - (tumor + np.array([0, 6, 6])), axis=1))]
    second = logic.click_points([place_click(logic, _world(image_node, rim.astype(float)), False)])
    assert not second.prior_sent
    assert not np.array_equal(_segment(logic), after_first)

    logic.undo()
    np.testing.assert_array_equal(_segment(logic), after_first)
    assert prompts.GetNumberOfControlPoints() == 1
    info = logic.client.session_info(logic.session_id)
    assert info["labels"] == [1] and info["interactions"] == 2  # the prior, then the first click
    logic.undo()
    np.testing.assert_array_equal(_segment(logic), drawn)
    assert prompts.GetNumberOfControlPoints() == 0
    with pytest.raises(NothingToUndo):
        logic.undo()
    # In step with the server again: the next click needs no prior.
    assert not logic.click(_world(image_node, tumor)).prior_sent


def test_hand_edited_segment_is_sent_as_prior(logic, phantom):
    image_node, label_node = phantom[:2]
    point = _world(image_node, _tumor_kji(label_node))
    logic.click(point)
    # A Segment Editor style edit: change the segment's internal labelmap in place.
    segment = logic.segmentation_node.GetSegmentation().GetSegment(logic.segment_id)
    internal = slicer.util.arrayFromSegmentInternalBinaryLabelmap(logic.segmentation_node, logic.segment_id)
    internal[internal.shape[0] // 2:] = 0
    logic.segmentation_node.GetBinaryLabelmapInternalRepresentation(logic.segment_id).Modified()
    segment.Modified()
    edited = _segment(logic)
    assert 0 < edited.sum()

    result = logic.click(point)
    assert result.prior_sent
    # The server took the edit as the object's state before this click: undoing the click
    # on the server brings back exactly the edited voxels.
    restored = logic.client.undo(logic.session_id)
    assert restored.voxels == int(edited.sum())


def test_server_down_leaves_segment_untouched(mrml_scene, phantom, start_server):
    image_node, label_node = phantom[:2]
    with start_server() as url:
        logic = PromptLogic(SAM3DClient(url, timeout=10), scene=mrml_scene)
        segmentation = logic.create_segmentation(image_node)
        logic.set_target(image_node, segmentation, logic.add_lesion_segment(segmentation))
        prompts = logic.prompt_list()
        logic.click_points([place_click(logic, _world(image_node, _tumor_kji(label_node)))])
    # The server is gone now.
    before = _segment(logic)
    fingerprint = segment_fingerprint(logic.segmentation_node, logic.segment_id)
    with pytest.raises(ServerUnreachable) as caught:
        logic.click_points([place_click(logic, _world(image_node, _tumor_kji(label_node) + 3))])
    message = user_message(caught.value)
    assert url in message and "sam3d serve" in message
    assert segment_fingerprint(logic.segmentation_node, logic.segment_id) == fingerprint
    np.testing.assert_array_equal(_segment(logic), before)
    assert prompts.GetNumberOfControlPoints() == 1  # the click that was not applied is removed
    assert clicks_sent(logic) == 1 and logic.can_undo


def test_expired_session_is_uploaded_again_and_clicks_replayed(logic, phantom):
    image_node, label_node = phantom[:2]
    tumor = _tumor_kji(label_node)
    logic.click(_world(image_node, tumor))
    logic.click(_world(image_node, tumor + 4), positive=False)
    old = logic.session_id
    logic.client.delete_session(old)  # what a server restart or the TTL does
    result = logic.click(_world(image_node, tumor - 2))
    assert result.replayed and logic.session_id != old and logic.uploads == 2
    info = logic.client.session_info(logic.session_id)
    assert len(info["points"]) == 3 and info["labels"] == [1, 0, 1]
    assert np.sum(_segment(logic)) == result.voxels


def test_next_lesion_keeps_previous_segment_and_reset_restores(logic, phantom):
    image_node, label_node = phantom[:2]
    tumor = _tumor_kji(label_node)
    logic.click_points([place_click(logic, _world(image_node, tumor))])
    first_id = logic.segment_id
    first = _segment(logic)

    second_id = logic.next_lesion()
    prompts = logic.prompt_list()
    # The first lesion's point stays in the volume's prompt list, tagged with its lesion.
    assert second_id != first_id and prompts.GetNumberOfControlPoints() == 1
    assert prompts.GetNthControlPointDescription(0) == "lesion 1"
    assert logic.segmentation_node.GetSegmentation().GetSegment(second_id).GetName() == "Lesion 2"
    logic.click_points([place_click(logic, _world(image_node, tumor + np.array([0, 8, -8])))])
    info = logic.client.session_info(logic.session_id)
    assert info["interactions"] == 1 and len(info["points"]) == 1  # the server object was reset
    np.testing.assert_array_equal(
        read_segment_mask(logic.segmentation_node, first_id, image_node), first)

    logic.click_points([place_click(logic, _world(image_node, tumor), positive=False)])
    before_reset = _segment(logic)
    assert before_reset.any()
    assert [prompts.GetNthControlPointDescription(i) for i in range(3)] == [
        "lesion 1", "lesion 2", "lesion 2 negative"]
    logic.reset()
    assert not _segment(logic).any() and prompts.GetNumberOfControlPoints() == 1
    np.testing.assert_array_equal(
        read_segment_mask(logic.segmentation_node, first_id, image_node), first)

    # Item 1 of issue 17: a reset can be undone - the lesion, its points and its undo steps.
    assert logic.can_undo
    logic.undo()
    np.testing.assert_array_equal(_segment(logic), before_reset)
    assert [prompts.GetNthControlPointDescription(i) for i in range(3)] == [
        "lesion 1", "lesion 2", "lesion 2 negative"]
    assert [prompts.GetNthControlPointSelected(i) for i in range(3)] == [True, True, False]
    assert clicks_sent(logic) == 2
    logic.undo()  # the negative click, then the positive one, as before the reset
    assert prompts.GetNumberOfControlPoints() == 2
    logic.undo()
    assert not _segment(logic).any() and prompts.GetNumberOfControlPoints() == 1
    # The server object is rebuilt from the segment with the next click.
    result = logic.click(_world(image_node, tumor))
    assert result.prior_sent is False and result.voxels == int(_segment(logic).sum()) > 0


def test_url_without_scheme_is_refused_with_advice(mrml_scene):
    with pytest.raises(InvalidServerURL, match="http://"):
        PromptLogic(scene=mrml_scene).connect("127.0.0.1:8000")


# Phantoms at the size the default model was trained on (the generator's drawn size).
QUALITY_SEEDS = (101, 102, 103, 104)


@needs_trained_model
def test_segment_appears_around_phantom_tumor_and_negative_click_shrinks(mrml_scene, server_url, tmp_path,
                                                                         record_property):
    from scipy import ndimage
    logic = PromptLogic(SAM3DClient(server_url, timeout=120), scene=mrml_scene)
    dices, cases = [], []
    for seed in QUALITY_SEEDS:
        image_node, label_node, _, _ = load_phantom(mrml_scene, tmp_path, seed=seed, shape=None, name=f"case{seed}")
        segmentation = logic.create_segmentation(image_node)
        logic.set_target(image_node, segmentation, logic.add_lesion_segment(segmentation))
        truth = slicer.util.arrayFromVolume(label_node) == 2
        logic.click(_world(image_node, _tumor_kji(label_node)))
        segment = _segment(logic)
        dices.append(_dice(segment, truth))
        cases.append((image_node, segmentation, logic.segment_id, truth, segment))
    print("Dice after one click:", ", ".join(f"{d:.3f}" for d in dices), f"(mean {np.mean(dices):.3f})")
    record_property("dice_one_click", [round(float(d), 3) for d in dices])
    assert np.mean(dices) > 0.5

    # A negative click in the middle of the largest leak (segment outside the tumor) shrinks it.
    image_node, segmentation, segment_id, truth, segment = max(cases, key=lambda c: (c[4] & ~c[3]).sum())
    leaks, count = ndimage.label(segment & ~truth)
    assert count > 0, "no leak to correct"
    largest = np.argwhere(leaks == np.argmax(np.bincount(leaks.ravel())[1:]) + 1)
    target = largest[np.argmin(np.linalg.norm(largest - largest.mean(axis=0), axis=1))]
    logic.set_target(image_node, segmentation, segment_id)
    logic.click(_world(image_node, target), positive=False)
    shrunk = read_segment_mask(segmentation, segment_id, image_node)
    print(f"Negative click: {segment.sum()} -> {shrunk.sum()} voxels, leak {(segment & ~truth).sum()} -> "
          f"{(shrunk & ~truth).sum()}, Dice {_dice(segment, truth):.3f} -> {_dice(shrunk, truth):.3f}, "
          f"clicked voxel {'removed' if not shrunk[tuple(target)] else 'kept'}")
    assert shrunk.sum() < segment.sum() and (shrunk & ~truth).sum() < (segment & ~truth).sum()
    logic.close()

def test_write_segment_box_keeps_other_segments_of_a_shared_layer(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((10, 12, 14), np.int16), oblique_ijk_to_ras())
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    first = segmentation.GetSegmentation().AddEmptySegment("", "first")
    second = segmentation.GetSegmentation().AddEmptySegment("", "second")
    rng = np.random.default_rng(2)
    a = rng.random((10, 12, 14)) > 0.6
    b = (rng.random((10, 12, 14)) > 0.6) & ~a
    write_segment_box(segmentation, first, volume, (0, 0, 0), a)
    write_segment_box(segmentation, second, volume, (0, 0, 0), b)
    box = rng.random((4, 5, 6)) > 0.5
    write_segment_box(segmentation, first, volume, (3, 4, 5), box)
    expected = a.copy()
    expected[3:7, 4:9, 5:11] = box
    np.testing.assert_array_equal(read_segment_mask(segmentation, first, volume), expected)
    np.testing.assert_array_equal(read_segment_mask(segmentation, second, volume), b)


def test_wrong_key_and_too_large_volume_leave_the_segment_untouched(mrml_scene, phantom, start_server):
    from SAM3DPromptLib.client import AuthenticationError, PayloadTooLarge
    image_node, label_node = phantom[:2]
    point = _world(image_node, _tumor_kji(label_node))
    with start_server("--api-key", "right-key", "--max-voxels", "20000") as url:
        for key, error, words in (("wrong-key", AuthenticationError, "API key"),
                                  ("right-key", PayloadTooLarge, "Crop the volume")):
            logic = PromptLogic(scene=mrml_scene)
            logic.connect(url, api_key=key)
            segmentation = logic.create_segmentation(image_node)
            logic.set_target(image_node, segmentation, logic.add_lesion_segment(segmentation))
            with pytest.raises(error) as caught:
                logic.click(point)
            assert words in user_message(caught.value)
            assert not _segment(logic).any() and logic.session_id is None and not logic.can_undo


def test_server_that_does_not_answer_times_out_with_a_message(mrml_scene, phantom):
    import socket
    from SAM3DPromptLib.client import RequestTimedOut
    image_node, label_node = phantom[:2]
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        logic = PromptLogic(scene=mrml_scene)
        logic.connect(url, timeout=0.5)
        segmentation = logic.create_segmentation(image_node)
        logic.set_target(image_node, segmentation, logic.add_lesion_segment(segmentation))
        with pytest.raises(RequestTimedOut) as caught:
            logic.click(_world(image_node, _tumor_kji(label_node)))
    assert "did not answer within 0.5 s" in user_message(caught.value)
    assert not _segment(logic).any()


def test_segment_made_from_a_surface_is_written_as_voxels(mrml_scene):
    volume = add_volume(mrml_scene, np.zeros((16, 18, 20), np.int16), oblique_ijk_to_ras())
    logic = PromptLogic(scene=mrml_scene)
    segmentation = logic.create_segmentation(volume)
    segment_id = logic.add_lesion_segment(segmentation)
    blob = np.zeros((16, 18, 20), bool)
    blob[4:12, 5:13, 6:14] = True
    write_segment_box(segmentation, segment_id, volume, (0, 0, 0), blob)
    segmentation.CreateClosedSurfaceRepresentation()
    segmentation.SetSourceRepresentationToClosedSurface()  # as after importing a model
    logic.set_target(volume, segmentation, segment_id)
    assert segmentation.GetSegmentation().GetSourceRepresentationName() == "Binary labelmap"
    restored = read_segment_mask(segmentation, segment_id, volume)
    assert abs(int(restored.sum()) - int(blob.sum())) < 0.25 * blob.sum()  # surface -> voxels again
    write_segment_box(segmentation, segment_id, volume, (0, 0, 0), np.zeros((2, 2, 2), bool))
    assert read_segment_mask(segmentation, segment_id, volume).sum() == restored.sum()


def test_switching_server_keeps_the_lesion_and_its_undo(logic, phantom, server_url):
    image_node, label_node = phantom[:2]
    tumor = _tumor_kji(label_node)
    logic.click(_world(image_node, tumor))
    after_first = _segment(logic)
    # The same server under another address counts as another server.
    logic.connect(server_url.replace("127.0.0.1", "localhost"), timeout=60)
    assert logic.session_id is None and logic.can_undo
    second = logic.click(_world(image_node, tumor + np.array([0, 5, 5])), positive=False)
    assert second.uploaded and second.prior_sent and logic.uploads == 2
    logic.undo()
    np.testing.assert_array_equal(_segment(logic), after_first)
    logic.undo()
    assert not _segment(logic).any()
