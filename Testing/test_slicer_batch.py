"""Saved prompts over several loaded volumes, from within Slicer's scene (slicer-core + real server)."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import load_phantom, mrml_scene, needs_default_model, sam3d_server, slicer  # noqa: F401
from SAM3DPromptLib.batch import load_cases, run_saved_prompts
from SAM3DPromptLib.client import SAM3DClient
from SAM3DPromptLib.logic import PromptLogic
from SAM3DPromptLib.mrml_io import read_segment_mask
from SAM3DPromptLib.prompts import clicks_from_markups


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    with sam3d_server(tmp_path_factory.mktemp("model")) as url:
        yield url


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

    progress = []
    results = run_saved_prompts(SAM3DClient(server_url, timeout=60), cases, scene=mrml_scene,
                                progress=lambda done, total, text: progress.append((done, total, text)))
    assert [p[:2] for p in progress] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert progress[-1][2] == "Done: 2 of 3 segmented"
    assert [r.error is None for r in results] == [True, True, False]
    assert "does not exist" in results[2].error
    for result, volume in zip(results[:2], volumes):
        assert result.clicks == 2 and result.voxels > 0
        mask = read_segment_mask(result.segmentation_node, result.segment_id, volume)
        assert mask.sum() == result.voxels
        assert result.segmentation_node.GetName() == f"{volume.GetName()} SAM3D"
    # Saved prompts are kept, and no server session is left behind.
    assert sum(len(case.markups_nodes) for case in cases) == 4
    assert SAM3DClient(server_url).metrics()["sessions"] == 0


@needs_default_model
def test_batch_segments_the_tumors(mrml_scene, server_url, loaded_cases):
    volumes, labels, prompts = loaded_cases
    results = run_saved_prompts(SAM3DClient(server_url, timeout=60),
                                load_cases(mrml_scene, volumes[:2], str(prompts)), scene=mrml_scene)
    for result, volume, label in zip(results, volumes, labels):
        mask = read_segment_mask(result.segmentation_node, result.segment_id, volume)
        truth = slicer.util.arrayFromVolume(label) == 2
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        print(f"{result.volume_name}: Dice {dice:.3f}")
        assert dice > 0.5
