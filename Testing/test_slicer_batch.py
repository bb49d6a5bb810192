"""Saved prompts over several loaded volumes, from within Slicer's scene (slicer-core + real server)."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import load_phantom, mrml_scene, needs_trained_model, server_sessions, slicer  # noqa: F401
from SAM3DPromptLib.batch import BatchCase, BatchResult, CaseRun, load_cases
from SAM3DPromptLib.client import SAM3DClient
from SAM3DPromptLib.logic import PromptLogic
from SAM3DPromptLib.mrml_io import read_segment_mask, volume_spacing_kji
from SAM3DPromptLib.prompts import Click, PromptError, clicks_from_markups, load_prompt_file, saved_lesions


def run_saved_prompts(client: SAM3DClient, cases: list[BatchCase], scene=None) -> list[BatchResult]:
    """Segment every case from its saved clicks, one after the other on this thread; one result
    per case (BatchRun's cases, without its queue)."""
    results: list[BatchResult] = []
    for case in cases:
        run = CaseRun(client, case, scene)
        for _ in range(run.steps):
            job = run.prepare_next()
            job.run()
            result = job.finish()
            if result is not None:
                results.append(result)
                break
    return results


@pytest.fixture
def loaded_cases(mrml_scene, tmp_path):
    """Three phantoms loaded in the scene; prompts saved (by sam3d's own writer) for two."""
    from sam3d.data.markups import write_markups
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    volumes, labels = [], []
    for number, seed in enumerate((11, 12, 13)):
        name = f"case{number:03d}"
        image_node, label_node, image, label = load_phantom(mrml_scene, tmp_path, seed=seed, name=name)
        volumes.append(image_node)
        labels.append(label_node)
        if number < 2:
            # A positive click on the tumor voxel nearest its centre (in the generated arrays),
            # a negative one in a corner; written in RAS as Slicer saves markups.
            tumor = np.argwhere(label.array == 2)
            centre = tumor[np.argmin(np.linalg.norm(tumor - tumor.mean(axis=0), axis=1))]
            points = image.kji_to_ras(np.stack([centre, [2.0, 2.0, 2.0]]).astype(float))
            write_markups(prompts / f"{name}.mrk.json", points, np.array([1, 0]))
    return volumes, labels, prompts


def test_saved_prompts_run_over_loaded_volumes_with_progress(mrml_scene, server_url, loaded_cases):
    volumes, labels, prompts = loaded_cases
    cases = load_cases(mrml_scene, volumes, str(prompts))
    assert [len(case.markups_nodes) for case in cases] == [2, 2, 0]
    assert "case002.mrk.json does not exist" in cases[2].problem

    # The saved positive click lands on the tumor of the volume Slicer loaded.
    logic = PromptLogic(scene=mrml_scene)
    logic.volume_node = volumes[0]
    clicks = clicks_from_markups(cases[0].markups_nodes)
    assert [click.label for click in clicks] == [1, 0]
    kji = np.round(logic.points_kji(clicks[:1])[0]).astype(int)
    assert slicer.util.arrayFromVolume(labels[0])[tuple(kji)] == 2

    sessions_before = server_sessions(server_url)
    results = run_saved_prompts(SAM3DClient(server_url, timeout=60), cases, scene=mrml_scene)
    assert [r.error is None for r in results] == [True, True, False]
    assert "does not exist" in results[2].error
    for result, volume in zip(results[:2], volumes):
        assert result.clicks == 2 and len(result.segment_ids) == 1 and result.voxels[0] > 0
        mask = read_segment_mask(result.segmentation_node, result.segment_ids[0], volume)
        assert mask.sum() == result.voxels[0]
        assert result.segmentation_node.GetName() == f"{volume.GetName()} SAM3D"
    # Saved prompts are kept, and no server session is left behind.
    assert sum(len(case.markups_nodes) for case in cases) == 4
    assert server_sessions(server_url) == sessions_before


@needs_trained_model
def test_batch_segments_the_tumors(mrml_scene, server_url, tmp_path):
    """Phantoms at the size the default model was trained on, one saved click each."""
    from sam3d.data.markups import write_markups
    volumes, truths = [], []
    for seed in (101, 103):
        image_node, label_node, image, label = load_phantom(mrml_scene, tmp_path, seed=seed, shape=None,
                                                            name=f"case{seed}")
        tumor = np.argwhere(label.array == 2)
        centre = tumor[np.argmin(np.linalg.norm(tumor - tumor.mean(axis=0), axis=1))].astype(float)
        write_markups(tmp_path / f"case{seed}.mrk.json", image.kji_to_ras(centre[None]), np.array([1]))
        volumes.append(image_node)
        truths.append(slicer.util.arrayFromVolume(label_node) == 2)
    results = run_saved_prompts(SAM3DClient(server_url, timeout=120),
                                load_cases(mrml_scene, volumes, str(tmp_path)), scene=mrml_scene)
    dices = []
    for result, volume, truth in zip(results, volumes, truths):
        mask = read_segment_mask(result.segmentation_node, result.segment_ids[0], volume)
        dices.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    print("batch Dice:", ", ".join(f"{d:.3f}" for d in dices))
    assert np.mean(dices) > 0.5

def _write_lists(path, lists, rois=()):
    """A markups file with the named point lists [(name, [ras, ...], [description, ...])] and
    ROIs [(name, centre ras, size mm)], as Slicer 5 writes them."""
    import json
    markups = [{"type": "Fiducial", "name": name, "coordinateSystem": "RAS",
                "controlPoints": [{"id": str(n + 1), "position": list(map(float, p)), "description": d,
                                   "positionStatus": "defined"} for n, (p, d) in enumerate(zip(points, notes))]}
               for name, points, notes in lists]
    markups += [{"type": "ROI", "name": name, "coordinateSystem": "RAS", "roiType": "Box",
                 "center": list(map(float, centre)), "orientation": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                 "size": list(map(float, size)),
                 "controlPoints": [{"id": "1", "position": list(map(float, centre)), "positionStatus": "defined"}]}
                for name, centre, size in rois]
    path.write_text(json.dumps({"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/"
                                           "Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
                                "markups": markups}))
    return path


def test_lesion_grouping_matches_sam3d_batch(mrml_scene, tmp_path):
    """The Slicer side repeats the grouping rule of `sam3d batch`: both read the same files alike."""
    from sam3d.batch.prompts import lesions_from_markups
    files = {
        "two lesions": [("Lesion 1", [(1, 2, 3), (4, 5, 6)], ["", "negative"]),
                        ("Lesion 2", [(7, 8, 9)], [""]),
                        ("Lesion 2 negative", [(10, 11, 12)], [""])],
        "module lists": [("SAM3D positive", [(1, 1, 1), (2, 2, 2)], ["", ""]),
                         ("SAM3D negative", [(3, 3, 3)], [""])],
        "unmatched negative": [("A", [(1, 1, 1)], [""]), ("B", [(2, 2, 2)], [""]),
                               ("C negative", [(3, 3, 3)], [""])],
        "only negative": [("spots-", [(1, 1, 1)], [""])],
        # The module's list: lesion and sign in each point's description (the list's name is
        # the file stem, as Slicer reads its own files back).
        "tagged": [("case7", [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)],
                    ["lesion 2", "lesion 1", "lesion 2 negative", "Lesion 1 Negative"])],
    }
    outcomes = {}
    for name, lists in files.items():
        path = _write_lists(tmp_path / f"{name}.mrk.json", lists)
        try:
            expected = [(np.round(l.points_ras, 6).tolist(), l.labels.tolist()) for l in lesions_from_markups(path)]
        except ValueError:
            expected = None
        try:
            lesions = saved_lesions(load_prompt_file(mrml_scene, str(path)))
            got = [([list(np.round(c.ras, 6)) for c in lesion.clicks], [c.label for c in lesion.clicks])
                   for lesion in lesions]
        except PromptError:
            got = None
        assert got == expected, name
        outcomes[name] = None if got is None else [labels for _, labels in got]
    assert outcomes == {"two lesions": [[1, 0], [1, 0]], "module lists": [[1, 1, 0]],
                        "unmatched negative": None, "only negative": None, "tagged": [[1, 0], [1, 0]]}


def test_an_roi_in_saved_prompts_is_its_lesions_box_as_in_sam3d_batch(mrml_scene, tmp_path):
    """An ROI named after a lesion's list is that lesion's box, another ROI a box-only lesion;
    neither becomes a click (its control point is its centre), as `sam3d batch` reads the file."""
    from sam3d.batch.prompts import lesions_from_markups
    path = _write_lists(tmp_path / "boxes.mrk.json", [("Lesion 1", [(1, 2, 3)], [""]), ("Lesion 1-", [(2, 2, 3)], [""])],
                        rois=[("Lesion 1 box", (0, 0, 0), (10, 8, 6)), ("other", (20, 20, 20), (4, 4, 4))])
    expected = lesions_from_markups(path)
    lesions = saved_lesions(load_prompt_file(mrml_scene, str(path)))
    assert [[c.label for c in lesion.clicks] for lesion in lesions] == [lesion.labels.tolist() for lesion in expected]
    for lesion, reference in zip(lesions, expected):
        bounds = [0.0] * 6
        lesion.roi.GetRASBounds(bounds)
        np.testing.assert_allclose([bounds[0::2], bounds[1::2]], reference.box_ras, atol=1e-6)
    assert [lesion.roi.GetName() for lesion in lesions] == ["Lesion 1 box", "other"]
    path = _write_lists(tmp_path / "other.mrk.json", [("CT", [(1, 2, 3)], ["lesion 1"])],
                        rois=[("CT lesion 2 box", (0, 0, 0), (10, 8, 6))])
    lesions = saved_lesions(load_prompt_file(mrml_scene, str(path)))  # the one ROI names another lesion
    assert [(len(lesion.clicks), lesion.roi is None) for lesion in lesions] == [(1, True), (0, False)]
    assert [lesion.box_ras is None for lesion in lesions_from_markups(path)] == [True, False]


def test_saved_boxes_are_sent_with_their_lesions(mrml_scene, start_server, tiny_box_model, tmp_path):
    """A saved lesion with a click and its box, and a box-only lesion: each segment is what the
    server answers to that box (and click) in a fresh session."""
    image_node, _, image, label = load_phantom(mrml_scene, tmp_path, seed=3, name="boxed")
    tumor = np.argwhere(label.array == 2)
    lo, hi = image.kji_to_ras(np.stack([tumor.min(axis=0), tumor.max(axis=0)]).astype(float))
    centre, size = (lo + hi) / 2, np.abs(hi - lo)
    click = image.kji_to_ras(tumor[len(tumor) // 2][None].astype(float))[0]
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    _write_lists(prompts / "boxed.mrk.json", [("Lesion 1", [click], [""])],
                 rois=[("Lesion 1 box", centre, size), ("Lesion 2", centre, size)])
    with start_server("--model", str(tiny_box_model)) as url:
        client = SAM3DClient(url, timeout=60)
        [case] = load_cases(mrml_scene, [image_node], str(prompts))
        [result] = run_saved_prompts(client, [case], scene=mrml_scene)
        assert result.error is None and result.clicks == 1 and len(result.segment_ids) == 2
        logic = PromptLogic(client, scene=mrml_scene)
        logic.set_target(image_node, None, None)
        box = logic.box_kji(case.markups_nodes[1])
        kji = logic.points_kji([Click(ras=tuple(click), label=1)])
        for segment_id, points, labels in zip(result.segment_ids, (kji, []), ([1], [])):
            session = client.create_session(slicer.util.arrayFromVolume(image_node), volume_spacing_kji(image_node))
            expected = np.zeros(image.shape, bool)
            client.interact(session, points, labels, box_kji=box).apply_to(expected)
            client.delete_session(session)
            got = read_segment_mask(result.segmentation_node, segment_id, image_node)
            assert expected.any()
            np.testing.assert_array_equal(got, expected)


def test_multi_lesion_file_gives_one_segment_per_lesion(mrml_scene, server_url, tmp_path):
    image_node, label_node, image, label = load_phantom(mrml_scene, tmp_path, seed=14, name="multi")
    tumor = np.argwhere(label.array == 2)
    a, b = tumor[0], tumor[-1]
    ras = image.kji_to_ras(np.stack([a, b, [1.0, 1.0, 1.0]]).astype(float))
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    _write_lists(prompts / "multi.mrk.json", [("Lesion 1", [ras[0]], [""]), ("Lesion 2", [ras[1]], [""]),
                                              ("Lesion 2-", [ras[2]], [""])])
    [case] = load_cases(mrml_scene, [image_node], str(prompts))
    sessions_before = server_sessions(server_url)
    [result] = run_saved_prompts(SAM3DClient(server_url, timeout=60), [case], scene=mrml_scene)
    assert result.error is None and result.clicks == 3 and len(result.segment_ids) == 2
    names = [result.segmentation_node.GetSegmentation().GetSegment(s).GetName() for s in result.segment_ids]
    assert names == ["Lesion 1", "Lesion 2"]
    for segment_id, voxels in zip(result.segment_ids, result.voxels):
        assert read_segment_mask(result.segmentation_node, segment_id, image_node).sum() == voxels
    assert server_sessions(server_url) == sessions_before
