"""The interactive engine on a random-weight tiny model: crop placement, encoder cache, fusion,
undo, prior masks, atomic failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3d.data.intensity import PRESETS
from sam3d.engine.predictor import Predictor
from sam3d.engine import session as session_module
from sam3d.engine.session import InvalidBox, NothingToUndo, Session, segment
from sam3d.model.checkpoint import save_checkpoint
from sam3d.model.config import get_config
from sam3d.model.sam3d import Sam3D

SHAPE = (24, 80, 80)
SPACING = (2.5, 0.8, 0.8)  # a tiny crop (32 voxels at 2 mm) covers 26 x 80 x 80 native voxels
CENTRE = (12.0, 40.0, 40.0)


@pytest.fixture(scope="module")
def predictor(tiny_model) -> Predictor:
    return Predictor.load(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def box_predictor(tiny_box_model) -> Predictor:
    return Predictor.load(tiny_box_model, device="cpu")


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    ball = ((k - 12) * 2.5) ** 2 + ((j - 40) * 0.8) ** 2 + ((i - 40) * 0.8) ** 2 < 12.0 ** 2
    return (np.where(ball, 60, -20) + rng.normal(0, 10, SHAPE)).astype(np.int16)


def footprint_union(session: Session) -> np.ndarray:
    covered = np.zeros(session.shape, dtype=bool)
    for g in session.cache.geometries():
        lo, hi = g.footprint()
        covered[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return covered


def test_a_second_click_in_the_same_crop_runs_only_the_decoder(predictor, volume):
    session = Session(predictor, volume, SPACING)
    first = session.interact([CENTRE], [1])
    assert first.encoder_ran and session.encoder_runs >= 1
    runs = session.encoder_runs
    second = session.interact([[13.0, 43.0, 38.0]], [0])
    assert not second.encoder_ran
    assert session.encoder_runs == runs
    assert session.decoder_runs >= 2
    assert second.timing_ms["encode"] == 0.0 and second.timing_ms["total"] > 0


def test_a_click_outside_every_encoded_crop_encodes_a_new_one(predictor):
    shape = (24, 200, 80)  # long along j: two crops far apart
    session = Session(predictor, np.zeros(shape, np.int16), SPACING, max_crops=1)
    session.interact([[12.0, 30.0, 40.0]], [1])
    assert session.encoder_runs == 1
    change = session.interact([[12.0, 170.0, 40.0]], [1])
    assert change.encoder_ran and session.encoder_runs == 2
    session.interact([[12.0, 33.0, 40.0]], [1])  # back near the first crop: cached
    assert session.encoder_runs == 2


def test_the_cache_is_bounded_least_recently_used_first(predictor):
    shape = (24, 300, 80)
    session = Session(predictor, np.zeros(shape, np.int16), SPACING, cache_size=2, max_crops=1)
    for j in (30.0, 150.0, 270.0):
        session.interact([[12.0, j, 40.0]], [1])
    assert len(session.cache) == 2 and session.encoder_runs == 3
    session.interact([[12.0, 30.0, 40.0]], [1])  # evicted: encoded again
    assert session.encoder_runs == 4


def test_the_mask_changes_only_where_crops_were_placed(predictor, volume):
    session = Session(predictor, volume, SPACING, cache_size=6, max_crops=6)
    change = session.interact([CENTRE], [1])
    assert 1 <= change.crops <= 6
    assert session.mask.sum() == change.voxels > 0
    assert not (session.mask & ~footprint_union(session)).any()
    box = tuple(slice(l, h) for l, h in zip(change.lo, change.hi))
    np.testing.assert_array_equal(change.mask, session.mask[box])
    outside = session.mask.copy()
    outside[box] = False
    assert not outside.any()  # the first change of an object holds all of it


@pytest.fixture(scope="module")
def everywhere_predictor(tmp_path_factory) -> Predictor:
    """A real tiny model whose output head says foreground everywhere (zero weights, bias 0 / 10),
    so that every crop's mask reaches all its faces."""
    torch.manual_seed(0)
    model = Sam3D(get_config("tiny"))
    with torch.no_grad():
        model.decoder.head.weight.zero_()
        model.decoder.head.bias.copy_(torch.tensor([0.0, 10.0]))
    path = save_checkpoint(tmp_path_factory.mktemp("model") / "everywhere.pt", model, PRESETS["soft_tissue"],
                           "tiny-everywhere")
    return Predictor.load(path, device="cpu")


def test_crops_are_added_across_faces_the_mask_reaches(everywhere_predictor):
    shape = (24, 200, 80)  # longer along j than one crop covers: the mask reaches inner faces
    session = Session(everywhere_predictor, np.full(shape, 50, np.int16), SPACING, cache_size=6, max_crops=3)
    change = session.interact([[12.0, 100.0, 40.0]], [1])
    first_crop = session.cache.geometries()[-1].footprint()  # the least recently used
    assert change.crops == 3  # the first crop, and one across each of its two inner j faces
    lo, hi = first_crop
    outside_first = session.mask.copy()
    outside_first[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = False
    assert outside_first.any(), "the further crops added foreground beyond the first crop"
    assert session.mask[:, :lo[1]].any() and session.mask[:, hi[1]:].any()  # on both sides


def test_undo_restores_the_previous_mask_bit_exactly(predictor, volume):
    session = Session(predictor, volume, SPACING)
    session.interact([CENTRE], [1])
    before, points_before = session.mask.copy(), session.points.copy()
    change = session.interact([[12.0, 44.0, 44.0]], [0])
    undo = session.undo()
    np.testing.assert_array_equal(session.mask, before)
    np.testing.assert_array_equal(session.points, points_before)
    assert (undo.lo, undo.hi) == (change.lo, change.hi)
    assert undo.voxels == int(before.sum()) and session.interactions == 1
    session.undo()
    assert not session.mask.any() and session.voxels == 0 and len(session.points) == 0
    with pytest.raises(NothingToUndo):
        session.undo()


def test_set_mask_replaces_the_object_and_feeds_the_next_click(predictor, volume):
    plain = Session(predictor, volume, SPACING)
    plain.interact([CENTRE], [1])
    primed = Session(predictor, volume, SPACING)
    prior = np.zeros((6, 20, 20), dtype=bool)
    prior[1:5, 2:18, 2:18] = True
    change = primed.set_mask((9, 30, 30), (15, 50, 50), prior)
    assert primed.voxels == prior.sum() == change.voxels
    np.testing.assert_array_equal(primed.mask[9:15, 30:50, 30:50], prior)
    assert primed.mask.sum() == prior.sum()
    primed.interact([CENTRE], [1])
    # same click, same crop: only the mask prompt differs, and it changes the prediction
    assert not np.array_equal(primed.mask, plain.mask)
    primed.undo()
    np.testing.assert_array_equal(primed.mask[9:15, 30:50, 30:50], prior)
    primed.undo()
    assert not primed.mask.any()


def test_reset_clears_the_object_and_keeps_the_encoder_cache(predictor, volume):
    session = Session(predictor, volume, SPACING)
    session.interact([CENTRE], [1])
    runs = session.encoder_runs
    session.reset()
    assert not session.mask.any() and session.voxels == 0 and session.interactions == 0
    with pytest.raises(NothingToUndo):
        session.undo()
    session.interact([CENTRE], [1])
    assert session.encoder_runs == runs


@pytest.mark.parametrize("points, labels, message", [
    ([[24.0, 40.0, 40.0]], [1], "outside the volume"),
    ([[-1.0, 40.0, 40.0]], [1], "outside the volume"),
    ([[12.0, 40.0, 40.0]], [1, 0], "one label per point"),
    ([[12.0, 40.0, 40.0]], [2], "labels must be 1"),
    ([[12.0, float("nan"), 40.0]], [1], "finite"),
    ([], [], "at least one point"),
])
def test_bad_points_are_refused_and_leave_the_session_unchanged(predictor, volume, points, labels, message):
    session = Session(predictor, volume, SPACING)
    session.interact([CENTRE], [1])
    before = session.mask.copy()
    with pytest.raises(ValueError, match=message):
        session.interact(points, labels)
    np.testing.assert_array_equal(session.mask, before)
    assert session.interactions == 1 and len(session.points) == 1


def test_a_failed_prediction_leaves_the_session_unchanged(predictor, volume, monkeypatch):
    session = Session(predictor, volume, SPACING, max_crops=6)
    session.interact([CENTRE], [1])
    before, voxels = session.mask.copy(), session.voxels
    real_predict, calls = Predictor.predict, []

    def fail_on_second_crop(self, *args, **kwargs):  # fault injection: the device fails mid-request
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated device failure")
        return real_predict(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", fail_on_second_crop)
    with pytest.raises(RuntimeError):
        session.interact([[12.0, 44.0, 44.0], [12.0, 10.0, 10.0]], [0, 1])
    monkeypatch.undo()
    np.testing.assert_array_equal(session.mask, before)
    assert session.voxels == voxels and session.interactions == 1 and len(session.points) == 1
    session.interact([[12.0, 44.0, 44.0]], [0])
    assert session.interactions == 2


def test_segment_is_one_interaction_of_a_fresh_session(predictor, volume):
    mask = segment(predictor, volume, SPACING, [CENTRE], [1])
    session = Session(predictor, volume, SPACING, cache_size=6)
    session.interact([CENTRE], [1])
    assert mask.dtype == bool and mask.shape == SHAPE
    np.testing.assert_array_equal(mask, session.mask)


def test_undo_history_is_bounded(predictor, volume, monkeypatch):
    monkeypatch.setattr(session_module, "UNDO_DEPTH", 2)
    session = Session(predictor, volume, SPACING)
    for j in (36.0, 40.0, 44.0):
        session.interact([[12.0, j, 40.0]], [1])
    session.undo()
    session.undo()
    assert session.interactions == 1 and len(session.points) == 1
    with pytest.raises(NothingToUndo):
        session.undo()


# -- box prompts --------------------------------------------------------------------------------
class RecordingPredictor(Predictor):
    """The real predictor, also keeping the prompts each crop's prediction received."""

    def __init__(self, loaded) -> None:
        super().__init__(loaded)
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def predict(self, features, points_crop, labels, mask_logit):
        self.calls.append((np.asarray(points_crop, dtype=float).reshape(-1, 3), np.asarray(labels)))
        return super().predict(features, points_crop, labels, mask_logit)


BOX = [[14.0, 48.0, 30.0], [10.0, 32.0, 46.0]]  # corners in any order: lo = (10, 32, 30), hi = (14, 48, 46)


def test_a_box_reaches_the_model_as_corners_2_and_3_of_a_crop_centred_on_it(box_predictor, volume):
    recorder = RecordingPredictor(box_predictor.loaded)
    session = Session(recorder, volume, SPACING, max_crops=1)
    change = session.interact([], [], box_kji=BOX)
    geometry = session.cache.geometries()[0]
    np.testing.assert_allclose(geometry.center, [12.0, 40.0, 38.0])
    points, labels = recorder.calls[0]
    assert labels.tolist() == [2, 3]
    np.testing.assert_allclose(points, geometry.to_crop([[10.0, 32.0, 30.0], [14.0, 48.0, 46.0]]))
    np.testing.assert_allclose(session.box, [[10.0, 32.0, 30.0], [14.0, 48.0, 46.0]])
    assert change.interaction == 1 and len(session.points) == 0
    # the box changes the prediction: the same crop without a box gives another mask
    no_box = Session(box_predictor, volume, SPACING, max_crops=1)
    no_box.interact([[12.0, 40.0, 38.0]], [1])
    assert not np.array_equal(no_box.mask, session.mask)


def test_a_box_stays_for_later_clicks_clamped_into_their_crops_and_undo_restores_it(box_predictor):
    shape = (24, 200, 80)  # long along j: a click far from the box gets its own crop
    recorder = RecordingPredictor(box_predictor.loaded)
    session = Session(recorder, np.zeros(shape, np.int16), SPACING, max_crops=1)
    session.interact([], [], box_kji=[[12.0, 20.0, 30.0], [12.0, 60.0, 50.0]])  # 2D box on slice 12
    session.interact([[12.0, 75.0, 40.0]], [1])
    geometry = next(g for g in session.cache.geometries() if g.center == (12.0, 75.0, 40.0))
    points, labels = recorder.calls[-1]
    assert labels.tolist() == [1, 2, 3]
    corners = geometry.to_crop([[12.0, 20.0, 30.0], [12.0, 60.0, 50.0]])
    assert corners[0, 1] < 0  # the box's lo corner lies outside this crop: clamped onto its face
    np.testing.assert_allclose(points[1:], np.clip(corners, 0, 31))
    assert points[1, 0] == points[2, 0]  # still a 2D box on one slice
    session.interact([], [], box_kji=[[12.0, 150.0, 30.0], [12.0, 190.0, 50.0]])  # replaces the box
    np.testing.assert_allclose(session.box, [[12.0, 150.0, 30.0], [12.0, 190.0, 50.0]])
    session.undo()
    np.testing.assert_allclose(session.box, [[12.0, 20.0, 30.0], [12.0, 60.0, 50.0]])
    session.reset()
    assert session.box is None
    session.interact([[12.0, 75.0, 40.0]], [1])
    assert recorder.calls[-1][1].tolist() == [1]  # no box after reset


@pytest.mark.parametrize("box, message", [
    ([[10.0, 32.0, 30.0], [30.0, 48.0, 46.0]], "outside the volume"),
    ([[10.0, 32.0, 30.0], [10.0, 32.5, 46.0]], "less than one voxel"),
    ([[10.0, float("nan"), 30.0], [14.0, 48.0, 46.0]], "finite"),
    ([[10.0, 32.0, 30.0]], "two opposite corners"),
])
def test_bad_boxes_are_refused_and_leave_the_session_unchanged(box_predictor, volume, box, message):
    session = Session(box_predictor, volume, SPACING)
    session.interact([CENTRE], [1], box_kji=BOX)
    before = session.mask.copy()
    with pytest.raises(InvalidBox, match=message):
        session.interact([CENTRE], [1], box_kji=box)
    np.testing.assert_array_equal(session.mask, before)
    assert session.interactions == 1 and session.box is not None


def test_a_model_without_a_box_prompt_refuses_a_box(predictor, volume):
    with pytest.raises(InvalidBox, match="'tiny-random' .* has no box prompt"):
        segment(predictor, volume, SPACING, [], [], box_kji=BOX)
