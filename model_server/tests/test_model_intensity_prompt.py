"""The intensity prompt (``ModelConfig.intensity_prompt``): its channels, its zero start, and
fine-tuning a model without it into one with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from sam3d.cli import main
from sam3d.data.intensity import PRESETS
from sam3d.data.phantoms import write_dataset
from sam3d.model.checkpoint import read_checkpoint, save_checkpoint
from sam3d.model.config import get_config
from sam3d.model.intensity_prompt import intensity_prompt_channels, noise_normalised
from sam3d.model.sam3d import Sam3D

SIZE = 32


def lesion_image(contrast: float, noise: float, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A ball of radius 7 at the centre, ``contrast`` above a flat background, white noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices((SIZE,) * 3) - SIZE // 2
    ball = (grid ** 2).sum(0) <= 49
    image = 0.4 + contrast * ball + rng.normal(0, noise, ball.shape)
    return torch.from_numpy(image.astype(np.float32))[None, None], ball


def channels_at_centre_click(image: torch.Tensor) -> torch.Tensor:
    points = torch.tensor([[[SIZE // 2, SIZE // 2, SIZE // 2]]], dtype=torch.float32)
    return intensity_prompt_channels(noise_normalised(image), points, torch.tensor([[1]]))[0]


def test_a_faint_lesion_is_as_plain_in_the_prompt_as_in_noise_units():
    """A lesion three noise levels off its background: the narrowest similarity channel is
    near one inside and near zero outside (the window of the whole crop shows it at 0.03)."""
    image, ball = lesion_image(contrast=0.03, noise=0.01)
    similarity = channels_at_centre_click(image)[0].numpy()
    inner = np.zeros_like(ball)
    inner[SIZE // 2 - 4:SIZE // 2 + 5, SIZE // 2 - 4:SIZE // 2 + 5, SIZE // 2 - 4:SIZE // 2 + 5] = True
    far = np.ones_like(ball)
    far[4:-4, 4:-4, 4:-4] = False
    assert similarity[inner & ball].mean() > 0.7
    assert similarity[far].mean() < 0.1


def test_the_prompt_does_not_change_with_the_images_gain_and_offset():
    image, _ = lesion_image(contrast=0.03, noise=0.01)
    reference = channels_at_centre_click(image)
    assert torch.allclose(channels_at_centre_click(image * 7 + 2), reference, atol=1e-3)
    # the signed channel says which side of the clicked level a voxel lies: the background is darker
    assert reference[3, 1, 1, 1] < -0.5


def test_no_positive_click_gives_an_empty_prompt_and_a_flat_crop_a_finite_one():
    image, _ = lesion_image(contrast=0.03, noise=0.01)
    points = torch.tensor([[[16.0, 16.0, 16.0]], [[16.0, 16.0, 16.0]]])
    labels = torch.tensor([[0], [1]])
    prompt = intensity_prompt_channels(noise_normalised(image.repeat(2, 1, 1, 1, 1)), points, labels)
    assert prompt[0].abs().max() == 0 and prompt[1].abs().max() > 0
    flat = intensity_prompt_channels(noise_normalised(torch.full((1, 1, 8, 8, 8), 0.5)), points[:1] / 4, labels[1:])
    assert torch.isfinite(flat).all() and torch.allclose(flat[0, 0], torch.ones(8, 8, 8))


def test_a_model_with_the_prompt_starts_as_the_model_without_it():
    torch.manual_seed(0)
    plain = Sam3D(get_config("tiny")).eval()
    prompted = Sam3D(get_config("tiny", intensity_prompt=True)).eval()
    missing, unexpected = prompted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("intensity" in name for name in missing)
    image, _ = lesion_image(contrast=0.03, noise=0.01)
    points, labels = torch.tensor([[[16.0, 16.0, 16.0], [2.0, 3.0, 4.0]]]), torch.tensor([[1, 0]])
    with torch.inference_mode():
        before = plain(image, points, labels)
        assert torch.equal(prompted(image, points, labels), before)
        torch.nn.init.normal_(prompted.decoder.intensity_fuse.weight, std=0.1)  # "trained"
        assert not torch.allclose(prompted(image, points, labels), before, atol=1e-4)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("phantoms"), cases=4, seed=3)


def test_fine_tuning_adds_the_prompt_to_a_model_without_it(phantoms, tmp_path, capsys):
    """init_from a model without the prompt: its weights carry over, the prompt's start at zero
    and train; the way back (dropping trained prompt weights) is refused."""
    torch.manual_seed(0)
    source = Sam3D(get_config("tiny"))
    save_checkpoint(tmp_path / "plain.pt", source, PRESETS["percentile"], "tiny-plain")
    recipe = {"name": "tiny-prompted", "model": "tiny", "target_label": "tumor", "preset": "percentile",
              "split_fractions": [1.0, 0.0, 0.0], "epochs": 1, "steps_per_epoch": 2, "batch_size": 2,
              "lr": 1.0e-3, "warmup_steps": 0, "log_every": 1, "device": "cpu", "threads": 1,
              "data_dir": str(phantoms), "init_from": str(tmp_path / "plain.pt")}
    config = tmp_path / "prompted.yaml"
    config.write_text(yaml.safe_dump({**recipe, "out_dir": str(tmp_path / "prompted"),
                                      "model_overrides": {"intensity_prompt": True}}))
    assert main(["train", str(config), "--no-progress"]) == 0
    tuned = read_checkpoint(tmp_path / "prompted" / "last.pt")
    assert tuned["config"]["intensity_prompt"] is True
    weights = tuned["state_dict"]
    fuse = weights["decoder.intensity_fuse.weight"]
    assert 0 < fuse.abs().max() < 0.01  # from zero, two steps of 1e-3
    started = source.state_dict()["decoder.head.weight"]
    assert (weights["decoder.head.weight"] - started).abs().max() < 0.01
    back = tmp_path / "back.yaml"
    back.write_text(yaml.safe_dump({**recipe, "out_dir": str(tmp_path / "back"),
                                    "init_from": str(tmp_path / "prompted" / "last.pt")}))
    assert main(["train", str(back), "--no-progress"]) == 2
    assert "intensity_prompt from false to true" in capsys.readouterr().err
