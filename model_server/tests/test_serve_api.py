"""API v1 against a real `sam3d serve` (uvicorn on 127.0.0.1, a free port) with a random tiny model:
sessions, clicks, the encoder cache counter, undo, prior masks, errors, auth, limits, parallel clients."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import zlib
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import requests

from sam3d.cli import main
from server_helpers import running_server
from sam3d.client.wire import encode_mask_bits
from sam3d.data.io import file_sha256
from sam3d.engine.slice_pathway import resolve_slice_precision
from sam3d.serve.openapi import openapi_text
from sam3d.serve.schemas import Capabilities, Limits, ModelInfo, SessionCreated, SessionInfo
from wire_helpers import apply_mask_update as apply

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
PROTOCOL_PATH = OPENAPI_PATH.with_name("PROTOCOL.md")

SHAPE = (20, 64, 64)
SPACING = (2.5, 0.8, 0.8)
CENTRE = [10.0, 32.0, 32.0]


@pytest.fixture(scope="module")
def url(tiny_model) -> str:
    with running_server("--model", str(tiny_model), "--max-sessions", "100") as base:
        yield base


def volume(seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 20, shape)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = np.asarray(shape) / 2
    array[((k - centre[0]) * 2.5) ** 2 + ((j - centre[1]) * 0.8) ** 2 + ((i - centre[2]) * 0.8) ** 2 < 100] += 80
    return array.astype(np.int16)


def upload(base: str, array: np.ndarray, spacing=SPACING, headers=None, **params) -> requests.Response:
    query = {"shape": ",".join(map(str, array.shape)), "dtype": array.dtype.name,
             "spacing": ",".join(map(str, spacing)), "compression": "zlib", **params}
    body = zlib.compress(array.tobytes()) if query["compression"] == "zlib" else array.tobytes()
    return requests.post(f"{base}/v1/sessions", params=query, data=body, headers=headers, timeout=60)


def create(base: str, array: np.ndarray | None = None, headers=None) -> str:
    reply = upload(base, volume() if array is None else array, headers=headers)
    assert reply.status_code == 201, reply.text
    return reply.json()["session_id"]


def click(base: str, session: str, points, labels, headers=None) -> requests.Response:
    return requests.post(f"{base}/v1/sessions/{session}/interactions",
                         json={"points": points, "labels": labels}, headers=headers, timeout=60)


def assert_error(reply: requests.Response, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["error"] == code and body["message"] and "hint" in body
    return body


def test_health_and_capabilities(url, tiny_model):
    assert requests.get(f"{url}/v1/health").json() == {"status": "ok", "api_version": "1"}
    caps = requests.get(f"{url}/v1/capabilities").json()
    assert caps["api_version"] == "1" and caps["axis_order"] == "kji"
    assert caps["model"] == {"name": "tiny-random", "variant": "tiny", "crop_size": 32, "crop_spacing_mm": 2.0,
                             "sha256": file_sha256(tiny_model), "slice_precision": resolve_slice_precision("auto"),
                             "click_pathway": "3d"}
    assert caps["device"] == "cpu" and caps["auth_required"] is False
    assert set(caps["limits"]) == {
        "max_upload_bytes", "max_json_bytes", "max_voxels", "max_sessions", "session_ttl_s", "evict_idle_s",
        "max_memory_bytes", "max_session_memory_bytes", "max_undo_bytes", "max_points", "max_interactions",
        "max_points_per_request"}
    assert caps["prompts"] == ["point", "mask"] and "zlib" in caps["compression"]


def test_a_click_replies_with_the_changed_box_and_its_bits(url):
    session = create(url)
    reply = click(url, session, [CENTRE], [1])
    assert reply.status_code == 200, reply.text
    update = reply.json()
    full = apply(np.zeros(SHAPE, bool), update)
    assert update["voxels"] == int(full.sum()) > 0
    assert update["interaction"] == 1 and update["encoder_ran"] is True
    assert set(update["timing_ms"]) == {"encode", "decode", "total"}
    info = requests.get(f"{url}/v1/sessions/{session}").json()
    assert info["shape"] == list(SHAPE) and info["interactions"] == 1 and info["points"] == [CENTRE]
    assert info["voxels"] == update["voxels"] and info["expires_in_s"] > 0


def test_a_second_click_in_the_same_crop_does_not_run_the_encoder(url):
    session = create(url)
    click(url, session, [CENTRE], [1])
    before = requests.get(f"{url}/v1/metrics").json()
    info_before = requests.get(f"{url}/v1/sessions/{session}").json()
    update = click(url, session, [[11.0, 30.0, 35.0]], [1]).json()
    after = requests.get(f"{url}/v1/metrics").json()
    info_after = requests.get(f"{url}/v1/sessions/{session}").json()
    assert update["encoder_ran"] is False and update["timing_ms"]["encode"] == 0.0
    assert after["encoder_runs"] == before["encoder_runs"]
    assert after["decoder_runs"] > before["decoder_runs"]
    assert after["interactions"] == before["interactions"] + 1
    assert info_after["encoder_runs"] == info_before["encoder_runs"]
    assert info_after["decoder_runs"] > info_before["decoder_runs"]


def test_undo_returns_the_previous_mask_bit_exactly(url):
    session = create(url)
    full = apply(np.zeros(SHAPE, bool), click(url, session, [CENTRE], [1]).json())
    first = full.copy()
    apply(full, click(url, session, [[10.0, 36.0, 36.0]], [0]).json())
    undo = requests.post(f"{url}/v1/sessions/{session}/undo")
    assert undo.status_code == 200
    apply(full, undo.json())
    np.testing.assert_array_equal(full, first)
    assert undo.json()["voxels"] == int(first.sum()) and undo.json()["interaction"] == 1
    apply(full, requests.post(f"{url}/v1/sessions/{session}/undo").json())
    assert not full.any()
    assert_error(requests.post(f"{url}/v1/sessions/{session}/undo"), 409, "nothing_to_undo")


def test_a_user_mask_replaces_the_object_and_can_be_undone(url):
    session = create(url)
    full = apply(np.zeros(SHAPE, bool), click(url, session, [CENTRE], [1]).json())
    predicted = full.copy()
    edit = np.zeros((4, 10, 12), bool)
    edit[1:3, 2:8, 3:9] = True
    reply = requests.put(f"{url}/v1/sessions/{session}/mask",
                         json={"bbox": [[8, 28, 26], [12, 38, 38]], "mask": encode_mask_bits(edit)})
    assert reply.status_code == 200, reply.text
    apply(full, reply.json())
    expected = np.zeros(SHAPE, bool)
    expected[8:12, 28:38, 26:38] = edit
    np.testing.assert_array_equal(full, expected)
    assert reply.json()["voxels"] == int(edit.sum())
    apply(full, requests.post(f"{url}/v1/sessions/{session}/undo").json())
    np.testing.assert_array_equal(full, predicted)
    bad = requests.put(f"{url}/v1/sessions/{session}/mask",
                       json={"bbox": [[8, 28, 26], [12, 38, 38]], "mask": encode_mask_bits(edit[:2])})
    assert_error(bad, 400, "bad_request")


def test_reset_starts_a_new_object_and_keeps_the_encoder_cache(url):
    session = create(url)
    click(url, session, [CENTRE], [1])
    runs = requests.get(f"{url}/v1/sessions/{session}").json()["encoder_runs"]
    assert requests.post(f"{url}/v1/sessions/{session}/reset").json() == {"session_id": session, "reset": True}
    info = requests.get(f"{url}/v1/sessions/{session}").json()
    assert info["interactions"] == 0 and info["points"] == [] and info["voxels"] == 0
    assert click(url, session, [CENTRE], [1]).json()["encoder_ran"] is False
    assert requests.get(f"{url}/v1/sessions/{session}").json()["encoder_runs"] == runs


def test_delete_frees_the_session(url):
    session = create(url)
    assert requests.delete(f"{url}/v1/sessions/{session}").status_code == 204
    assert_error(requests.get(f"{url}/v1/sessions/{session}"), 404, "session_not_found")
    assert_error(requests.delete(f"{url}/v1/sessions/{session}"), 404, "session_not_found")


@pytest.mark.parametrize("points, labels, fragment", [
    ([[20.0, 32.0, 32.0]], [1], "outside the volume"),
    ([[10.0, 32.0, -3.0]], [1], "outside the volume"),
    ([[10.0, 32.0, 32.0]], [1, 0], "one label per point"),
])
def test_bad_clicks_get_400_and_leave_the_session_usable(url, points, labels, fragment):
    session = create(url)
    click(url, session, [CENTRE], [1])
    body = assert_error(click(url, session, points, labels), 400, "bad_request")
    assert fragment in body["message"]
    info = requests.get(f"{url}/v1/sessions/{session}").json()
    assert info["interactions"] == 1
    assert click(url, session, [CENTRE], [0]).status_code == 200


@pytest.mark.parametrize("body", [
    {"points": [[1, 2]], "labels": [1]},
    {"points": [[1, 2, 3]], "labels": [5]},
    {"points": [], "labels": []},
    {"labels": [1]},
    "not json at all",
])
def test_malformed_bodies_get_422_json(url, body):
    session = create(url)
    kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, str) else {"json": body}
    reply = requests.post(f"{url}/v1/sessions/{session}/interactions", **kwargs)
    assert_error(reply, 422, "validation_error")


@pytest.mark.parametrize("params, body_fn, fragment", [
    ({"shape": "20,64"}, None, "query.shape"),
    ({"shape": "20,64,x"}, None, "query.shape"),
    ({"shape": "0,64,64"}, None, "shape must be positive"),
    ({"spacing": "0,1,1"}, None, "spacing must be positive"),
    ({"spacing": "nan,1,1"}, None, "query.spacing"),
    ({"spacing": "1e999,1,1"}, None, "spacing must be positive"),
    ({}, lambda a: zlib.compress(a.tobytes()[:-2]), "needs"),
    ({}, lambda a: b"this is not zlib", "not zlib"),
    ({"compression": "none"}, lambda a: a.tobytes() + b"xx", "needs"),
])
def test_malformed_uploads_get_400(url, params, body_fn, fragment):
    array = volume()
    query = {"shape": ",".join(map(str, SHAPE)), "dtype": "int16", "spacing": "2.5,0.8,0.8",
             "compression": "zlib", **params}
    body = body_fn(array) if body_fn else zlib.compress(array.tobytes())
    reply = requests.post(f"{url}/v1/sessions", params=query, data=body)
    assert fragment in assert_error(reply, 400, "bad_request")["message"]


def test_a_zip_bomb_is_refused_without_inflating_it(url):
    bomb = zlib.compress(bytes(50_000_000), 9)  # 50 MB of zeros in about 50 kB
    query = {"shape": ",".join(map(str, SHAPE)), "dtype": "int16", "spacing": "2.5,0.8,0.8"}
    reply = requests.post(f"{url}/v1/sessions", params=query, data=bomb)
    assert "more than" in assert_error(reply, 413, "payload_too_large")["message"]


def test_unknown_sessions_paths_and_methods_get_json_errors(url):
    assert_error(click(url, "no-such-session", [CENTRE], [1]), 404, "session_not_found")
    assert_error(requests.get(f"{url}/v1/nothing-here"), 404, "not_found")
    assert_error(requests.put(f"{url}/v1/health"), 405, "method_not_allowed")


def test_parallel_clients_never_see_each_others_sessions(url):
    shapes = [(20, 64, 64), (24, 60, 56), (16, 48, 64), (20, 56, 48)]
    arrays = [volume(seed, shape) for seed, shape in enumerate(shapes)]
    clicks = [[s / 2 for s in shape] for shape in shapes]
    results: dict[int, tuple] = {}

    def work(n: int) -> None:
        session = create(url, arrays[n])
        masks = [apply(np.zeros(shapes[n], bool), click(url, session, [clicks[n]], [1]).json())]
        info = requests.get(f"{url}/v1/sessions/{session}").json()
        results[n] = (session, masks[0], info)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(shapes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({results[n][0] for n in results}) == len(shapes)
    for n, (session, mask, info) in results.items():
        assert info["shape"] == list(shapes[n]) and info["points"] == [clicks[n]] and info["interactions"] == 1
        alone = create(url, arrays[n])  # the same volume and click, with no one else around
        expected = apply(np.zeros(shapes[n], bool), click(url, alone, [clicks[n]], [1]).json())
        np.testing.assert_array_equal(mask, expected)


def test_the_exported_openapi_schema_is_up_to_date():
    assert OPENAPI_PATH.read_text(encoding="utf-8") == openapi_text(), \
        "docs/openapi.json is stale: run `python -m sam3d.serve.openapi docs/openapi.json`"
    schema = json.loads(openapi_text())
    assert {"/v1/health", "/v1/capabilities", "/v1/sessions", "/v1/sessions/{session_id}/interactions",
            "/v1/sessions/{session_id}/mask", "/v1/sessions/{session_id}/undo",
            "/v1/sessions/{session_id}/reset", "/v1/metrics"} <= set(schema["paths"])


@pytest.mark.parametrize("endpoint, replies", [
    ("`GET /v1/capabilities`", (Capabilities, ModelInfo, Limits)),
    ("`POST /v1/sessions?", (SessionCreated,)),
    ("`GET /v1/sessions/{id}`", (SessionInfo,)),
])
def test_the_protocol_document_names_every_field_of_a_reply(endpoint, replies):
    """docs/PROTOCOL.md's table of endpoints lists the keys of each reply: a field added to the
    server's schema must be written there too."""
    lines = PROTOCOL_PATH.read_text(encoding="utf-8").splitlines()
    [row] = [line for line in lines if line.startswith(f"| {endpoint}")]
    missing = [name for reply in replies for name in reply.model_fields if f'"{name}"' not in row]
    assert not missing, f"docs/PROTOCOL.md, {endpoint}: add {missing}"


# -- auth -------------------------------------------------------------------------------------
def test_auth_on_needs_the_bearer_token(tiny_model):
    with running_server("--model", str(tiny_model), env={"SAM3D_API_KEY": "s3cret-key"}) as base:
        assert requests.get(f"{base}/v1/health").status_code == 200  # health stays open
        assert requests.get(f"{base}/v1/capabilities",
                            headers={"Authorization": "Bearer s3cret-key"}).json()["auth_required"] is True
        missing = requests.get(f"{base}/v1/capabilities")
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert_error(requests.get(f"{base}/v1/metrics", headers={"Authorization": "Bearer wrong"}),
                     401, "unauthorized")
        assert_error(upload(base, volume(), headers={"Authorization": "Basic czNjcmV0LWtleQ=="}),
                     401, "unauthorized")
        good = {"Authorization": "Bearer s3cret-key"}
        session = create(base, headers=good)
        assert click(base, session, [CENTRE], [1], headers=good).status_code == 200
        assert_error(click(base, session, [CENTRE], [1]), 401, "unauthorized")


def test_auth_off_needs_no_token(url):
    assert requests.get(f"{url}/v1/metrics").status_code == 200
    assert requests.get(f"{url}/v1/capabilities", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_binding_beyond_loopback_without_a_key_is_refused(tiny_model, monkeypatch):
    monkeypatch.delenv("SAM3D_API_KEY", raising=False)
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        status = main(["serve", "--host", "0.0.0.0", "--model", str(tiny_model)])
    assert status == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in stderr.getvalue()


# -- limits -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited(tiny_model) -> str:
    with running_server("--model", str(tiny_model), "--max-voxels", "100000", "--max-upload-bytes",
                        "60000", "--max-sessions", "2", "--session-ttl", "2") as base:
        yield base


def test_too_many_voxels_get_413(limited):
    reply = upload(limited, np.zeros((40, 64, 64), np.int16))
    assert "voxels" in assert_error(reply, 413, "payload_too_large")["message"]


def test_too_many_bytes_get_413(limited):
    noise = np.random.default_rng(0).integers(-1000, 1000, (12, 64, 64)).astype(np.int16)  # incompressible
    reply = upload(limited, noise, compression="none")
    assert "bytes" in assert_error(reply, 413, "payload_too_large")["message"]


def test_capacity_gives_503_and_expiry_gives_410(limited):
    small = volume(shape=(8, 32, 32))
    first, second = create(limited, small), create(limited, small)
    assert_error(upload(limited, small), 503, "server_at_capacity")
    assert requests.delete(f"{limited}/v1/sessions/{second}").status_code == 204
    third = create(limited, small)
    time.sleep(2.5)  # both sessions outlive the 2 s TTL
    body = assert_error(requests.get(f"{limited}/v1/sessions/{first}"), 410, "session_expired")
    assert "upload the volume again" in body["hint"]
    assert_error(click(limited, third, [[4.0, 16.0, 16.0]], [1]), 410, "session_expired")
    assert requests.get(f"{limited}/v1/metrics").json()["sessions"] == 0
    create(limited, small)  # capacity is free again
    assert_error(requests.get(f"{limited}/v1/sessions/never-existed"), 404, "session_not_found")


def test_serve_says_a_taken_port_before_it_loads_the_model(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        err = io.StringIO()
        with redirect_stderr(err):  # a missing model: the port is checked first
            status = main(["serve", "--port", str(port), "--model", str(tmp_path / "missing.pt")])
    assert status == 2 and f"port {port} on 127.0.0.1 is in use" in err.getvalue(), err.getvalue()
