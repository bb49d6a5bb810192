"""A small object's first click answered again on a finer crop (``engine/crop_scale.py``): the
rule's parts, the finer crop's intensity window, and the engine with the bundled default model on
chest CT phantoms - a 1 ml nodule is drawn on the finer crop and corrected there, a 30 ml mass
stays on the model's own crop, and where the two answers disagree the model's own answer stands.
The finer crop is encoded near the nodule first and whole before any later answer reads it
(``engine/partial_crop.py``)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from sam3d.data.chest import generate_chest_case
from sam3d.data.clicks import centre_click, next_click
from sam3d.data.intensity import PRESETS
from sam3d.data.phantoms import case_seed
from sam3d.engine import crop_scale, partial_crop
from sam3d.engine import session as session_module
from sam3d.engine.crops import CropGeometry, extract_crop
from sam3d.engine.predictor import IdleStep, Predictor
from sam3d.engine.session import Session
from sam3d.model.checkpoint import BUNDLED_MODELS

CHEST_DEV2_SEED = 8  # `sam3d phantoms --design chest --seed 8` (chest dev2 in docs/BENCHMARKS.md)
NODULE, MASS = 0, 14  # its case 0: a 0.96 ml nodule; case 14: a 30 ml mass

needs_default = pytest.mark.skipif(not BUNDLED_MODELS["default"].is_file(),
                                   reason="the bundled default model is not there")


def test_equivalent_diameter_is_that_of_the_sphere_of_the_same_volume():
    voxels = round(4 / 3 * math.pi * 10 ** 3 / 8)  # a 20 mm sphere of 2 mm voxels
    assert crop_scale.equivalent_diameter_mm(voxels, (2.0, 2.0, 2.0)) == pytest.approx(20.0, abs=0.01)
    assert crop_scale.equivalent_diameter_mm(voxels, (1.0, 1.0, 1.0)) == pytest.approx(10.0, abs=0.01)


def test_only_a_small_non_empty_mask_is_tried_finer():
    sphere_voxels = 4 / 3 * math.pi * (crop_scale.SMALL_OBJECT_MM / 2) ** 3  # at 1 mm voxels
    assert crop_scale.is_small(int(sphere_voxels * 0.9), (1.0, 1.0, 1.0))
    assert not crop_scale.is_small(int(sphere_voxels * 1.1), (1.0, 1.0, 1.0))
    assert not crop_scale.is_small(0, (1.0, 1.0, 1.0))
    assert crop_scale.fine_spacing_mm(1.5) == pytest.approx(1.0)


def test_two_masks_agree_at_the_dice_threshold():
    first = np.zeros((10, 10, 10), dtype=bool)
    first[:5] = True  # 500 voxels
    second = np.zeros_like(first)
    second[:4] = True  # 400 voxels, all inside: Dice 800 / 900
    assert crop_scale.agree(first, second)
    second[:] = False
    second[3:8] = True  # 200 shared of 500 + 500: Dice 0.4
    assert not crop_scale.agree(first, second)
    assert not crop_scale.agree(np.zeros_like(first), np.zeros_like(first))


def test_a_finer_crop_takes_the_intensity_window_of_the_model_s_own_crop():
    """Bright bone 35 mm from the centre lies in the 1.5 mm crop (96 mm) and not in the 1.0 mm
    one (64 mm): with the model's window the finer crop is scaled as the model's own crop is."""
    volume = np.random.default_rng(0).normal(40.0, 10.0, (80, 80, 80)).astype(np.float32)
    volume[:, :, 75:] = 1500.0  # 35 voxels (mm) beyond the centre
    preset = PRESETS["percentile"]
    own = CropGeometry.around((40.0, 40.0, 40.0), (1.0, 1.0, 1.0), volume.shape, 64, 1.5)
    finer = own.at_spacing(1.0)
    assert finer.key != own.key  # the feature cache tells the two apart
    assert _raw(volume, own).max() == 1500.0 and _raw(volume, finer).max() < 1000.0
    windowed = extract_crop(volume, finer, preset, window_spacing_mm=1.5)[0, 0].numpy()
    plain = extract_crop(volume, finer, preset)[0, 0].numpy()
    low, high = preset.percentile_window(_raw(volume, own))
    expected = np.clip((_raw(volume, finer) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(windowed, expected, atol=1e-5)
    assert windowed.max() < 0.2 < plain.max()  # soft tissue stays dark under the bone's window
    # a crop of the model's own spacing is scaled by its own window either way
    np.testing.assert_array_equal(extract_crop(volume, own, preset, window_spacing_mm=1.5),
                                  extract_crop(volume, own, preset))


def _raw(volume: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    lo, hi = geometry.source_box()
    return geometry.sample(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]).numpy()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load("default", device="cpu")


@functools.lru_cache(maxsize=2)
def _chest_case(case: int):
    return generate_chest_case(case_seed(CHEST_DEV2_SEED, case))


def _first_click(predictor: Predictor, case: int, corrections: str = "auto") -> tuple[Session, np.ndarray]:
    image, label, _ = _chest_case(case)
    target = label.array > 0
    session = Session(predictor, image.array, image.spacing, corrections=corrections)
    session.interact([centre_click(target, image.spacing)], [1])
    return session, target


def _dice(found: np.ndarray, truth: np.ndarray) -> float:
    return 2 * np.count_nonzero(found & truth) / (np.count_nonzero(found) + np.count_nonzero(truth))


def _spacings(session: Session) -> set[float]:
    """The spacings of the crops the session encoded (cached, or encoded in part)."""
    partial = [session._partial.geometry] if session._partial is not None else []
    return {geometry.crop_spacing_mm for geometry in session.cache.geometries() + partial}


def _complete_in_idle_time(session: Session) -> int:
    """``Session.complete_partial_crop`` until there is nothing left to do -> steps that did work."""
    steps = 0
    while (outcome := session.complete_partial_crop()) is not IdleStep.DONE:
        assert outcome is IdleStep.MORE  # nothing else uses the session or the encoder here
        steps += 1
    return steps


@needs_default
def test_a_nodule_is_drawn_and_corrected_on_the_finer_crop(predictor, monkeypatch):
    # the two crops' own masks, not grown to the nodule's intensity step (which brings the
    # coarser one near the finer: 0.94 against 0.95)
    monkeypatch.setattr(session_module, "grow_to_lesion_intensity", lambda image, mask, click: mask)
    session, target = _first_click(predictor, NODULE, corrections="global")  # the 3D model corrects
    own_spacing = predictor.config.crop_spacing_mm
    fine = crop_scale.fine_spacing_mm(own_spacing)
    assert _spacings(session) == {own_spacing, fine}  # answered on both
    finer_dice = _dice(session.mask, target)
    monkeypatch.setattr(crop_scale, "SMALL_OBJECT_MM", 0.0)  # the model's own crop alone
    own_only, _ = _first_click(predictor, NODULE)
    assert _spacings(own_only) == {own_spacing}
    assert finer_dice > _dice(own_only.mask, target) + 0.05 and finer_dice > 0.8
    # a correction of the object is predicted by the 3D model on its finer crop, whose features are
    # cached once idle time has encoded the rest of its slices
    assert session.crop_spacing_mm == fine
    assert _complete_in_idle_time(session) > 0 and session._partial is None
    used, features = [], session._features
    monkeypatch.setattr(session, "_features", lambda geometry, *rest: used.append(geometry.crop_spacing_mm)
                        or features(geometry, *rest))  # records the crops the correction reads, then reads them
    encoder_runs = session.encoder_runs
    point, label = next_click(session.mask, target)
    change = session.interact([point], [label])
    assert used and set(used) == {fine}
    assert change.crops >= 1 and not change.encoder_ran and session.encoder_runs == encoder_runs
    # the next object starts on the model's own crop again
    session.reset()
    assert session.crop_spacing_mm == own_spacing


@needs_default
def test_a_mass_stays_on_the_model_s_own_crop(predictor):
    session, target = _first_click(predictor, MASS)
    assert _spacings(session) == {predictor.config.crop_spacing_mm}
    assert _dice(session.mask, target) > 0.8


@needs_default
def test_where_the_answers_disagree_the_model_s_own_crop_answers(predictor, monkeypatch):
    monkeypatch.setattr(crop_scale, "SMALL_OBJECT_MM", 0.0)
    own_only, _ = _first_click(predictor, NODULE)
    monkeypatch.setattr(crop_scale, "SMALL_OBJECT_MM", 20.0)
    monkeypatch.setattr(crop_scale, "SCALE_AGREEMENT", 1.01)  # no two answers agree
    session, _ = _first_click(predictor, NODULE)
    assert session.encoder_runs == 2  # the finer crop was answered, and not kept
    assert session._partial is None  # nor is the rest of it encoded in idle time
    np.testing.assert_array_equal(session.mask, own_only.mask)
    assert session.crop_spacing_mm == predictor.config.crop_spacing_mm


def test_the_slices_encoded_first_are_whole_runs_about_the_mask_s_extent():
    # native slices of 2 mm; a 1 mm crop of 64 voxels centred on native k 40: 32 encoded slices of
    # 2 crop voxels, slice d centred on native k 24.5 + d
    geometry = CropGeometry.around((40.0, 100.0, 100.0), (2.0, 1.0, 1.0), (80, 200, 200), 64, 1.0)
    assert partial_crop.MARGIN_MM == 6.0  # 3 native slices: the figures below are for it

    def near(first: int, last: int) -> np.ndarray:
        return partial_crop.slabs_near(geometry, (first, last), slab_voxels=2, run=8)

    np.testing.assert_array_equal(near(39, 40), np.arange(11, 19))  # native 36..43: slices 12..18, one run about them
    np.testing.assert_array_equal(near(32, 48), np.arange(4, 28))  # native 29..51: slices 5..26, three runs
    np.testing.assert_array_equal(near(25, 27), np.arange(0, 8))  # native 22..30: slices 0..5, one run inside the crop
    np.testing.assert_array_equal(near(0, 79), np.arange(32))  # the whole crop
    # the crop encoded on slices 11..18 (centred on native 35.5..42.5; each slice's outer crop
    # voxels a quarter native slice from its centre): exact features between native 35.25 and 42.75
    slabs = near(39, 40)
    partial = partial_crop.PartialCrop.start(geometry, torch.zeros(1, 1, 64, 64, 64), slabs,
                                             torch.zeros(1, 4, len(slabs), 2, 2), depth=32)
    assert partial.exact_native_range(slab_voxels=2) == pytest.approx((35.25, 42.75))


@needs_default
def test_a_nodule_s_finer_crop_is_encoded_near_it_first_and_whole_before_the_next_click(predictor, monkeypatch):
    session, target = _first_click(predictor, NODULE, corrections="global")  # the 3D model corrects
    partial = session._partial
    fine = crop_scale.fine_spacing_mm(predictor.config.crop_spacing_mm)
    assert partial is not None and partial.geometry.crop_spacing_mm == fine
    encoded = np.flatnonzero(partial.encoded)
    assert 0 < len(encoded) <= len(partial.encoded) // 2  # the first answer encoded half the slices or fewer
    k_on_mask = np.flatnonzero(session.mask.any(axis=(1, 2)))
    crop_k = partial.geometry.to_crop(np.array([[k, 0, 0] for k in (k_on_mask[0], k_on_mask[-1])]))[:, 0]
    slab = predictor.slab_voxels
    assert encoded[0] * slab <= crop_k.min() and crop_k.max() < (encoded[-1] + 1) * slab  # the mask's slices among them
    # ... and the answer is the whole crop's, nearly: the same nodule
    monkeypatch.setattr(partial_crop, "MARGIN_MM", 1e6)  # every slice encoded first
    whole, _ = _first_click(predictor, NODULE)
    assert whole._partial is None and whole.cache.get(partial.geometry) is not None  # encoded whole at once: cached
    assert _dice(session.mask, whole.mask) > 0.9 and _dice(session.mask, target) > 0.8
    monkeypatch.undo()
    # idle time encodes the rest a run at a time and caches the crop: exactly the whole crop's features
    assert _complete_in_idle_time(session) == len(partial.encoded) // predictor.slabs_per_run - len(encoded) // predictor.slabs_per_run + 1
    cached = session.cache.get(partial.geometry)
    expected = predictor.encode(session._crop_image(partial.geometry))
    np.testing.assert_allclose(cached.last_level.numpy(), expected.last_level.numpy(), atol=1e-4)
    np.testing.assert_allclose(cached.static_fusion.numpy(), expected.static_fusion.numpy(), atol=1e-4)
    # the next click reads it without encoding, and gives the mask it gives where no idle time came
    point, label = next_click(session.mask, target)
    change = session.interact([point], [label])
    assert not change.encoder_ran
    no_idle, _ = _first_click(predictor, NODULE, corrections="global")
    assert no_idle._partial is not None
    change = no_idle.interact([point], [label])
    assert change.encoder_ran and no_idle._partial is None  # the click completed the crop first
    np.testing.assert_array_equal(no_idle.mask, session.mask)
