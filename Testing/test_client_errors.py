"""Client errors, one typed exception per class, each against the real thing that causes it
(no server, a silent socket, a server with a key, with tight limits, with a failing device);
and the client's promise to run in Slicer's Python (3.9, no torch)."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from SAM3DPromptLib import wire as client_wire
from SAM3DPromptLib.client import (AuthenticationError, InvalidServerURL, PayloadTooLarge, RequestTimedOut,
                                   SAM3DClient, ServerAtCapacity, ServerError, ServerOutOfMemory,
                                   ServerUnreachable, SessionExpired)

SHAPE = (16, 48, 48)
SPACING = (2.5, 0.8, 0.8)
CENTRE = [8.0, 24.0, 24.0]
LIB_DIR = Path(__file__).resolve().parents[1] / "SAM3DPrompt" / "SAM3DPromptLib"


def volume(seed: int = 0, shape=SHAPE, dtype=np.int16) -> np.ndarray:
    array = np.random.default_rng(seed).normal(0, 30, shape)
    array[shape[0] // 4: shape[0] // 2, 10:30, 12:30] += 90
    return array.astype(dtype)


def test_the_servers_mask_decoder_reads_the_clients_codec():
    from sam3d.serve.wire import decode_mask_bits

    rng = np.random.default_rng(0)
    for shape in [(1, 1, 1), (3, 5, 7), (13, 1, 9), (0, 4, 4)]:
        mask = rng.random(shape) > 0.5
        np.testing.assert_array_equal(decode_mask_bits(client_wire.encode_mask_bits(mask), shape), mask)
        np.testing.assert_array_equal(client_wire.decode_mask_bits(client_wire.encode_mask_bits(mask), shape), mask)


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["127.0.0.1:8000", "localhost", "ftp://127.0.0.1:8000", "http://", ""])
def test_a_url_without_http_is_refused_with_an_example(url):
    with pytest.raises(InvalidServerURL, match="http://127.0.0.1:8000"):
        SAM3DClient(url)


def test_a_server_that_is_not_running():
    from server_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable) as error:
        SAM3DClient(url).health()
    assert f"is `sam3d serve` running at {url}?" in str(error.value)


def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(RequestTimedOut, match="did not answer within 0.5 s"):
            SAM3DClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5).health()


def test_authentication(start_server, tiny_model):
    with start_server("--model", str(tiny_model), "--api-key", "right") as url:
        assert SAM3DClient(url).health()["status"] == "ok"
        for key in (None, "wrong"):
            with pytest.raises(AuthenticationError) as error:
                SAM3DClient(url, api_key=key).capabilities()
            assert error.value.status == 401 and "--api-key" in str(error.value)
        good = SAM3DClient(url, api_key="right")
        assert good.capabilities()["auth_required"] is True
        session = good.create_session(volume(), SPACING)
        assert not good.interact(session, [CENTRE], [1]).is_empty


def test_limits_capacity_and_expiry(start_server, tiny_model):
    with start_server("--model", str(tiny_model), "--max-voxels", "40000", "--max-sessions", "1",
                      "--session-ttl", "1.5") as url:
        client = SAM3DClient(url)
        with pytest.raises(PayloadTooLarge, match="voxels") as error:
            client.create_session(np.zeros((20, 48, 48), np.int16), SPACING)
        assert error.value.status == 413 and "--max-voxels" in str(error.value)
        small = volume(shape=(8, 32, 32))
        session = client.create_session(small, SPACING)
        with pytest.raises(ServerAtCapacity) as error:
            client.create_session(small, SPACING)
        assert error.value.status == 503
        time.sleep(2.0)
        with pytest.raises(SessionExpired, match="upload the volume again"):
            client.interact(session, [[4.0, 16.0, 16.0]], [1])
        client.create_session(small, SPACING)  # the expired session freed its place


@pytest.fixture(scope="module")
def faulty_server(tiny_model):
    """A real server on uvicorn in a thread of this process, whose predictor the test can break."""
    import uvicorn

    from sam3d.engine.predictor import Predictor
    from sam3d.serve.app import ServerSettings, create_app
    from server_helpers import free_port

    predictor = Predictor.load(tiny_model, device="cpu")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, ServerSettings()), host="127.0.0.1",
                                           port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("failure, expected", [("RuntimeError", ServerError), ("OutOfMemoryError", ServerOutOfMemory)])
def test_server_failures_are_typed_and_the_session_survives(faulty_server, monkeypatch, failure, expected):
    import torch

    from sam3d.engine.predictor import Predictor

    client = SAM3DClient(faulty_server)
    session = client.create_session(volume(), SPACING)
    error_type = torch.cuda.OutOfMemoryError if failure == "OutOfMemoryError" else RuntimeError

    def broken(self, *args, **kwargs):  # fault injection into the real predictor
        raise error_type("simulated failure")

    monkeypatch.setattr(Predictor, "predict", broken)
    with pytest.raises(expected) as error:
        client.interact(session, [CENTRE], [1])
    assert "session is unchanged" in str(error.value)
    monkeypatch.undo()
    assert not client.interact(session, [CENTRE], [1]).is_empty


# -- runs inside Slicer's Python ----------------------------------------------------------------
def test_the_client_imports_without_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import SAM3DPromptLib.client, SAM3DPromptLib.wire; "
            "bad = [m for m in ('torch', 'sam3d', 'fastapi') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(LIB_DIR.parent)], check=True)


@pytest.mark.parametrize("name", ["client.py", "wire.py", "__init__.py"])
def test_the_client_is_python_3_9_syntax(name):
    source = (LIB_DIR / name).read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    has_annotations = any(isinstance(n, (ast.AnnAssign, ast.arg)) and getattr(n, "annotation", None) is not None
                          for n in ast.walk(tree))
    if has_annotations:  # annotations stay strings, so `X | None` never runs on 3.9
        assert "from __future__ import annotations" in source
