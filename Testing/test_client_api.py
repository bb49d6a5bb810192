"""The torch-free client (SAM3DPromptLib.client) against a real `sam3d serve` on loopback (the
shared ``server_url`` fixture, random tiny model): every call and the mask updates."""

from __future__ import annotations

import numpy as np
import pytest

from SAM3DPromptLib.client import BadRequest, MaskUpdate, NothingToUndo, SAM3DClient, SessionNotFound

SHAPE = (16, 48, 48)
SPACING = (2.5, 0.8, 0.8)
CENTRE = [8.0, 24.0, 24.0]
pytestmark = pytest.mark.parametrize("server_url", ["tiny"], indirect=True)


def volume(seed: int = 0, shape=SHAPE, dtype=np.int16) -> np.ndarray:
    array = np.random.default_rng(seed).normal(0, 30, shape)
    array[shape[0] // 4: shape[0] // 2, 10:30, 12:30] += 90
    return array.astype(dtype)


@pytest.fixture
def client(server_url) -> SAM3DClient:
    with SAM3DClient(server_url, timeout=30) as c:
        yield c


def test_handshake(client):
    assert client.health() == {"status": "ok", "api_version": "1"}
    caps = client.capabilities()
    assert caps["api_version"] == "1" and caps["axis_order"] == "kji"
    assert caps["model"]["variant"] == "tiny" and caps["auth_required"] is False


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8, np.int64, np.bool_])
def test_create_session_uploads_any_slicer_scalar_type(client, dtype):
    array = volume(dtype=np.float64).clip(0, 1 if dtype is np.bool_ else 200).astype(dtype)
    session = client.create_session(array, SPACING)
    info = client.session_info(session)
    assert info["shape"] == list(SHAPE) and info["spacing"] == list(SPACING)
    client.delete_session(session)


def test_interact_undo_reset_delete(client):
    session = client.create_session(volume(), SPACING)
    full = np.zeros(SHAPE, bool)
    first = client.interact(session, [CENTRE], [1])
    assert isinstance(first, MaskUpdate) and not first.is_empty
    assert first.mask.shape == tuple(h - l for l, h in zip(first.lo, first.hi))
    assert first.encoder_ran and set(first.timing_ms) == {"encode", "decode", "total"}
    first.apply_to(full)
    assert first.voxels == int(full.sum()) > 0
    after_first = full.copy()
    second = client.interact(session, [[8.0, 20.0, 20.0]], [0])
    assert not second.encoder_ran and second.interaction == 2
    second.apply_to(full)
    assert second.voxels == int(full.sum())
    client.undo(session).apply_to(full)
    np.testing.assert_array_equal(full, after_first)
    info = client.session_info(session)
    assert info["interactions"] == 1 and info["points"] == [CENTRE]
    client.reset(session)
    assert client.session_info(session)["voxels"] == 0
    with pytest.raises(NothingToUndo) as error:
        client.undo(session)
    assert error.value.status == 409 and "nothing to undo" in str(error.value)
    client.delete_session(session)
    with pytest.raises(SessionNotFound) as error:
        client.session_info(session)
    assert "upload the volume again" in str(error.value)


def test_set_mask_sends_the_bounding_box_and_round_trips(client):
    session = client.create_session(volume(), SPACING)
    mask = np.zeros(SHAPE, bool)
    mask[3:9, 10:17, 30:41] = np.random.default_rng(1).random((6, 7, 11)) > 0.4
    update = client.set_mask(session, mask)
    full = update.apply_to(np.zeros(SHAPE, bool))
    np.testing.assert_array_equal(full, mask)
    assert update.voxels == int(mask.sum())
    assert update.lo >= (3, 10, 30) and update.hi <= (9, 17, 41)
    cleared = client.set_mask(session, np.zeros(SHAPE, bool))  # an empty mask clears the object
    cleared.apply_to(full)
    assert not full.any() and cleared.voxels == 0


def test_bad_points_are_a_bad_request(client):
    session = client.create_session(volume(), SPACING)
    with pytest.raises(BadRequest, match="outside the volume") as error:
        client.interact(session, [[16.0, 24.0, 24.0]], [1])
    assert error.value.status == 400
    with pytest.raises(BadRequest) as error:
        client.interact(session, [[1.0, 2.0]], [1])
    assert error.value.status == 422
    with pytest.raises(SessionNotFound):
        client.interact("no-such-session", [CENTRE], [1])
