"""Box prompts through a real `sam3d serve` (uvicorn on 127.0.0.1) and the torch-free client:
capabilities, box-only and box + click interactions, undo / reset of the box, and the 422s."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import requests

from sam3d.cli import main
from sam3d.client import client as client_module
from sam3d.data.io import Volume, write_image
from sam3d.data.segio import read_segmentation
from sam3d.engine.predictor import Predictor
from sam3d.engine.session import Session
from server_helpers import run_sam3d, running_server

SHAPE = (20, 64, 64)
SPACING = (2.5, 0.8, 0.8)
BOX = [[13.0, 44.0, 20.0], [7.0, 20.0, 44.0]]  # opposite corners, not in lo / hi order


@pytest.fixture(scope="module")
def box_url(tiny_box_model) -> str:
    with running_server("--model", str(tiny_box_model)) as base:
        yield base


@pytest.fixture
def client(box_url):
    with client_module.SAM3DClient(box_url, timeout=60) as c:
        yield c


def volume() -> np.ndarray:
    array = np.random.default_rng(0).normal(0, 20, SHAPE)
    array[7:13, 20:44, 20:44] += 80
    return array.astype(np.int16)


def test_capabilities_list_the_box_prompt(client):
    assert client.capabilities()["prompts"] == ["point", "box", "mask"]


def test_a_box_through_the_client_gives_the_engines_mask_and_stays_with_the_object(client, tiny_box_model):
    session = client.create_session(volume(), SPACING)
    full = client.interact(session, [], [], box_kji=BOX).apply_to(np.zeros(SHAPE, bool))
    reference = Session(Predictor.load(tiny_box_model, device="cpu"), volume(), SPACING, cache_size=8)
    reference.interact([], [], box_kji=BOX)
    np.testing.assert_array_equal(full, reference.mask)
    info = client.session_info(session)
    assert info["box"] == [[7.0, 20.0, 20.0], [13.0, 44.0, 44.0]] and info["points"] == []
    client.interact(session, [[10.0, 32.0, 32.0]], [0])  # a later click keeps the box
    reference.interact([[10.0, 32.0, 32.0]], [0])
    assert client.session_info(session)["box"] == info["box"]
    client.interact(session, [], [], box_kji=[[10.0, 25.0, 25.0], [10.0, 40.0, 40.0]])  # 2D box replaces it
    assert client.session_info(session)["box"] == [[10.0, 25.0, 25.0], [10.0, 40.0, 40.0]]
    client.undo(session)
    assert client.session_info(session)["box"] == info["box"]
    client.reset(session)
    assert client.session_info(session)["box"] is None
    client.delete_session(session)


@pytest.mark.parametrize("box, code, fragment", [
    ([[7.0, 20.0, 20.0], [25.0, 44.0, 44.0]], "invalid_box", "outside the volume"),
    ([[7.0, 20.0, 20.0], [7.0, 20.0, 44.0]], "invalid_box", "less than one voxel along two"),
    ([[7.0, 20.0, 20.0], [13.0, 20.0, 44.0]], "invalid_box", "flat along j"),
    ([[7.0, 20.0, 20.0], [13.0, 44.0, 20.4]], "invalid_box", "flat along i"),
    ([[7.0, 20.0, 20.0]], "validation_error", "box"),
    ([[7.0, float("nan"), 20.0], [13.0, 44.0, 44.0]], "validation_error", "finite"),
])
def test_bad_boxes_get_422_and_leave_the_session_usable(box_url, box, code, fragment):
    session = requests.post(f"{box_url}/v1/sessions", params={"shape": "20,64,64", "spacing": "2.5,0.8,0.8",
                                                              "compression": "none"},
                            data=volume().tobytes(), timeout=60).json()["session_id"]
    reply = requests.post(f"{box_url}/v1/sessions/{session}/interactions",  # json.dumps writes NaN
                          data=json.dumps({"points": [], "labels": [], "box": box}),
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == code and fragment in reply.json()["message"]
    reply = requests.post(f"{box_url}/v1/sessions/{session}/interactions",
                          json={"points": [], "labels": []}, timeout=60)
    assert reply.status_code == 422 and "at least one point or a box" in reply.json()["message"]
    ok = requests.post(f"{box_url}/v1/sessions/{session}/interactions",
                       json={"points": [[10.0, 32.0, 32.0]], "labels": [1], "box": BOX}, timeout=60)
    assert ok.status_code == 200 and ok.json()["interaction"] == 1


def test_a_model_without_a_box_prompt_answers_422_naming_it(tiny_model):
    with running_server("--model", str(tiny_model)) as url, \
            client_module.SAM3DClient(url, timeout=60) as plain:
        assert "box" not in plain.capabilities()["prompts"]
        session = plain.create_session(volume(), SPACING)
        with pytest.raises(client_module.InvalidBox) as caught:
            plain.interact(session, [[10.0, 32.0, 32.0]], [1], box_kji=BOX)
        assert caught.value.status == 422 and caught.value.code == "invalid_box"
        assert "'tiny-random' (tiny) has no box prompt" in str(caught.value)
        assert plain.session_info(session)["interactions"] == 0


def test_click_pathway_search_answers_first_clicks_by_the_box_search_in_the_server_segment_and_batch(tmp_path):
    """`sam3d serve --click-pathway search`: a first click comes back as the box search's answer
    (the ball), and a correction on it is answered by the 2D pathway (no 3D crop). `sam3d
    segment` and `sam3d batch` with `--click-pathway search` in process give the server's mask
    (the 3D model answers the same click with another mask: Dice 0.65 against the search's).
    The server and the batch compile their TinyViT (`--compile`; where a C++ compiler is) and
    `segment` does not: the masks are the same all the same. All three run the 2D pathway in
    fp32 (`--slice-precision fp32`): in bf16 this ball's search mask stops one slice past its
    widest slice (Dice 0.50; fp32 0.83), where LiteMedSAM's single mask keeps within the growth
    rule by a few pixels (docs/BENCHMARKS.md, "The 2D pathway in bfloat16")."""
    k, j, i = np.mgrid[:24, :64, :64]
    ball = (k - 12) ** 2 + (j - 32) ** 2 + (i - 30) ** 2 <= 81
    array = (np.where(ball, 200.0, 20.0) + np.random.default_rng(0).normal(0, 5, ball.shape)).astype(np.float32)
    click, spacing = [[12.0, 30.0, 34.0]], (1.0, 1.0, 1.0)
    log = tmp_path / "serve.log"
    search = ("--model", "default", "--device", "cpu", "--click-pathway", "search", "--slice-precision", "fp32")
    with running_server(*search, output=log) as base:
        with client_module.SAM3DClient(base, timeout=300) as c:
            session = c.create_session(array, spacing)
            first = c.interact(session, click, [1])
            served = first.apply_to(np.zeros(ball.shape, bool))
            deadline = time.monotonic() + 120  # in idle time the server embeds the correction's windows
            while c.session_info(session)["slice_windows_ahead"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.session_info(session)["slice_windows_ahead"] >= 1
            # idle time first encoded the rest of the finer crop the small ball's first click
            # encoded in part (engine/partial_crop.py): it is cached beside the model's own crop
            assert c.session_info(session)["cached_crops"] == 2
            correction = c.interact(session, [[12.0, 25.0, 30.0]], [0])
            corrected = correction.apply_to(served.copy())
            # a mask edit, and an undo, start idle work of their own: the user's mask away from
            # the ball (no window embedded there yet), then back to the correction's mask (whose
            # windows the correction's own idle work had no time to embed before the edit)
            edited = np.zeros(ball.shape, bool)
            edited[0:2, 50:60, 50:60] = True
            c.set_mask(session, edited)
            for change in ("edit", "undo"):
                waiting = c.session_info(session)["slice_windows_ahead"]
                deadline = time.monotonic() + 120
                while c.session_info(session)["slice_windows_ahead"] <= waiting and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert c.session_info(session)["slice_windows_ahead"] > waiting, change
                if change == "edit":
                    c.undo(session)
    dice = 2 * (served & ball).sum() / (served.sum() + ball.sum())
    assert served[12, 30, 34] and dice >= 0.7, dice
    # the 3D model ran first; the correction went to the 2D pathway, as only on an object the
    # search made (after a 3D-model click corrections are the 3D model's: at least one crop)
    assert first.crops >= 1 and correction.crops == 0
    # the windows embedded ahead change the correction's time, not its mask: in process, without them
    predictor = Predictor.load("default", device="cpu", slice_precision="fp32")
    reference = Session(predictor, array, spacing, click_pathway="search")
    reference.interact(click, [1])
    reference.interact([[12.0, 25.0, 30.0]], [0])
    np.testing.assert_array_equal(corrected, reference.mask)
    # torch.compile needs a C++ compiler (inductor's default: $CXX, else g++); without one the
    # server says so and serves uncompiled, and the masks must be the same all the same
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    assert f"encoder compiled: {'yes' if compiler else 'no'}" in log.read_text(), log.read_text()
    assert "2D pathway in fp32" in log.read_text(), log.read_text()
    assert f"model {predictor.name} (lite, weights {predictor.loaded.sha256[:8]})" in log.read_text(), log.read_text()

    image = write_image(Volume(array, spacing=spacing), tmp_path / "ball.nii.gz")
    ras = "-34.0,-30.0,12.0"  # identity direction, origin 0: LPS = (i, j, k) mm
    assert main(["segment", str(image), "--point=" + ras, "--out", str(tmp_path / "ball.seg.nrrd"), *search]) == 0
    (tmp_path / "cases.csv").write_text(f'id,image,prompts\nball,{image},"1:{ras}:+"\n')
    # as a user runs it, in its own process: torch's default threads, for which setup.sh built the
    # compile cache (this process runs one thread: a compile for it would start cold, about 60 s)
    batch = run_sam3d("batch", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "batch"), "--quiet", "--compile",
                      *search)
    assert batch.returncode == 0, batch.stdout + batch.stderr
    log = (tmp_path / "batch" / "batch.log").read_text()
    assert f"encoder compiled: {'yes' if compiler else 'no'}" in log and "2D pathway in fp32" in log, log
    for written in (tmp_path / "ball.seg.nrrd", tmp_path / "batch" / "ball.seg.nrrd"):
        [segment], _ = read_segmentation(written)
        np.testing.assert_array_equal(segment.mask, served)


def test_a_sessions_ceiling_holds_its_kept_2d_windows_where_boxes_go_to_the_2d_pathway(tiny_model):
    """The per-session memory ceiling counts the 2D pathway's kept windows at their real size
    (WINDOWS_KEPT embeddings as LiteMedSAM makes them), and nothing where boxes go to the 3D model."""
    from sam3d.engine.slice_pathway import WINDOW_PX, WINDOWS_KEPT, LiteMedSAM2D
    from sam3d.serve.memory import session_ceiling, slice_window_bytes

    two_d = Predictor.load(tiny_model, device="cpu", box_pathway="2d")
    embedding = LiteMedSAM2D().embed(np.zeros((WINDOW_PX, WINDOW_PX), dtype=np.float32))
    assert slice_window_bytes(two_d) == WINDOWS_KEPT * embedding.nbytes
    assert slice_window_bytes(Predictor.load(tiny_model, device="cpu", box_pathway="3d")) == 0
    without = session_ceiling(SHAPE, "int16", 0, 2, 1000)
    assert session_ceiling(SHAPE, "int16", 0, 2, 1000, slice_window_bytes(two_d)) == without + WINDOWS_KEPT * embedding.nbytes
