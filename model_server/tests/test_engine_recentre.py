"""A new object's first click answered again on a crop centred on the object the image shows
(``engine/recentre.py``): the rule's parts on drawn volumes, and the engine with the bundled
default model on a synthetic lesion clicked on its rim, whose first answer (a blob around the
click) becomes the lesion once the crop is centred inside it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sam3d.data.clicks import rim_click
from sam3d.data.phantoms import case_seed
from sam3d.data.synth import generate_synth_case
from sam3d.engine import recentre
from sam3d.engine.predictor import IdleStep, Predictor
from sam3d.engine.session import Session
from sam3d.model.checkpoint import BUNDLED_MODELS

SPACING = (2.0, 1.0, 1.0)
needs_default = pytest.mark.skipif(not BUNDLED_MODELS["default"].is_file(),
                                   reason="the bundled default model is not there")


def _distance_mm(shape, centre, spacing=SPACING) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return np.linalg.norm((grid - np.asarray(centre)) * np.asarray(spacing), axis=-1)


def _noisy(image: np.ndarray, sd: float = 5.0) -> np.ndarray:
    return (image + np.random.default_rng(0).normal(0, sd, image.shape)).astype(np.float32)


def _blob_at(shape, click, within: np.ndarray, radius_mm: float = 6.0) -> np.ndarray:
    """A first answer as the model gives it on a rim click: a blob around the click, inside the
    object ``within``."""
    return (_distance_mm(shape, click) <= radius_mm) & within


def test_a_rim_click_on_a_lesion_with_a_darker_core_finds_the_lesion_s_centre():
    shape, centre = (40, 90, 90), (20, 45, 45)
    distance = _distance_mm(shape, centre)
    image = np.where(distance <= 20, 200.0, 0.0)  # a 40 mm lesion in darker surroundings
    image[distance <= 10] = 80.0  # its darker core
    click = (20, 45, 64)  # 1 mm inside its rim
    blob = _blob_at(shape, click, image == 200)
    found = recentre.image_object(_noisy(image), SPACING, blob, np.array(click, float))
    assert found is not None and np.linalg.norm((found.centre - centre) * SPACING) <= 2.0


def test_the_climb_stays_in_the_clicked_lesion_where_a_neck_joins_a_larger_structure():
    shape, centre = (40, 100, 100), (20, 50, 30)
    image = np.where(_distance_mm(shape, centre) <= 12, 200.0, 0.0)
    image[:, :, 60:] = 200.0  # an organ of the lesion's level beyond it
    image[19:22, 49:52, 40:60] = 200.0  # joined by a neck 3 voxels wide
    click = (20, 50, 19)  # on the lesion's far rim
    blob = _blob_at(shape, click, image == 200)
    found = recentre.image_object(_noisy(image), SPACING, blob, np.array(click, float))
    assert found is not None and np.linalg.norm((found.centre - centre) * SPACING) <= 2.0


def test_a_lesion_that_does_not_stand_apart_gives_no_centre():
    shape, click = (30, 60, 60), (15, 30, 40)
    lesion = _distance_mm(shape, (15, 30, 30)) <= 12
    image = np.where(lesion, 104.0, 100.0)  # 4 units off, noise sd 5
    blob = _blob_at(shape, click, lesion)
    assert recentre.image_object(_noisy(image), SPACING, blob, np.array(click, float)) is None
    # nor does a click outside its first mask
    bright = np.where(lesion, 200.0, 0.0)
    assert recentre.image_object(_noisy(bright), SPACING, _blob_at(shape, (15, 30, 20), lesion),
                                        np.array(click, float)) is None
    # where the lesion stands apart, the same click finds its centre
    assert recentre.image_object(_noisy(bright), SPACING, blob, np.array(click, float)) is not None


def test_the_crop_moves_only_as_far_as_keeps_the_click_inside_it():
    click = np.array([10.0, 50.0, 50.0])
    near = click + [0.0, 0.0, 5.0]  # 5 mm: under 4 crop voxels of 1.5 mm
    assert recentre.shifted_centre(click, near, SPACING, 64, 1.5) is None
    far = click + [40.0, 0.0, 10.0]  # 80 mm along k: the click must stay 8 crop voxels inside
    moved = recentre.shifted_centre(click, far, SPACING, 64, 1.5)
    most_mm = ((64 - 1) / 2 - 64 / 8) * 1.5
    np.testing.assert_allclose((moved - click) * SPACING, [most_mm, 0.0, 10.0])


def test_an_answer_reaches_the_click_within_the_gap():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[10, 10, 12] = True  # 2 mm from the click along i
    assert recentre.reaches_click(mask, np.array([10.0, 10.0, 10.0]), SPACING)
    mask[:] = False
    mask[12, 10, 10] = True  # 4 mm along k (2 mm slices)
    assert not recentre.reaches_click(mask, np.array([10.0, 10.0, 10.0]), SPACING)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load("default", device="cpu")


@pytest.fixture(scope="module")
def rim_clicked_lesion():
    """Synthetic case 1 of the development set (seed 93): a 16 ml lesion with a darker core,
    clicked on its rim (``rim_click``)."""
    case = generate_synth_case(case_seed(93, 1))
    lesion = case.label.array > 0
    return case, lesion, rim_click(lesion, case.image.spacing)


def _dice(found: np.ndarray, truth: np.ndarray) -> float:
    return 2 * np.count_nonzero(found & truth) / (np.count_nonzero(found) + np.count_nonzero(truth))


@needs_default
def test_a_rim_click_is_answered_on_a_crop_centred_in_its_lesion(predictor, rim_clicked_lesion, monkeypatch):
    case, lesion, click = rim_clicked_lesion
    session = Session(predictor, case.image.array, case.image.spacing)
    session.interact([click], [1])
    recentred_dice = _dice(session.mask, lesion)
    assert session._partial is not None  # the re-centred crop, encoded first near the lesion
    centres = [np.asarray(g.center) for g in session.cache.geometries() + [session._partial.geometry]]
    monkeypatch.setattr(recentre, "MIN_SHIFT_CROP_VOXELS", np.inf)  # the crop at the click alone
    at_click = Session(predictor, case.image.array, case.image.spacing)
    at_click.interact([click], [1])
    depth = ndimage.distance_transform_edt(lesion, sampling=case.image.spacing)
    deepest_centre = max(depth[tuple(np.round(c).astype(int))] for c in centres)
    assert deepest_centre > depth.max() / 2  # a crop centred deep in the lesion
    assert all(depth[tuple(np.round(g.center).astype(int))] < deepest_centre for g in at_click.cache.geometries())
    assert recentred_dice > 0.85 and recentred_dice > _dice(at_click.mask, lesion) + 0.3
    # the object's next click reads the re-centred crop whole: idle time completes it
    while session.complete_partial_crop() is not IdleStep.DONE:
        pass
    assert session._partial is None and len(session.cache) == len(centres)
