"""The 3D SAM network: shapes, freezing, SAM checkpoint loading, prompts, fused patch embedding."""

from __future__ import annotations

import json

import pytest
import torch

from sam3d.cli import main
from sam3d.data.intensity import PRESETS
from sam3d.model.checkpoint import (CheckpointError, build_from_sam, load_model, pool_pos_embed,
                                    resize_rel_pos, save_checkpoint)
from sam3d.model.config import get_config
from sam3d.model.sam3d import Sam3D, is_frozen_sam_tensor

# vit_b's widths and depth at a reduced crop (32^3 voxels -> 8^3 tokens, one window) so the
# SAM-geometry tests run on a CPU in seconds.
VIT_B_SMALL_CROP = dict(crop_size=32)


def random_prompts(batch: int, crop: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(batch, 3, 3, generator=generator) * (crop - 1)
    labels = torch.tensor([[1, 0, -1]] * batch)
    return points, labels


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_output_shapes(name):
    config = get_config(name)
    model = Sam3D(config).eval()
    crop = config.crop_size
    image = torch.randn(2, 1, crop, crop, crop)
    points, labels = random_prompts(2, crop)
    with torch.no_grad():
        features = model.encode(image)
        logits = model.predict(features, points, labels)
    grid = config.token_grid
    assert tuple(features.last_level.shape) == (2, config.neck_dim, grid, grid, grid)
    assert tuple(features.static_fusion.shape) == (2, config.decoder_dim, 2 * grid, 2 * grid, 2 * grid)
    assert tuple(logits.shape) == (2, 2, crop, crop, crop)


def test_vit_b_geometry_matches_the_paper():
    config = get_config("vit_b")
    assert (config.crop_size, config.crop_spacing_mm, config.token_grid) == (128, 1.0, 32)
    assert [b + 1 for b in config.neck_blocks] == [3, 6, 9, 12]


def test_split_fusion_equals_the_plain_concatenated_convolution():
    """The cached static share plus the per-click share is the published decoder's fusion."""
    torch.manual_seed(3)
    model = Sam3D(get_config("tiny")).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    points, labels = random_prompts(1, 32)
    decoder = model.decoder
    with torch.no_grad():
        levels = model.image_encoder(image)
        low = torch.nn.functional.avg_pool3d(image, 2)
        levels[-1] = model.prompt_encoder(levels[-1], points, labels, None)
        maps = [decoder._level_map(i, level) for i, level in enumerate(levels)]
        plain = decoder.head(decoder.fuse(torch.cat([*maps, low], 1)))
        plain = torch.nn.functional.interpolate(plain, size=(32,) * 3, mode="trilinear", align_corners=False)
        split = model(image, points, labels)
    assert (plain - split).abs().max() < 1e-4


def test_wrong_input_shape_is_refused():
    model = Sam3D(get_config("tiny"))
    with pytest.raises(ValueError, match="image must be"):
        model.encode(torch.randn(1, 1, 16, 16, 16))


def test_gradients_reach_only_trainable_parameters(sam_vit_b_checkpoint):
    model, _ = build_from_sam(get_config("vit_b", **VIT_B_SMALL_CROP), sam_vit_b_checkpoint)
    image = torch.randn(1, 1, 32, 32, 32)
    points, labels = random_prompts(1, 32)
    model(image, points, labels).square().mean().backward()
    for name, parameter in model.named_parameters():
        if is_frozen_sam_tensor(name):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad, name
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    # adapter.up starts at zero (adapters start as the identity), so it is the one with a gradient
    for expected in ("image_encoder.blocks.0.adapter.up.weight", "image_encoder.blocks.11.norm1.weight",
                     "image_encoder.patch_embed.slice_embed.weight", "image_encoder.depth_embed",
                     "image_encoder.blocks.3.attn.rel_pos_d", "image_encoder.necks.0.layers.0.weight",
                     "prompt_encoder.label_embed.weight", "decoder.head.weight"):
        assert expected in with_grad, expected


def test_sam_checkpoint_loads_bit_identical(sam_vit_b_checkpoint):
    file_state = torch.load(sam_vit_b_checkpoint, weights_only=True)
    model, report = build_from_sam(get_config("vit_b", **VIT_B_SMALL_CROP), sam_vit_b_checkpoint)
    own = model.state_dict()
    frozen = [n for n in own if is_frozen_sam_tensor(n)]
    # every frozen reused tensor is either copied bit for bit or resized as the method resizes it
    assert set(frozen) <= set(report.loaded) | set(report.resized)
    for name in report.loaded:
        assert torch.equal(own[name], file_state[name]), name
    assert len([n for n in report.loaded if ".attn.qkv.weight" in n]) == 12
    for name in report.resized:
        source = file_state[name]
        expected = (pool_pos_embed(source, 8) if name.endswith("pos_embed")
                    else resize_rel_pos(source, own[name].shape[0]))
        assert torch.equal(own[name], expected), name
    block = model.image_encoder.blocks[2].attn  # a SAM global-attention block: 127 -> 15
    assert file_state["image_encoder.blocks.2.attn.rel_pos_h"].shape[0] == 127
    assert block.rel_pos_h.shape[0] == 15
    assert torch.equal(block.rel_pos_d, (block.rel_pos_h + block.rel_pos_w) / 2)
    assert "image_encoder.blocks.0.adapter.down.weight" in report.initialised
    assert not any(n.startswith(("prompt_encoder.", "decoder.")) for n in report.loaded)


def test_wrong_files_give_clear_errors(tmp_path, sam_vit_b_checkpoint):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        build_from_sam("vit_b", text)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a SAM ViT-B checkpoint.*no 'image_encoder"):
        build_from_sam("vit_b", other)
    vit_l = tmp_path / "sam_vit_l.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}, vit_l)
    with pytest.raises(CheckpointError, match="SAM ViT-L"):
        build_from_sam("vit_b", vit_l)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_from_sam("vit_b", tmp_path / "missing.pth")
    # SAM's own file given where a trained model is expected
    with pytest.raises(CheckpointError, match="SAM's own checkpoint"):
        load_model(sam_vit_b_checkpoint, device="cpu")


def test_click_label_and_mask_prompt_change_the_output():
    torch.manual_seed(0)
    config = get_config("tiny")
    model = Sam3D(config).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    points = torch.tensor([[[16.0, 16.0, 16.0]]])
    with torch.no_grad():
        features = model.encode(image)
        positive = model.predict(features, points, torch.tensor([[1]]))
        negative = model.predict(features, points, torch.tensor([[0]]))
        mask = torch.full((1, 1, 32, 32, 32), -4.0)
        mask[..., 10:20, 10:20, 10:20] = 4.0
        with_mask = model.predict(features, points, torch.tensor([[1]]), mask)
        padded = model.predict(features, torch.cat([points, points], 1), torch.tensor([[1, -1]]))
    assert (positive - negative).abs().max() > 1e-3
    assert (positive - with_mask).abs().max() > 1e-3
    assert (positive - padded).abs().max() > 0  # padding is a token too, but never a click


@pytest.mark.parametrize("name,overrides", [("tiny", {}), ("vit_b", VIT_B_SMALL_CROP)])
def test_fused_patch_embedding_equals_reference(name, overrides):
    torch.manual_seed(1)
    model = Sam3D(get_config(name, **overrides))
    embed = model.image_encoder.patch_embed
    with torch.no_grad():  # random weights everywhere, the trainable slice conv included
        for parameter in embed.parameters():
            parameter.normal_()
    crop = model.config.crop_size
    image = torch.randn(2, 1, crop, crop, crop)
    image[:, :, 0] += 5.0  # strong values on the faces exercise the border handling
    image[..., -1] -= 5.0
    with torch.no_grad():
        embed.fused = True
        fused = embed(image)
        embed.fused = False
        reference = embed(image)
    assert fused.shape == reference.shape
    scale = reference.abs().max()
    assert (fused - reference).abs().max() <= 1e-4 * max(1.0, float(scale))


def test_adapter_checkpoint_round_trip(tmp_path, sam_vit_b_checkpoint):
    config = get_config("vit_b", **VIT_B_SMALL_CROP)
    model, _ = build_from_sam(config, sam_vit_b_checkpoint)
    with torch.no_grad():
        model.image_encoder.blocks[0].adapter.up.weight.normal_()
        model.decoder.head.bias.fill_(0.25)
    path = save_checkpoint(tmp_path / "adapters.pt", model, PRESETS["kits21"], "kits-adapters",
                           trainable_only=True)
    full_bytes = sum(t.numel() for t in model.state_dict().values())
    saved = torch.load(path, weights_only=True)
    assert not any(is_frozen_sam_tensor(n) for n in saved["state_dict"])
    assert sum(t.numel() for t in saved["state_dict"].values()) < 0.5 * full_bytes
    with pytest.raises(CheckpointError, match="--sam-checkpoint"):
        load_model(path, device="cpu")
    loaded = load_model(path, device="cpu", sam_checkpoint=sam_vit_b_checkpoint)
    assert loaded.preset == PRESETS["kits21"] and loaded.name == "kits-adapters"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_full_checkpoint_round_trip(tmp_path):
    model = Sam3D(get_config("tiny")).eval()
    path = save_checkpoint(tmp_path / "tiny.pt", model, PRESETS["soft_tissue"], "tiny-test",
                           meta={"trained_on": "nothing"})
    loaded = load_model(path, device="cpu")
    image = torch.randn(1, 1, 32, 32, 32)
    points, labels = random_prompts(1, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(image, points, labels), model(image, points, labels))
    assert loaded.meta == {"trained_on": "nothing"}
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_a_checkpoint_with_model_fields_this_version_does_not_know_is_refused_by_name(tmp_path, capsys):
    """A checkpoint from a newer or a development version (here: a config field and a preset
    field added) gets a clear error at load, in averaging and at the CLI, not a TypeError."""
    model = Sam3D(get_config("tiny")).eval()
    path = save_checkpoint(tmp_path / "tiny.pt", model, PRESETS["soft_tissue"], "tiny-test")
    payload = torch.load(path, weights_only=True)
    payload["config"]["intensity_prompt"] = False
    payload["preset"]["window_centre"] = 40.0
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    with pytest.raises(CheckpointError, match=r"config fields this SAM3DPrompt does not know \(intensity_prompt\)"):
        load_model(newer, device="cpu")
    assert main(["average", str(path), str(newer), "--out", str(tmp_path / "soup.pt")]) == 2
    assert "does not know (intensity_prompt)" in capsys.readouterr().err
    del payload["config"]["intensity_prompt"]
    torch.save(payload, newer)
    with pytest.raises(CheckpointError, match=r"preset fields .* \(window_centre\).*upgrade"):
        load_model(newer, device="cpu")


def test_info_command_reports_paper_sizes(sam_vit_b_checkpoint, capsys):
    assert main(["info", "--config", "vit_b", "--sam-checkpoint", str(sam_vit_b_checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert 110e6 < info["total_params"] < 116e6  # paper: about 114 M (see docs/MODEL.md)
    assert 24e6 < info["trainable_params"] < 27e6  # paper: about 25.5 M
    assert 7.0e6 < info["adapter_params"] < 7.4e6  # paper: 7.2 M
    assert info["token_grid"] == [32, 32, 32] and info["crop_size"] == [128, 128, 128]
    assert info["crop_spacing_mm"] == 1.0
    assert info["loaded"] > 100 and info["resized"] == 25 and info["initialised"] > 50


def test_info_command_rejects_a_wrong_file(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"weights": torch.zeros(2)}, bad)
    assert main(["info", "--config", "vit_b", "--sam-checkpoint", str(bad)]) == 2
    assert "not a SAM ViT-B checkpoint" in capsys.readouterr().err
