"""The module as a Slicer user meets it (issue 17), at the Logic level: real MRML nodes from
slicer-core, Slicer's own JSON storage node, a real `sam3d serve` on loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from slicer_fixtures import MODULE_DIR, load_phantom, mrml_scene, place_click, server_sessions, slicer  # noqa: F401
from SAM3DPromptLib.batch import CANCELLED, BatchRun, load_cases
from SAM3DPromptLib.client import SAM3DClient
from SAM3DPromptLib.logic import PromptLogic
from SAM3DPromptLib.mrml_io import read_segment_mask
from SAM3DPromptLib.prompts import PlaceMode, VOLUME_REFERENCE_ROLE, find_prompt_list
from SAM3DPromptLib.scheduler import InteractionQueue
from test_slicer_logic import _segment, _tumor_kji, _world


@pytest.fixture
def phantom(mrml_scene, tmp_path):
    return load_phantom(mrml_scene, tmp_path, seed=3)



def _save_as_slicer_does(scene, node, path) -> None:
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(node)


def test_saved_prompt_list_keeps_every_lesion_and_sign_for_sam3d_batch(mrml_scene, server_url, phantom, tmp_path):
    """Two lesions, positive and negative clicks, placed through the Logic; Slicer's JSON writer
    saves the list (without its name); `sam3d batch` reads it back intact; a fresh scene that
    loads the file sends nothing to the server."""
    from sam3d.batch.prompts import lesions_from_markups
    image_node, label_node = phantom[:2]
    tumor = _tumor_kji(label_node)
    logic = PromptLogic(SAM3DClient(server_url, timeout=60), scene=mrml_scene)
    segmentation, segment_id = logic.ensure_target(image_node, None, None)
    logic.set_target(image_node, segmentation, segment_id)
    placed = [(tumor, True), (tumor + np.array([0, 7, 7]), False)]
    for kji, positive in placed:
        logic.click_points([place_click(logic, _world(image_node, kji), positive)])
    logic.next_lesion()
    placed2 = [(tumor + np.array([1, -2, 1]), True), (tumor + np.array([0, -7, -7]), False),
               (tumor + np.array([-1, 1, 0]), True)]
    for kji, positive in placed2:
        logic.click_points([place_click(logic, _world(image_node, kji), positive)])
    logic.close()
    prompts = logic.prompt_list()
    assert prompts.GetName() == image_node.GetName()
    path = tmp_path / "saved" / f"{image_node.GetName()}.mrk.json"
    path.parent.mkdir()
    _save_as_slicer_does(mrml_scene, prompts, path)
    assert "name" not in json.loads(path.read_text())["markups"][0]  # Slicer does not store it

    lesions = lesions_from_markups(path)
    assert [lesion.labels.tolist() for lesion in lesions] == [[1, 0], [1, 0, 1]]
    for lesion, clicks in zip(lesions, (placed, placed2)):
        expected = np.array([_world(image_node, kji) for kji, _ in clicks])
        np.testing.assert_allclose(lesion.points_ras, expected, atol=1e-3)

    # The same file in a fresh scene, with the same volume: nothing is sent.
    from slicer_fixtures import load_volume_file
    scene = slicer.vtkMRMLScene()
    previous, slicer.mrmlScene = slicer.mrmlScene, scene
    try:
        logic_b = slicer.vtkSlicerSegmentationsModuleLogic()
        logic_b.SetMRMLScene(scene)
        volume = load_volume_file(scene, tmp_path / "phantom.nrrd", image_node.GetName())
        from SAM3DPromptLib.prompts import load_prompt_file
        [loaded] = load_prompt_file(scene, str(path))
        fresh = PromptLogic(SAM3DClient(server_url), scene=scene)
        fresh.set_target(volume, *fresh.ensure_target(volume, None, None))
        sessions = server_sessions(server_url)
        own = fresh.prompt_list()
        assert own is not loaded  # a loaded file is never adopted as the volume's list
        assert fresh.new_clicks(loaded, True) == [] and fresh.new_clicks(own, True) == []
        assert server_sessions(server_url) == sessions and fresh.session_id is None
        # The Slicer-side batch reads it alike (two lesions, signs intact).
        [case] = load_cases(scene, [volume], str(path.parent))
        from SAM3DPromptLib.prompts import saved_lesions
        assert [[c.label for c in lesion.clicks] for lesion in saved_lesions(case.markups_nodes)] == [[1, 0], [1, 0, 1]]
        logic_b.SetMRMLScene(None)
    finally:
        scene.Clear(True)
        slicer.mrmlScene = previous


def test_a_scene_list_of_the_volume_is_adopted_without_replaying_its_points(mrml_scene, server_url, phantom,
                                                                           tmp_path):
    """Item 4: lists named like the module's (written by sam3d) never take over; a list tied to
    the volume (a reloaded scene) is adopted and its points are not sent again."""
    image_node, label_node = phantom[:2]
    other = load_phantom(mrml_scene, tmp_path, seed=4, name="other")[0]
    imposter = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", image_node.GetName())
    imposter.AddControlPointWorld(*_world(image_node, _tumor_kji(label_node)))
    for name in ("SAM3D positive", "SAM3D negative"):
        mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name).AddControlPointWorld(1, 2, 3)
    logic = PromptLogic(SAM3DClient(server_url), scene=mrml_scene)
    logic.set_target(image_node, *logic.ensure_target(image_node, None, None))
    own = logic.prompt_list()
    assert own is not imposter and own.GetNodeReferenceID(VOLUME_REFERENCE_ROLE) == image_node.GetID()
    assert logic.new_clicks(imposter, True) == []
    # A point placed in another volume's list is no click on this volume.
    other_list = logic.prompt_list(other)
    other_list.AddControlPointWorld(0, 0, 0)
    assert logic.new_clicks(other_list, True) == [] and other_list.GetNumberOfControlPoints() == 1

    # A list tied to the volume that already holds points (as a loaded scene restores it).
    scene_list = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "from scene")
    scene_list.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, other.GetID())
    mrml_scene.RemoveNode(other_list)
    scene_list.AddControlPointWorld(*_world(other, (5.0, 5.0, 5.0)))
    fresh = PromptLogic(SAM3DClient(server_url), scene=mrml_scene)
    fresh.set_target(other, *fresh.ensure_target(other, None, None))
    assert fresh.prompt_list() is scene_list
    assert fresh.new_clicks(scene_list, True) == [] and fresh.session_id is None
    scene_list.AddControlPointWorld(*_world(other, (6.0, 6.0, 6.0)))
    [click] = fresh.new_clicks(scene_list, False)
    assert click.label == 0 and scene_list.GetNthControlPointDescription(1) == "negative"
    assert find_prompt_list(mrml_scene, other) is scene_list


def test_leftover_segment_id_gets_lesion_1_and_the_click_works(mrml_scene, server_url, phantom):
    """Item 2: a segment ID that is not (any more) in the segmentation makes a "Lesion 1"."""
    image_node, label_node = phantom[:2]
    logic = PromptLogic(SAM3DClient(server_url, timeout=60), scene=mrml_scene)
    segmentation = logic.create_segmentation(image_node)
    stale = logic.add_lesion_segment(segmentation)
    segmentation.GetSegmentation().RemoveSegment(stale)
    for chosen_segmentation in (segmentation, None):
        target = logic.ensure_target(image_node, chosen_segmentation, stale)
        assert target[1] != stale
        assert target[0].GetSegmentation().GetSegment(target[1]).GetName() == "Lesion 1"
    logic.set_target(image_node, *target)
    result = logic.click_points([place_click(logic, _world(image_node, _tumor_kji(label_node)))])
    assert result.voxels == int(_segment(logic).sum()) > 0
    logic.close()


def test_next_lesion_without_segmentation_leaves_no_empty_segment(mrml_scene, server_url, phantom):
    """Item 6: "Next lesion" with no segmentation makes one segment, not an empty one before it."""
    image_node, label_node = phantom[:2]
    logic = PromptLogic(SAM3DClient(server_url, timeout=60), scene=mrml_scene)
    logic.set_target(image_node, None, None)
    first = logic.next_lesion()
    segments = logic.segmentation_node.GetSegmentation()
    assert segments.GetNumberOfSegments() == 1 and segments.GetSegment(first).GetName() == "Lesion 1"
    assert logic.next_lesion() == first and segments.GetNumberOfSegments() == 1  # still empty
    logic.click(_world(image_node, _tumor_kji(label_node)))
    second = logic.next_lesion()
    assert second != first and segments.GetNumberOfSegments() == 2
    assert segments.GetSegment(second).GetName() == "Lesion 2"
    logic.close()


def test_place_mode_is_given_back(mrml_scene):
    """Item 7: "place multiple points" and the active place list are restored on stop (the
    Widget stops on exit, cleanup, scene close and when both place buttons are off)."""
    interaction = mrml_scene.AddNewNodeByClass("vtkMRMLInteractionNode")
    selection = mrml_scene.AddNewNodeByClass("vtkMRMLSelectionNode")
    users_list = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "user's")
    selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
    selection.SetActivePlaceNodeID(users_list.GetID())
    assert interaction.GetPlaceModePersistence() == 0
    prompts = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "prompts")
    mode = PlaceMode(interaction, selection)
    mode.start(prompts)
    mode.start(prompts)  # positive then negative: still one saved state
    assert interaction.GetPlaceModePersistence() == 1
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert selection.GetActivePlaceNodeID() == prompts.GetID()
    mode.stop()
    assert interaction.GetPlaceModePersistence() == 0
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert selection.GetActivePlaceNodeID() == users_list.GetID()
    mode.stop()  # a second stop (cleanup after exit) changes nothing
    assert interaction.GetPlaceModePersistence() == 0 and not mode.active


def test_batch_runs_beside_clicks_and_can_be_cancelled(mrml_scene, server_url, tmp_path):
    """Item 5: a batch on its own queue; an interactive click finishes while the batch still has
    cases to do; cancel ends every remaining case and leaves no session on the server."""
    from sam3d.data.markups import write_markups
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    volumes = []
    for number in range(4):
        image_node, label_node, image, label = load_phantom(mrml_scene, tmp_path, seed=20 + number,
                                                            name=f"b{number}")
        centre = np.argwhere(label.array == 2).mean(axis=0)
        write_markups(prompts / f"b{number}.mrk.json", image.kji_to_ras(centre[None]), np.array([1]))
        volumes.append(image_node)
    sessions_before = server_sessions(server_url)
    events = []
    batch = BatchRun(SAM3DClient(server_url, timeout=60), load_cases(mrml_scene, volumes[1:], str(prompts)),
                     mrml_scene, on_progress=lambda run: events.append(("batch", len(run.results))))
    logic = PromptLogic(SAM3DClient(server_url, timeout=60), scene=mrml_scene)
    logic.set_target(volumes[0], *logic.ensure_target(volumes[0], None, None))
    queue = InteractionQueue(logic, lambda name, result, error: events.append((name, error)))
    batch.pump()  # the first case is in flight
    queue.add_click(place_click(logic, _world(volumes[0], (20.0, 20.0, 20.0))))
    while not queue.idle:
        queue.pump()
        batch.pump()
    assert ("clicks", None) in events and not batch.finished  # the click did not wait
    batch.cancel()
    batch.wait()
    assert len(batch.results) == 3 and batch.cancelled
    assert any(result.error == CANCELLED for result in batch.results)
    done = [r for r in batch.results if r.error is None]
    for result in done:
        volume = next(v for v in volumes if v.GetName() == result.volume_name)
        assert read_segment_mask(result.segmentation_node, result.segment_ids[0], volume).sum() == result.voxels[0]
    logic.close()
    assert server_sessions(server_url) == sessions_before


def test_reload_forgets_the_library_so_its_files_are_read_again():
    """Item 8: what onReload does to sys.modules makes the next import read SAM3DPromptLib anew."""
    code = f"""
import sys
sys.path.insert(0, {str(MODULE_DIR)!r})
import SAM3DPromptLib.logic as first
LIBRARY = "SAM3DPromptLib"
for name in [name for name in sys.modules if name == LIBRARY or name.startswith(LIBRARY + ".")]:
    del sys.modules[name]
import SAM3DPromptLib.logic as second
assert first is not second and first.PromptLogic is not second.PromptLogic
print("reloaded")
"""
    import ast
    source = (MODULE_DIR / "SAM3DPrompt.py").read_text()
    on_reload = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "onReload")
    body = ast.unparse(on_reload)
    assert "del sys.modules[name]" in body and "LIBRARY + '.'" in body
    assert body.index("del sys.modules") < body.index("ScriptedLoadableModuleWidget.onReload")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "reloaded" in result.stdout, result.stderr
