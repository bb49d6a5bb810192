"""`sam3d train` on a tiny phantom set: loss falls, Dice rises; logs, checkpoints and resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml

from sam3d.cli import main
from sam3d.data.phantoms import write_dataset
from sam3d.model.checkpoint import load_model, read_checkpoint
from sam3d.train.config import SHIPPED_CONFIGS, load_config
from sam3d.train.samples import CropSampler, cache_cases
from sam3d.data.datasets import find_cases
from sam3d.data.intensity import PRESETS

TINY_RECIPE = {
    "name": "tiny-smoke", "model": "tiny", "target_label": "tumor", "preset": "dataset",
    "split_fractions": [0.75, 0.25, 0.0], "epochs": 1, "steps_per_epoch": 100, "batch_size": 2,
    "lr": 1.0e-3, "warmup_steps": 5, "paper_prompt_prob": 0.3, "refine_prob": 0.3, "val_every": 50,
    "log_every": 10, "device": "cpu", "threads": 1,
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("phantoms"), cases=8, seed=3)


def write_config(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


def read_log(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_loss_falls_and_dice_rises(phantoms, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", **TINY_RECIPE, data_dir=str(phantoms), out_dir=str(out))
    assert main(["train", str(config), "--no-progress"]) == 0
    rows = read_log(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(10, 101, 10))
    losses = [float(r["loss"]) for r in rows]
    dices = [float(r["train_dice"]) for r in rows]
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2]), losses
    assert np.mean(dices[-2:]) > np.mean(dices[:2]) + 0.1, dices
    # validation runs the evaluation protocol through the engine (too few steps to expect the
    # tiny model to find these small tumours from one click yet)
    val = [float(r["val_dice"]) for r in rows if r["val_dice"]]
    assert len(val) == 2 and all(0.0 <= v <= 1.0 for v in val)
    for name in ("best.pt", "last.pt", "state.pt", "splits.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    best = load_model(out / "best.pt", device="cpu")
    assert best.name == "tiny-smoke" and best.meta["step"] in (50, 100) and best.meta["target_label"] == 2
    assert best.preset.name == "tiny-smoke-dataset" and best.preset.clip_low < best.preset.clip_high


def test_resume_continues_exactly(phantoms, tmp_path):
    recipe = {**TINY_RECIPE, "steps_per_epoch": 6, "val_every": 3, "log_every": 3, "val_cases": 1,
              "data_dir": str(phantoms)}
    straight = write_config(tmp_path / "straight.yaml", **recipe, out_dir=str(tmp_path / "straight"))
    assert main(["train", str(straight), "--no-progress"]) == 0
    halves = write_config(tmp_path / "halves.yaml", **recipe, out_dir=str(tmp_path / "halves"))
    assert main(["train", str(halves), "--no-progress", "--max-steps", "3"]) == 0
    assert main(["train", str(halves), "--no-progress"]) == 2  # the folder holds a run: must say --resume
    with open(tmp_path / "halves" / "train_log.csv", "a") as log:  # as if it died after a log row at step 5
        log.write("5,0.8,0.001,1.0,0.1,,,1.0,1.0,1.0\n")
    assert main(["train", str(halves), "--no-progress", "--resume"]) == 0
    a = read_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "halves" / "last.pt")["state_dict"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [r["step"] for r in read_log(tmp_path / "halves" / "train_log.csv")] == ["3", "6"]


def test_fine_tuning_starts_from_the_given_model(phantoms, tmp_path, capsys):
    recipe = {**TINY_RECIPE, "steps_per_epoch": 2, "val_every": 2, "log_every": 1, "val_cases": 1,
              "data_dir": str(phantoms)}
    base = write_config(tmp_path / "base.yaml", **recipe, out_dir=str(tmp_path / "base"))
    assert main(["train", str(base), "--no-progress"]) == 0
    trained = read_checkpoint(tmp_path / "base" / "last.pt")["state_dict"]
    # a learning rate of ~0: the fine-tuned weights stay those it started from, not a fresh init
    tuned = write_config(tmp_path / "tuned.yaml", **{**recipe, "lr": 1e-12, "seed": 5},
                         init_from=str(tmp_path / "base" / "last.pt"), out_dir=str(tmp_path / "tuned"))
    assert main(["train", str(tuned), "--no-progress"]) == 0
    after = read_checkpoint(tmp_path / "tuned" / "last.pt")["state_dict"]
    assert all(torch.allclose(trained[name], after[name], atol=1e-6) for name in trained)
    fresh = write_config(tmp_path / "fresh.yaml", **{**recipe, "lr": 1e-12, "seed": 5}, out_dir=str(tmp_path / "fresh"))
    assert main(["train", str(fresh), "--no-progress"]) == 0
    scratch = read_checkpoint(tmp_path / "fresh" / "last.pt")["state_dict"]
    assert not all(torch.allclose(trained[name], scratch[name], atol=1e-6) for name in trained)
    other = write_config(tmp_path / "other.yaml", **{**recipe, "model_overrides": {"decoder_dim": 8}},
                         init_from=str(tmp_path / "base" / "last.pt"), out_dir=str(tmp_path / "other"))
    assert main(["train", str(other), "--no-progress"]) == 2
    assert "another configuration" in capsys.readouterr().err



def test_a_lite_model_with_adapters_on_top_starts_one_with_adapters_inside(phantoms, tmp_path, capsys):
    """init_from a top-placement lite model into adapter_placement 'inside': its weights carry
    over, the inside adapters start at zero and train (TinyViT runs every step; no cache)."""
    from sam3d.data.intensity import PRESETS as presets
    from sam3d.model.checkpoint import save_checkpoint
    from sam3d.model.config import get_config
    from sam3d.model.sam3d import Sam3D

    torch.manual_seed(0)
    source = Sam3D(get_config("lite", crop_size=32))
    with torch.no_grad():
        source.image_encoder.adapters[0].up.weight.normal_(std=0.01)  # a "trained" adapter
    save_checkpoint(tmp_path / "top.pt", source, presets["percentile"], "lite-top", trainable_only=True)
    recipe = {**TINY_RECIPE, "model": "lite", "preset": "percentile", "steps_per_epoch": 1, "log_every": 1,
              "split_fractions": [1.0, 0.0, 0.0], "lr": 1e-3, "warmup_steps": 0, "data_dir": str(phantoms),
              "init_from": str(tmp_path / "top.pt")}
    inside = write_config(tmp_path / "inside.yaml", **recipe, out_dir=str(tmp_path / "inside"),
                          model_overrides={"crop_size": 32, "adapter_placement": "inside"})
    assert main(["train", str(inside), "--no-progress"]) == 0
    tuned = read_checkpoint(tmp_path / "inside" / "last.pt")["state_dict"]
    started = source.state_dict()["image_encoder.adapters.0.up.weight"]
    assert (tuned["image_encoder.adapters.0.up.weight"] - started).abs().max() < 0.01  # one step of 1e-3 from it
    inside_up = [t for n, t in tuned.items() if n.startswith("image_encoder.inside_adapters.") and n.endswith("up.weight")]
    assert len(inside_up) == 10 and 0 < max(t.abs().max() for t in inside_up) < 0.01  # from zero, one step
    assert not any(n.startswith("image_encoder.backbone.") for n in tuned)
    back = write_config(tmp_path / "back.yaml", **{**recipe, "init_from": str(tmp_path / "inside" / "last.pt")},
                        out_dir=str(tmp_path / "back"), model_overrides={"crop_size": 32})
    assert main(["train", str(back), "--no-progress"]) == 2  # inside -> top would drop trained adapters
    assert "only adapter_placement may go from 'top' to 'inside'" in capsys.readouterr().err

def test_training_crops_match_their_prompts(phantoms, tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", **TINY_RECIPE, data_dir=str(phantoms),
                                      out_dir=str(tmp_path / "x")))
    cases = cache_cases(find_cases(phantoms)[:3], 2, tmp_path / "cache", progress=False)
    sampler = CropSampler(cases, config.model_config(), PRESETS["soft_tissue"], config, length=40)
    positives = 0
    for index in range(40):
        sample = sampler[index]
        assert sample["image"].shape == (1, 32, 32, 32) and sample["target"].shape == (1, 32, 32, 32)
        points, labels, target = sample["points"].long(), sample["labels"], sample["target"][0] > 0
        clicked = target[points[:, 0], points[:, 1], points[:, 2]]
        assert bool(clicked[labels == 1].all())  # every positive click lies in the target
        assert not bool(clicked[labels == 0].any())  # no negative click does
        positives += bool(target.any())
    assert 15 <= positives <= 35  # about 2 of 3 crops are centred on the target
    again = sampler[7]
    assert torch.equal(again["image"], sampler[7]["image"])  # sample n depends on (seed, n) only


def test_config_errors_are_clear(phantoms, tmp_path, capsys):
    bad = write_config(tmp_path / "bad.yaml", **TINY_RECIPE, data_dir=str(phantoms), learning_rate=1)
    assert main(["train", str(bad)]) == 2
    assert "unknown training config key(s): learning_rate" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    vit = write_config(tmp_path / "vit.yaml", **{**TINY_RECIPE, "model": "vit_b"}, data_dir=str(phantoms))
    assert main(["train", str(vit)]) == 2
    assert "sam_checkpoint" in capsys.readouterr().err


def test_shipped_configs_load():
    names = sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))
    assert "default_small_phantoms" in names
    for name in names:
        config = load_config(name, {"data_dir": "somewhere", "sam_checkpoint": "sam_vit_b_01ec64.pth"})
        assert config.lr > 0 and config.grad_clip == 1.0


def test_the_feature_cache_encoded_by_compiled_tinyvit_holds_the_same_features(phantoms, tmp_path, monkeypatch, capsys):
    """With enough crops to encode, TinyViT is compiled first (faster on a CPU); the features are
    those of TinyViT as built. Where compiling fails (here: torch.compile raises), the cache is
    built uncompiled and a note says why."""
    from sam3d.model.sam3d import Sam3D
    from sam3d.train.feature_cache import build_feature_cache

    recipe = {**TINY_RECIPE, "model": "lite", "preset": "percentile", "model_overrides": {"crop_size": 32}}
    config = load_config(write_config(tmp_path / "c.yaml", **recipe, data_dir=str(phantoms), out_dir=str(tmp_path / "x")))
    cases = cache_cases(find_cases(phantoms)[:2], 2, tmp_path / "cases", progress=False)
    sampler = CropSampler(cases, config.model_config(), PRESETS["percentile"], config, length=2)

    def built(folder, compile_from):
        torch.manual_seed(0)
        model = Sam3D(config.model_config())
        build_feature_cache(sampler, model, tmp_path / folder, 2, progress=False, compile_from=compile_from)
        crops = [torch.load(tmp_path / folder / f"crop_{n:05d}.pt", weights_only=True) for n in range(2)]
        return model.image_encoder._compiled is not None, crops

    as_built, eager = built("eager", compile_from=3)  # 2 crops to encode: too few to compile for
    compiled, fast = built("compiled", compile_from=2)
    assert (as_built, compiled) == (False, True)
    for a, b in zip(eager, fast):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["objects"], b["objects"])
        assert torch.allclose(a["backbone"].float(), b["backbone"].float(), atol=2e-3)  # fp16 storage

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    capsys.readouterr()
    failed, fallback = built("fallback", compile_from=1)
    assert not failed and torch.equal(fallback[0]["backbone"], eager[0]["backbone"])
    assert ("encoding training crops uncompiled: TinyViT could not be compiled (RuntimeError: no C++ compiler found)"
            in capsys.readouterr().err)


def test_a_share_of_one_click_samples_is_clicked_at_the_crop_s_centre_where_the_engine_puts_a_first_click():
    """centre_click_prob: one-click samples clicked at the crop's centre ((S - 1) / 2, as
    CropGeometry.around centres a first click's crop), the target the object there; a crop whose
    centre lies in no object gets a random target voxel, as without it."""
    from sam3d.train.config import TrainConfig
    from sam3d.train.samples import prompt_sample

    objects = np.zeros((16, 16, 16), dtype=np.int64)
    objects[5:11, 6:12, 4:10] = 1  # covers the centre, 7.5
    objects[0:3, 0:3, 0:3] = 2
    centred = TrainConfig(paper_prompt_prob=0.0, centre_click_prob=1.0)
    for seed in range(5):
        sample = prompt_sample(objects, np.random.default_rng(seed), centred, boxes=False)
        assert sample["points"].tolist() == [[7.5, 7.5, 7.5]] and sample["labels"].tolist() == [1]
        assert torch.equal(sample["target"][0] > 0, torch.from_numpy(objects == 1))
    off_centre = np.where(objects == 1, 0, objects)  # only object 2 is left, away from the centre
    random_clicks = {tuple(prompt_sample(off_centre, np.random.default_rng(seed), centred, boxes=False)["points"][0].tolist())
                     for seed in range(5)}
    assert len(random_clicks) > 1 and all(max(point) < 3 for point in random_clicks)
    uncentred = TrainConfig(paper_prompt_prob=0.0, centre_click_prob=0.0)
    clicks = [prompt_sample(objects, np.random.default_rng(seed), uncentred, boxes=False)["points"][0].tolist()
              for seed in range(5)]
    assert [7.5, 7.5, 7.5] not in clicks and len({tuple(c) for c in clicks}) == 5
