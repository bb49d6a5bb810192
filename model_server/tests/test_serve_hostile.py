"""A server that holds up under hostile input (issue 11), each finding against a real `sam3d serve`
on 127.0.0.1: bodies refused before they are read, memory budget and decompression bombs,
per-object limits, browser safety (Host, Origin, eviction), TLS with the real client, and the
smaller items (trailing zlib bytes, absurd spacings, float64 range, long ids, disconnects,
expiry while in use, 401 rate limit). All traffic stays on loopback and is bounded."""

from __future__ import annotations

import socket
import statistics
import subprocess
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

from sam3d.cli import main
from sam3d.client import client as client_module
from sam3d.engine.predictor import Predictor
from sam3d.engine.session import Session
from sam3d.serve.commands import register, warnings_for
from sam3d.serve.errors import SessionExpired
from server_helpers import running_server
from sam3d.serve.sessions import SessionStore

SHAPE = (16, 48, 48)
SPACING = "2.5,0.8,0.8"
MIB = 1 << 20


def volume(shape=SHAPE, dtype=np.int16) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 30, shape).astype(dtype)


def upload(base: str, array: np.ndarray, spacing: str = SPACING, body: bytes | None = None,
           headers=None) -> requests.Response:
    query = {"shape": ",".join(map(str, array.shape)), "dtype": array.dtype.name, "spacing": spacing}
    data = zlib.compress(array.tobytes()) if body is None else body
    return requests.post(f"{base}/v1/sessions", params=query, data=data, headers=headers, timeout=60)


def error_of(reply: requests.Response, status: int, code: str) -> str:
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] == code, reply.text
    return reply.json()["message"]


def raw_request(url: str, head: str, body_part: bytes) -> bytes:
    """Send a request head and only the first part of its body; return what the server answers."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as connection:
        connection.sendall(head.encode("latin-1") + b"\r\n\r\n" + body_part)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def health_ms(url: str, count: int = 10) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        assert requests.get(f"{url}/v1/health", timeout=10).ok
        times.append((time.perf_counter() - start) * 1000)
    return times


@pytest.fixture(scope="module")
def keyed(tiny_model) -> str:
    with running_server("--model", str(tiny_model), "--max-memory", "96M", "--max-undo-bytes", "64K",
                        "--max-points", "5", env={"SAM3D_API_KEY": "k3y"}) as base:
        yield base


GOOD = {"Authorization": "Bearer k3y"}


# -- 1. bodies are refused before they are read -------------------------------------------------
def test_a_30_mb_body_without_a_key_gets_401_unread_and_health_stays_fast(keyed):
    head = (f"POST /v1/sessions?shape=300,300,300&spacing={SPACING}&dtype=int8 HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {30 * MIB}")
    answers = []
    attackers = [threading.Thread(target=lambda: answers.append(raw_request(keyed, head, bytes(MIB))))
                 for _ in range(4)]
    for thread in attackers:
        thread.start()
    probes = health_ms(keyed)
    for thread in attackers:
        thread.join()
    # the answer came after 1 MB of the 30 MB: the server did not wait for (or read) the rest
    assert len(answers) == 4 and all(a.startswith(b"HTTP/1.1 401") for a in answers), answers
    assert statistics.median(probes) < 100, probes
    json_head = (f"POST /v1/sessions/x/interactions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k3y\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {30 * MIB}")
    assert raw_request(keyed, json_head, b'{"points": [').startswith(b"HTTP/1.1 413")


def test_a_body_longer_than_the_limit_without_content_length_gets_413(tiny_model):
    with running_server("--model", str(tiny_model), "--max-json-bytes", "1000") as url:
        chunks = (b'{"points": [' + b"[1.0, 2.0, 3.0], " * 100 + b"[1.0, 2.0, 3.0]], " for _ in range(1))
        reply = requests.post(f"{url}/v1/sessions/abc/interactions", data=chunks,  # chunked encoding
                              headers={"Content-Type": "application/json"}, timeout=30)
        assert "exceeds 1000 bytes" in error_of(reply, 413, "payload_too_large")


# -- 2. memory budget, decompression bombs, undo history in bytes --------------------------------
def test_a_bomb_and_a_budget_overrun_are_refused_and_resident_memory_stays_in_budget(keyed):
    before = requests.get(f"{keyed}/v1/metrics", headers=GOOD).json()["memory"]
    assert before["budget_bytes"] == 96 * MIB
    bomb = zlib.compress(bytes(200 * MIB), 9)  # 200 MB of zeros in 200 kB, declared as 16 x 48 x 48
    assert "decompression bomb" in error_of(upload(keyed, volume(), body=bomb, headers=GOOD), 413,
                                            "payload_too_large")
    big = np.zeros((192, 256, 256), np.int16)  # 25 MB sent as 25 kB; 38 MB as a session (volume + mask)
    message = error_of(upload(keyed, np.zeros((512, 256, 256), np.int16), body=b"x", headers=GOOD), 507,
                       "memory_budget_exceeded")  # 100 MB as a session: refused before the body is read
    assert "MiB" in message and "96.0 MiB" in message
    created = []
    for _ in range(3):  # the third does not fit in 96 MB
        reply = upload(keyed, big, headers=GOOD)
        if reply.status_code != 201:
            error_of(reply, 507, "memory_budget_exceeded")
            break
        created.append(reply.json()["session_id"])
    assert len(created) == 2
    after = requests.get(f"{keyed}/v1/metrics", headers=GOOD).json()["memory"]
    assert after["reserved_bytes"] <= after["budget_bytes"]
    assert after["resident_bytes"] - before["resident_bytes"] <= after["budget_bytes"]
    for session in created:
        requests.delete(f"{keyed}/v1/sessions/{session}", headers=GOOD)


def test_full_volume_mask_edits_keep_the_undo_history_within_its_bytes(keyed):
    session = upload(keyed, volume((64, 64, 64)), headers=GOOD).json()
    encoder = client_module.SAM3DClient(keyed, api_key="k3y")
    rng = np.random.default_rng(1)
    for _ in range(30):  # each edit's undo entry is 32 kB packed; the history keeps at most 64 kB
        encoder.set_mask(session["session_id"], rng.random((64, 64, 64)) > 0.5)
    info = encoder.session_info(session["session_id"])
    assert info["memory_bytes"] <= session["memory_bytes"]
    assert info["memory_bytes"] <= 64 ** 3 * 3 + 64 * 1024 + info["cached_crops"] * MIB
    encoder.undo(session["session_id"])
    encoder.undo(session["session_id"])
    with pytest.raises(client_module.NothingToUndo):
        encoder.undo(session["session_id"])
    encoder.delete_session(session["session_id"])


# -- 3. per-object limits ------------------------------------------------------------------------
def test_points_per_object_are_limited_with_a_clear_409(keyed):
    with client_module.SAM3DClient(keyed, api_key="k3y") as client:
        session = client.create_session(volume(), [2.5, 0.8, 0.8])
        client.interact(session, [[8.0, 24.0, 24.0]] * 4, [1, 0, 1, 0])
        with pytest.raises(client_module.SessionLimitReached, match="would have 6 points; this server allows 5"):
            client.interact(session, [[8.0, 20.0, 24.0]] * 2, [1, 1])
        assert client.session_info(session)["interactions"] == 1
        client.reset(session)
        client.interact(session, [[8.0, 20.0, 24.0]] * 2, [1, 1])  # the next object starts afresh
        client.delete_session(session)


# -- 4. browser safety -----------------------------------------------------------------------------
def test_cross_origin_requests_and_foreign_hosts_are_refused(tiny_model):
    with running_server("--model", str(tiny_model), "--cors-origin", "https://viewer.example") as url:
        plain = {"Content-Type": "text/plain"}
        evil = upload(url, volume(), headers={**plain, "Origin": "https://evil.example"})
        assert "evil.example" in error_of(evil, 403, "origin_not_allowed")
        rebound = requests.get(f"{url}/v1/capabilities", headers={"Host": "attacker.example:8000"})
        assert "attacker.example" in error_of(rebound, 400, "host_not_allowed")
        allowed = upload(url, volume(), headers={"Origin": "https://viewer.example"})
        assert allowed.status_code == 201 and \
            allowed.headers["access-control-allow-origin"] == "https://viewer.example"
        assert requests.get(f"{url}/v1/capabilities", headers={"Host": "localhost"}).ok
        assert requests.get(f"{url}/v1/metrics").json()["sessions"] == 1


def test_at_capacity_the_least_recently_used_idle_session_makes_room(tiny_model):
    with running_server("--model", str(tiny_model), "--max-sessions", "2", "--evict-idle-after", "0.5") as url:
        first = upload(url, volume()).json()["session_id"]
        second = upload(url, volume()).json()["session_id"]
        error_of(upload(url, volume()), 503, "server_at_capacity")  # both used within 0.5 s
        time.sleep(0.6)
        assert requests.get(f"{url}/v1/sessions/{second}").ok  # second is now the more recently used
        assert upload(url, volume()).status_code == 201
        message = error_of(requests.get(f"{url}/v1/sessions/{first}"), 410, "session_expired")
        assert "make room" in message
        assert requests.get(f"{url}/v1/sessions/{second}").ok


# -- 5. TLS and the key out of `ps` ---------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_https_with_a_self_signed_certificate_works_end_to_end_with_the_client(tiny_model, certificate, tmp_path):
    cert, key = certificate
    key_file = tmp_path / "api.key"
    key_file.write_text("from-a-file\n")
    with running_server("--model", str(tiny_model), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                        "--api-key-file", str(key_file), ca_bundle=str(cert)) as url:
        assert url.startswith("https://")
        with client_module.SAM3DClient(url, api_key="from-a-file", ca_bundle=str(cert)) as client:
            assert client.capabilities()["auth_required"] is True
            session = client.create_session(volume(), [2.5, 0.8, 0.8])
            update = client.interact(session, [[8.0, 24.0, 24.0]], [1])
            assert update.interaction == 1
            client.delete_session(session)
        with client_module.SAM3DClient(url, api_key="from-a-file") as untrusting:
            with pytest.raises(client_module.TLSError, match="certificate"):
                untrusting.health()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url.replace("https", "http") + "/v1/health", timeout=5)


def test_binding_beyond_loopback_without_tls_warns_and_names_the_tunnel():
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--api-key", "k"])
    notes = " ".join(warnings_for(args))
    assert "without TLS" in notes and "SSH tunnel" in notes and "visible" in notes
    assert warnings_for(parser.parse_args(["serve", "--host", "0.0.0.0", "--ssl-certfile", "c",
                                           "--ssl-keyfile", "k"])) == []


def test_serve_help_lists_every_limit_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--max-sessions", "--session-ttl", "--evict-idle-after", "--max-memory",
                   "--max-session-memory", "--max-upload-bytes", "--max-json-bytes", "--max-voxels",
                   "--max-undo-bytes", "--max-points", "--max-interactions", "--auth-failures-per-minute"):
        assert option in text
    assert text.count("(default") >= 12


# -- 6. / 8. smaller items ---------------------------------------------------------------------------
@pytest.mark.parametrize("array, body, spacing, status, fragment", [
    (volume(), zlib.compress(volume().tobytes()) + b"trailing", SPACING, 400, "follow the zlib stream"),
    (volume(), None, "1e-300,1,1", 400, "outside 0.001..10000 mm"),
    (volume(), None, "1e300,1,1", 400, "outside 0.001..10000 mm"),
    (np.full(SHAPE, 1e308), None, SPACING, 400, "beyond float32"),
])
def test_smaller_items_are_refused_with_a_message(keyed, array, body, spacing, status, fragment):
    reply = upload(keyed, array, spacing=spacing, body=body, headers=GOOD)
    assert fragment in error_of(reply, status, "bad_request")


def test_float64_is_stored_as_float32(keyed):
    created = upload(keyed, volume(dtype=np.float64), headers=GOOD).json()
    info = requests.get(f"{keyed}/v1/sessions/{created['session_id']}", headers=GOOD).json()
    assert info["memory_bytes"] == np.prod(SHAPE) * (4 + 1)  # float32 volume + bool mask, nothing else yet
    requests.delete(f"{keyed}/v1/sessions/{created['session_id']}", headers=GOOD)


def test_a_long_session_id_is_not_echoed_and_lowercase_bearer_works(keyed):
    reply = requests.get(f"{keyed}/v1/sessions/{'A' * 10_000}", headers={"Authorization": "bearer k3y"})
    assert reply.status_code == 400 and "AAAAAAAAAA" not in reply.text and len(reply.text) < 1000


def test_a_client_disconnect_is_not_a_server_error(keyed):
    errors_before = requests.get(f"{keyed}/v1/metrics", headers=GOOD).json()["errors"]
    parsed = urlparse(keyed)
    for path, size in ((f"/v1/sessions?shape=16,48,48&spacing={SPACING}&dtype=int16", 73728),
                       ("/v1/sessions/abc/interactions", 5000)):
        with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as connection:
            connection.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k3y\r\n"
                               f"Content-Length: {size}\r\n\r\n".encode() + b"x" * 100)
            time.sleep(0.3)
    time.sleep(0.5)
    metrics = requests.get(f"{keyed}/v1/metrics", headers=GOOD).json()
    assert metrics["errors"] == errors_before and metrics["memory"]["reserved_bytes"] == 0


def test_401s_are_rate_limited_per_address(tiny_model):
    with running_server("--model", str(tiny_model), "--auth-failures-per-minute", "3",
                        env={"SAM3D_API_KEY": "k"}) as url:
        for _ in range(3):
            error_of(requests.get(f"{url}/v1/capabilities", headers={"Authorization": "Bearer guess"}),
                     401, "unauthorized")
        error_of(requests.get(f"{url}/v1/capabilities", headers={"Authorization": "Bearer guess"}),
                 429, "too_many_auth_failures")
        assert requests.get(f"{url}/v1/health").ok  # health stays open


def store_of_one_session(tiny_model, now: list[float]) -> tuple[SessionStore, str]:
    """A store (TTL 10 s, on the clock ``now[0]``) holding one session, and its id."""
    store = SessionStore(max_sessions=2, ttl_s=10.0, max_memory=1 << 30, evict_idle_s=0.0,
                         clock=lambda: now[0])
    store.reserve(1000)
    session_id = store.add(Session(Predictor.load(tiny_model, device="cpu"), volume(), (2.5, 0.8, 0.8)), 1000, 1000)
    return store, session_id


def test_a_session_in_use_does_not_expire_and_its_clock_starts_when_the_request_ends(tiny_model):
    now = [0.0]
    store, session_id = store_of_one_session(tiny_model, now)
    with store.use(session_id):
        now[0] = 60.0  # a long request: the TTL passes while it runs
        store.purge()
        store.reserve(1000)  # nor may a new session evict it
        store.release(1000)
        assert len(store) == 1
    now[0] = 65.0
    with store.use(session_id):  # 5 s after the request ended: still there
        pass
    now[0] = 76.0
    with pytest.raises(SessionExpired):
        with store.use(session_id):
            pass


def test_the_servers_idle_work_on_a_session_does_not_keep_it_alive(tiny_model):
    """``use(touch=False)`` (the idle work after an interaction) holds the session while it runs
    but restarts neither its expiry clock nor its place in the least-recently-used order."""
    now = [0.0]
    store, session_id = store_of_one_session(tiny_model, now)
    now[0] = 8.0
    with store.use(session_id, touch=False):
        now[0] = 9.0
    now[0] = 11.0  # 11 s after its last request, 2 s after the idle work
    with pytest.raises(SessionExpired):
        with store.use(session_id):
            pass
