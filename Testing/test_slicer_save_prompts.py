"""Prompts drawn in the module, saved for a batch and read back: the Logic's ``save_prompts`` (one
file with the point list and every box ROI), the module's batch loader in a fresh scene and
`sam3d batch`'s reader on the same file, and the box files Slicer's own Save dialog writes beside
the point list. Real MRML nodes (slicer-core) and a real `sam3d serve` with a tiny model that
takes boxes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import vtk

from slicer_fixtures import mrml_scene, oblique_ijk_to_ras, place_click, slicer  # noqa: F401
from test_slicer_batch import run_saved_prompts
from test_slicer_box import SHAPE, box_url, lesion_volume, logic_world, shape_roi, target_logic  # noqa: F401
from SAM3DPromptLib.batch import load_cases
from SAM3DPromptLib.client import SAM3DClient
from SAM3DPromptLib.logic import PromptLogic
from SAM3DPromptLib.mrml_io import read_segment_mask, volume_spacing_kji
from SAM3DPromptLib.prompts import PromptError, saved_lesions

# Four lesions drawn in the module, in kji of the volume: (clicks [(kji, positive)], box or None).
LESIONS = [
    ([((7.0, 9.0, 11.0), True), ((5.0, 6.0, 8.0), False)], [[4.0, 5.0, 6.0], [9.0, 12.0, 15.0]]),
    ([((8.0, 10.0, 12.0), True)], [[5.0, 6.0, 7.0], [10.0, 13.0, 16.0]]),
    ([((6.0, 11.0, 14.0), True)], None),
    ([], [[2.0, 3.0, 4.0], [6.0, 8.0, 9.0]]),
]


def _send(job) -> None:
    job.run()
    job.finish()


def _draw_lesions(scene, url: str):
    """The LESIONS drawn through the Logic as the Widget does (box, then clicks; *Next lesion*
    between lesions): the earlier lesions' boxes are released. Returns the Logic."""
    volume = lesion_volume(scene, oblique_ijk_to_ras())
    logic = target_logic(scene, url, volume)
    for number, (clicks, box) in enumerate(LESIONS):
        if number:
            logic.next_lesion()
        if box is not None:
            shape_roi(logic.new_box_roi(), volume, *box)
            _send(logic.prepare_box())
        if clicks:
            logic.click_points([place_click(logic, logic_world(volume, kji), positive) for kji, positive in clicks])
    return logic


def _copy_volume(volume, scene):
    """``volume`` (its voxels and grid) as a node of another scene."""
    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", volume.GetName())
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    copy.SetIJKToRASMatrix(matrix)
    image = vtk.vtkImageData()
    image.DeepCopy(volume.GetImageData())
    copy.SetAndObserveImageData(image)
    return copy


def _fresh_scene():
    scene = slicer.vtkMRMLScene()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    return scene, segmentations


def _kji(logic, lesion):
    """A saved lesion's clicks (kji, label) and box (kji, or None) on the logic's volume."""
    clicks = [(tuple(np.round(kji, 6)), click.label)
              for kji, click in zip(logic.points_kji(lesion.clicks), lesion.clicks)]
    return clicks, None if lesion.roi is None else logic.box_kji(lesion.roi)


def _assert_lesions_as_drawn(logic, lesions):
    assert len(lesions) == len(LESIONS)
    for lesion, (clicks, box) in zip(lesions, LESIONS):
        got_clicks, got_box = _kji(logic, lesion)
        assert got_clicks == [(tuple(map(float, kji)), int(positive)) for kji, positive in clicks]
        if box is None:
            assert got_box is None
        else:
            np.testing.assert_allclose(got_box, box, atol=1e-6)


def test_saved_prompts_give_every_lesion_its_clicks_and_box_in_a_later_batch(mrml_scene, box_url, tmp_path):
    """Four lesions (box and clicks, a box then a click, clicks only, a box only) saved as one
    file: the module's batch, in a fresh scene, reads each lesion with its own clicks, signs and
    box and segments it as a fresh session does; `sam3d batch` reads the same lesions."""
    from sam3d.batch.prompts import lesions_from_markups
    from sam3d.data.markups import read_markups_file

    logic = _draw_lesions(mrml_scene, box_url)
    volume = logic.volume_node
    assert [roi.GetName() for roi in (mrml_scene.GetNthNodeByClass(n, "vtkMRMLMarkupsROINode")
                                      for n in range(mrml_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")))] \
        == ["volume lesion 1 box", "volume lesion 2 box", "volume lesion 4 box"]
    folder = tmp_path / "prompts"
    folder.mkdir()
    path = logic.save_prompts(str(folder))
    assert path == str(folder / "volume.mrk.json") and os.listdir(folder) == ["volume.mrk.json"]
    logic.close()

    scene, segmentations = _fresh_scene()
    try:
        copy = _copy_volume(volume, scene)
        [case] = load_cases(scene, [copy], str(folder))
        assert case.problem is None
        reader = PromptLogic(SAM3DClient(box_url, timeout=60), scene=scene)
        reader.set_target(copy, None, None)
        lesions = saved_lesions(case.markups_nodes)
        _assert_lesions_as_drawn(reader, lesions)

        # The batch segments each boxed lesion from its own box and clicks, as a fresh session
        # does. (A lesion of clicks alone is left out: the server's answer to a first click
        # without a box depends on more than the click.)
        [result] = run_saved_prompts(reader.client, [case], scene=scene)
        assert result.error is None and len(result.segment_ids) == 4 and result.clicks == 4
        for segment_id, lesion in zip(result.segment_ids, lesions):
            if lesion.roi is None:
                continue
            clicks, box = _kji(reader, lesion)
            session = reader.client.create_session(slicer.util.arrayFromVolume(copy), volume_spacing_kji(copy))
            expected = np.zeros(SHAPE, bool)
            reader.client.interact(session, [kji for kji, _ in clicks], [label for _, label in clicks],
                                   box_kji=box).apply_to(expected)
            reader.client.delete_session(session)
            np.testing.assert_array_equal(read_segment_mask(result.segmentation_node, segment_id, copy), expected)

        # `sam3d batch` reads the same file alike: same lesions, clicks, signs and boxes.
        point_lists, boxes = read_markups_file(path)
        assert [p.name for p in point_lists] == [f"volume lesion {n}" for n in (1, 2, 3)]
        assert [b.name for b in boxes] == ["volume lesion 1 box", "volume lesion 2 box", "volume lesion 4 box"]
        expected_cli = lesions_from_markups(path)
        assert [lesion.number for lesion in expected_cli] == [1, 2, 3, 4]
        for lesion, reference in zip(lesions, expected_cli):
            np.testing.assert_allclose(np.reshape([c.ras for c in lesion.clicks], (-1, 3)), reference.points_ras, atol=1e-6)
            assert [c.label for c in lesion.clicks] == reference.labels.tolist()
            if lesion.roi is None:
                assert reference.box_ras is None
            else:
                bounds = [0.0] * 6
                lesion.roi.GetRASBounds(bounds)
                np.testing.assert_allclose([bounds[0::2], bounds[1::2]], reference.box_ras, atol=1e-6)
    finally:
        segmentations.SetMRMLScene(None)
        scene.Clear(True)


def test_a_lesions_newest_box_is_saved_and_a_volume_without_prompts_says_so(mrml_scene, box_url, tmp_path):
    """A lesion taken up again gets a new box: the file holds its newest box only (one box per
    lesion, as both batches require), and saving is refused with a message while nothing is drawn."""
    volume = lesion_volume(mrml_scene, oblique_ijk_to_ras())
    logic = target_logic(mrml_scene, box_url, volume)
    with pytest.raises(PromptError, match="no click and no box"):
        logic.save_prompts(str(tmp_path))
    first_segment = logic.segment_id
    shape_roi(logic.new_box_roi(), volume, [4.0, 5.0, 6.0], [9.0, 12.0, 15.0])
    _send(logic.prepare_box())
    logic.click_points([place_click(logic, logic_world(volume, (7.0, 9.0, 11.0)))])
    logic.next_lesion()
    logic.click_points([place_click(logic, logic_world(volume, (8.0, 10.0, 12.0)))])
    logic.set_target(volume, logic.segmentation_node, first_segment)  # back to lesion 1: a new box
    shape_roi(logic.new_box_roi(), volume, [5.0, 6.0, 7.0], [10.0, 13.0, 16.0])
    _send(logic.prepare_box())
    logic.close()
    path = logic.save_prompts(str(tmp_path))
    document = json.loads(open(path, encoding="utf-8").read())
    assert [m["name"] for m in document["markups"]] == ["volume", "volume lesion 1 box"]
    lesions = saved_lesions(load_cases(mrml_scene, [volume], str(tmp_path))[0].markups_nodes)
    assert [len(lesion.clicks) for lesion in lesions] == [1, 1] and lesions[1].roi is None
    np.testing.assert_allclose(logic.box_kji(lesions[0].roi), [[5.0, 6.0, 7.0], [10.0, 13.0, 16.0]], atol=1e-6)


def _save_as_slicers_dialog_does(scene, node, folder) -> None:
    """One markups file per node, named after it, by Slicer's own writer (no name inside)."""
    writer = (slicer.vtkMRMLMarkupsROIJsonStorageNode() if node.IsA("vtkMRMLMarkupsROINode")
              else slicer.vtkMRMLMarkupsJsonStorageNode())
    scene.AddNode(writer)
    writer.SetFileName(str(folder / f"{node.GetName()}.mrk.json"))
    assert writer.WriteData(node)
    scene.RemoveNode(writer)


def test_box_files_saved_by_slicers_dialog_are_read_with_the_point_list(mrml_scene, box_url, tmp_path):
    """Slicer's Save dialog writes the point list and each box ROI to files of their own:
    the batch reads "<volume> lesion N box.mrk.json" (and the older "<volume> box.mrk.json")
    beside "<volume>.mrk.json"; a box the list's file already holds is not read twice."""
    logic = _draw_lesions(mrml_scene, box_url)
    logic.close()
    volume = logic.volume_node
    folder = tmp_path / "dialog"
    folder.mkdir()
    for node in [logic.prompt_list()] + [mrml_scene.GetNthNodeByClass(n, "vtkMRMLMarkupsROINode")
                                         for n in range(mrml_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"))]:
        _save_as_slicers_dialog_does(mrml_scene, node, folder)
    assert sorted(os.listdir(folder)) == ["volume lesion 1 box.mrk.json", "volume lesion 2 box.mrk.json",
                                          "volume lesion 4 box.mrk.json", "volume.mrk.json"]
    scene, segmentations = _fresh_scene()
    try:
        copy = _copy_volume(volume, scene)
        reader = PromptLogic(None, scene=scene)
        reader.set_target(copy, None, None)
        [case] = load_cases(scene, [copy], str(folder))
        _assert_lesions_as_drawn(reader, saved_lesions(case.markups_nodes))
        # Saved both ways: the boxes in the one file are not read again from the box files.
        logic.save_prompts(str(folder))
        [case] = load_cases(scene, [copy], str(folder))
        _assert_lesions_as_drawn(reader, saved_lesions(case.markups_nodes))
        assert len(case.markups_nodes) == 4

        # The older name: one lesion with clicks and one "<volume> box" ROI.
        single = tmp_path / "single"
        single.mkdir()
        roi = shape_roi(mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "volume box"), volume,
                         [4.0, 5.0, 6.0], [9.0, 12.0, 15.0])
        points = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "volume")
        points.AddControlPointWorld(*logic_world(volume, (7.0, 9.0, 11.0)))
        for node in (points, roi):
            _save_as_slicers_dialog_does(mrml_scene, node, single)
        [case] = load_cases(scene, [copy], str(single))
        [lesion] = saved_lesions(case.markups_nodes)
        assert len(lesion.clicks) == 1
        np.testing.assert_allclose(reader.box_kji(lesion.roi), [[4.0, 5.0, 6.0], [9.0, 12.0, 15.0]], atol=1e-6)
    finally:
        segmentations.SetMRMLScene(None)
        scene.Clear(True)
