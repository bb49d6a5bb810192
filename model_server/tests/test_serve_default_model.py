"""Segmentation quality through a real server with the bundled phantom model (small-phantoms): a click inside a
phantom tumor returns a mask overlapping it (Dice reported), and a negative click removes a
wrongly included region."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import requests
from scipy import ndimage

from sam3d.data.clicks import centre_click
from sam3d.data.phantoms import TUMOR_LABEL, generate_case
from sam3d.model.checkpoint import BUNDLED_MODELS
from server_helpers import running_server
from sam3d.client.wire import encode_mask_bits
from wire_helpers import apply_mask_update as apply

pytestmark = pytest.mark.skipif(not BUNDLED_MODELS["small-phantoms"].is_file(),
                                reason="the bundled small-phantoms model is not there")
CASES = (101, 102, 103)
SHAPE = (40, 112, 112)


@pytest.fixture(scope="module")
def url() -> str:
    with running_server("--model", "small-phantoms", "--device", "cpu") as base:
        yield base


def open_session(url: str, image) -> str:
    reply = requests.post(f"{url}/v1/sessions", data=zlib.compress(image.array.tobytes()),
                          params={"shape": ",".join(map(str, image.shape)), "dtype": image.array.dtype.name,
                                  "spacing": ",".join(map(str, image.spacing))})
    assert reply.status_code == 201, reply.text
    return reply.json()["session_id"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def clicked_tumor(label: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(deepest voxel of the largest tumor, that tumor's mask)."""
    components, count = ndimage.label(label == TUMOR_LABEL)
    sizes = np.bincount(components.ravel())[1:]
    tumor = components == int(np.argmax(sizes)) + 1
    return centre_click(tumor, spacing), tumor


def test_a_click_inside_a_phantom_tumor_returns_a_mask_overlapping_it(url, record_property):
    scores, clicked_voxel_kept = [], []
    for seed in CASES:
        image, label = generate_case(seed, SHAPE)
        point, tumor = clicked_tumor(label.array, image.spacing)
        session = open_session(url, image)
        reply = requests.post(f"{url}/v1/sessions/{session}/interactions",
                              json={"points": [point.tolist()], "labels": [1]})
        mask = apply(np.zeros(image.shape, bool), reply.json())
        scores.append(dice(mask, tumor))
        clicked_voxel_kept.append(bool(mask[tuple(point.astype(int))]))
    record_property("dice_one_click", [round(float(s), 3) for s in scores])
    print(f"one-click Dice on phantoms {CASES}: {[round(s, 3) for s in scores]}, mean {np.mean(scores):.3f}")
    assert all(clicked_voxel_kept), f"the clicked voxel is missing from the mask: {clicked_voxel_kept}"
    assert min(scores) > 0.5 and np.mean(scores) > 0.75  # measured: 0.938, 0.727, 0.903


def test_a_negative_click_removes_a_wrongly_included_region(url, record_property):
    image, label = generate_case(CASES[0], SHAPE)
    point, tumor = clicked_tumor(label.array, image.spacing)
    session = open_session(url, image)
    mask = apply(np.zeros(image.shape, bool), requests.post(
        f"{url}/v1/sessions/{session}/interactions", json={"points": [point.tolist()], "labels": [1]}).json())
    # A leak the user wants gone: a 5 mm ball of host organ 8-20 mm from the tumor, added to the object.
    distance = ndimage.distance_transform_edt(~tumor, sampling=image.spacing)
    candidates = np.argwhere((label.array == 1) & (distance > 8) & (distance < 20))
    assert len(candidates), "the phantom has no host organ next to its tumor"
    centre = candidates[len(candidates) // 2]
    k, j, i = np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij")
    offsets = [(axis - c) * s for axis, c, s in zip((k, j, i), centre, image.spacing)]
    leak = (sum(o ** 2 for o in offsets) < 25.0) & ~tumor
    edited = mask | leak
    lo, hi = np.argwhere(edited).min(0), np.argwhere(edited).max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    reply = requests.put(f"{url}/v1/sessions/{session}/mask",
                         json={"bbox": [lo.tolist(), hi.tolist()], "mask": encode_mask_bits(edited[box])})
    assert reply.status_code == 200
    apply(mask, reply.json())
    assert (mask & leak).sum() == leak.sum()
    reply = requests.post(f"{url}/v1/sessions/{session}/interactions",
                          json={"points": [centre.astype(float).tolist()], "labels": [0]})
    apply(mask, reply.json())
    kept = (mask & leak).sum() / leak.sum()
    record_property("leak_kept_after_negative_click", round(float(kept), 3))
    print(f"negative click: {kept:.1%} of the leak kept, tumor Dice {dice(mask, tumor):.3f}")
    assert not mask[tuple(centre)], "the negatively clicked voxel is still in the mask"
    assert kept < 0.5
    assert dice(mask, tumor) > 0.7, "the negative click wiped out the tumor as well"
