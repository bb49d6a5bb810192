"""Parameter-efficient training of vit_b from a SAM-format checkpoint: only the tensors the method
trains change; SAM's frozen weights stay bit-identical; the checkpoint holds the adapters only."""

from __future__ import annotations

import pytest
import torch
import yaml

from sam3d.data.phantoms import write_dataset
from sam3d.model.checkpoint import build_from_sam, load_model, read_checkpoint
from sam3d.model.sam3d import is_frozen_sam_tensor
from sam3d.train.config import load_config
from sam3d.train.trainer import Trainer


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("phantoms"), cases=3, seed=5)


def test_peft_changes_only_trainable_tensors(phantoms, sam_vit_b_checkpoint, tmp_path):
    # the shipped KiTS21 recipe, at a reduced crop (32^3 at 1 mm: 8^3 tokens, one window) for a CPU
    config = load_config("kits21_vit_b", {
        "data_dir": str(phantoms), "layout": "msd", "target_label": "tumor", "preset": "soft_tissue",
        "sam_checkpoint": str(sam_vit_b_checkpoint), "model_overrides": {"crop_size": 32},
        "split_fractions": [0.67, 0.33, 0.0], "max_steps": 3, "val_every": 3, "log_every": 1,
        "device": "cpu", "num_workers": 0, "out_dir": str(tmp_path / "run"),
    })
    assert config.model == "vit_b" and config.lr == 4e-4 and config.batch_size == 1
    trainer = Trainer(config, progress=False)
    result = trainer.run()
    assert result.steps == 3

    initial, _ = build_from_sam(config.model_config(), sam_vit_b_checkpoint)
    before, after = initial.state_dict(), trainer.model.state_dict()
    frozen = [n for n in before if is_frozen_sam_tensor(n)]
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert len(frozen) > 100 and len(trainable) > 100
    for name in frozen:
        assert torch.equal(before[name], after[name]), f"frozen SAM tensor {name} changed"
    changed = [n for n in trainable if not torch.equal(before[n], after[n])]
    for expected in ("image_encoder.blocks.0.adapter.up.weight", "image_encoder.blocks.11.adapter.down.weight",
                     "image_encoder.necks.3.layers.0.weight", "image_encoder.patch_embed.slice_embed.weight",
                     "image_encoder.depth_embed", "prompt_encoder.label_embed.weight", "decoder.head.weight"):
        assert expected in changed, expected
    assert len(changed) > 0.8 * len(trainable)

    saved = read_checkpoint(result.last_path)
    assert saved["trainable_only"] and not any(is_frozen_sam_tensor(n) for n in saved["state_dict"])
    loaded = load_model(result.last_path, device="cpu", sam_checkpoint=sam_vit_b_checkpoint)
    for name, tensor in after.items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 4
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"] == "vit_b"
