"""A failing prediction (500) or an out-of-memory device (507) leaves the server and the session
usable. The server runs on uvicorn in a thread of this process so that the test can inject the
device failure into the real predictor."""

from __future__ import annotations

import threading
import time
import zlib

import numpy as np
import pytest
import requests
import torch
import uvicorn

from sam3d.engine.predictor import Predictor
from sam3d.serve.app import ServerSettings, create_app
from server_helpers import free_port
from sam3d.serve.wire import decode_mask_bits

SHAPE = (16, 48, 48)


@pytest.fixture(scope="module")
def url(tiny_model):
    predictor = Predictor.load(tiny_model, device="cpu")
    predictor.warm_up()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, ServerSettings()), host="127.0.0.1",
                                           port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def new_session(url: str) -> str:
    array = np.random.default_rng(0).normal(0, 30, SHAPE).astype(np.int16)
    reply = requests.post(f"{url}/v1/sessions", data=zlib.compress(array.tobytes()),
                          params={"shape": "16,48,48", "dtype": "int16", "spacing": "2.5,0.8,0.8"})
    assert reply.status_code == 201
    return reply.json()["session_id"]


def full_mask(update: dict) -> np.ndarray:
    full = np.zeros(SHAPE, bool)
    lo, hi = update["bbox"]
    shape = tuple(h - l for l, h in zip(lo, hi))
    if min(shape) > 0:
        full[tuple(slice(l, h) for l, h in zip(lo, hi))] = decode_mask_bits(update["mask"], shape)
    return full


@pytest.mark.parametrize("failure, status, code", [
    (RuntimeError("simulated kernel failure"), 500, "internal_error"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"), 507, "out_of_memory"),
])
def test_a_failed_prediction_leaves_server_and_session_usable(url, monkeypatch, failure, status, code):
    session = new_session(url)
    first = requests.post(f"{url}/v1/sessions/{session}/interactions",
                          json={"points": [[8, 24, 24]], "labels": [1]}).json()
    errors_before = requests.get(f"{url}/v1/metrics").json()["errors"]

    def failing_predict(self, *args, **kwargs):  # fault injection into the real predictor
        raise failure

    monkeypatch.setattr(Predictor, "predict", failing_predict)
    reply = requests.post(f"{url}/v1/sessions/{session}/interactions",
                          json={"points": [[8, 20, 20]], "labels": [0]})
    assert reply.status_code == status
    assert reply.json()["error"] == code and "session is unchanged" in reply.json()["hint"]
    monkeypatch.undo()

    info = requests.get(f"{url}/v1/sessions/{session}").json()
    assert info["interactions"] == 1 and info["points"] == [[8.0, 24.0, 24.0]]
    assert info["voxels"] == first["voxels"]
    assert requests.get(f"{url}/v1/metrics").json()["errors"] == errors_before + 1
    # undo still goes back to the state before the first click: the failure left no trace
    undo = requests.post(f"{url}/v1/sessions/{session}/undo").json()
    assert undo["voxels"] == 0
    np.testing.assert_array_equal(full_mask(undo)[tuple(slice(l, h) for l, h in zip(*undo["bbox"]))], False)
    again = requests.post(f"{url}/v1/sessions/{session}/interactions",
                          json={"points": [[8, 24, 24]], "labels": [1]})
    assert again.status_code == 200 and again.json()["voxels"] == first["voxels"]
