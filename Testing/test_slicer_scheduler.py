"""The Widget's request queue without Qt: clicks placed during a prediction are queued, merged
into the next request and never lost; operations keep their order; errors are reported."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import clicks_sent, load_phantom, mrml_scene, place_click, slicer  # noqa: F401
from SAM3DPromptLib.client import SAM3DClient, ServerUnreachable
from SAM3DPromptLib.logic import PromptLogic
from SAM3DPromptLib.prompts import PromptError
from SAM3DPromptLib.scheduler import InteractionQueue
from test_slicer_logic import _segment, _world



@pytest.fixture
def setup(mrml_scene, server_url, tmp_path):
    image_node, label_node, _, _ = load_phantom(mrml_scene, tmp_path, seed=5)
    logic = PromptLogic(SAM3DClient(server_url, timeout=60), scene=mrml_scene)
    segmentation = logic.create_segmentation(image_node)
    logic.set_target(image_node, segmentation, logic.add_lesion_segment(segmentation))
    done = []
    queue = InteractionQueue(logic, lambda name, result, error: done.append((name, result, error)))
    tumor = np.argwhere(slicer.util.arrayFromVolume(label_node) == 2).mean(axis=0)
    yield logic, queue, done, image_node, tumor
    logic.close()


def _place(logic, world, positive=True):
    return place_click(logic, world, positive)


def test_clicks_placed_during_a_prediction_are_merged_not_lost(setup):
    logic, queue, done, image_node, tumor = setup
    prompts = logic.prompt_list()
    queue.add_click(_place(logic, _world(image_node, tumor)))
    queue.pump()
    assert queue.busy and queue.busy_seconds >= 0.0
    # Placed while the first prediction runs:
    queue.add_click(_place(logic, _world(image_node, tumor + np.array([0, 7, 7])), False))
    queue.add_click(_place(logic, _world(image_node, tumor + np.array([1, -3, 2]))))
    assert queue.queued_clicks == 2
    queue.wait_until_idle()

    assert [(name, error) for name, _, error in done] == [("clicks", None), ("clicks", None)]
    assert [result.clicks for _, result, _ in done] == [1, 2]
    info = logic.client.session_info(logic.session_id)
    assert info["labels"] == [1, 0, 1] and len(info["points"]) == 3
    assert clicks_sent(logic) == 3
    assert np.sum(_segment(logic)) == done[-1][1].voxels


def test_operations_keep_their_order_behind_clicks(setup):
    logic, queue, done, image_node, tumor = setup
    prompts = logic.prompt_list()
    queue.add_click(_place(logic, _world(image_node, tumor)))
    queue.pump()
    queue.add_click(_place(logic, _world(image_node, tumor + np.array([0, 6, -6])), False))
    queue.add("undo", logic.prepare_undo)  # undoes the negative click, not the first one
    queue.wait_until_idle()
    assert [name for name, _, _ in done] == ["clicks", "clicks", "undo"]
    assert all(error is None for _, _, error in done)
    assert prompts.GetNumberOfControlPoints() == 1
    assert logic.client.session_info(logic.session_id)["labels"] == [1]
    assert np.sum(_segment(logic)) == done[0][1].voxels


def test_refused_click_is_reported_and_the_queue_goes_on(setup):
    logic, queue, done, image_node, tumor = setup
    prompts = logic.prompt_list()
    queue.add_click(_place(logic, _world(image_node, np.array([-40.0, 0.0, 0.0]))))  # outside
    queue.add("next lesion", lambda: logic.next_lesion() and None)
    queue.add_click(_place(logic, _world(image_node, tumor)))
    queue.wait_until_idle()
    assert isinstance(done[0][2], PromptError) and "outside the input volume" in str(done[0][2])
    assert done[1] == ("next lesion", None, None)
    assert done[2][2] is None and done[2][1].clicks == 1
    assert prompts.GetNumberOfControlPoints() == 1  # the refused point was taken away


def test_server_down_is_reported_through_the_queue(mrml_scene, tmp_path):
    from server_helpers import free_port
    image_node = load_phantom(mrml_scene, tmp_path, seed=5)[0]
    logic = PromptLogic(SAM3DClient(f"http://127.0.0.1:{free_port()}", timeout=5), scene=mrml_scene)
    segmentation = logic.create_segmentation(image_node)
    logic.set_target(image_node, segmentation, logic.add_lesion_segment(segmentation))
    done = []
    queue = InteractionQueue(logic, lambda name, result, error: done.append((name, result, error)))
    queue.add_click(_place(logic, _world(image_node, (10.0, 10.0, 10.0))))
    queue.wait_until_idle()
    assert isinstance(done[0][2], ServerUnreachable)
    assert not _segment(logic).any() and logic.session_id is None


def test_discarded_work_never_touches_the_scene(setup):
    logic, queue, done, image_node, tumor = setup
    prompts = logic.prompt_list()
    queue.add_click(_place(logic, _world(image_node, tumor)))
    queue.pump()
    queue.add_click(_place(logic, _world(image_node, tumor + 2)))
    running = queue._thread
    queue.discard()
    assert queue.idle and not queue.busy
    running.join(timeout=60)
    queue.pump()
    assert done == [] and not _segment(logic).any() and clicks_sent(logic) == 0
