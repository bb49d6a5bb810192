"""The bundled models: small-phantoms segments phantoms it has never seen."""

from __future__ import annotations

import json

from sam3d.cli import main
from sam3d.data.phantoms import write_dataset
from sam3d.model.checkpoint import load_model


def test_small_phantoms_model_segments_unseen_phantoms(tmp_path):
    loaded = load_model("small-phantoms", device="cpu")
    assert loaded.config.name == "small" and loaded.meta["trained_with"] == "sam3d train"
    # another generator seed than the training set's: phantoms the model has never seen
    assert loaded.meta["dataset"]["seed"] != 2024
    data = write_dataset(tmp_path / "unseen", cases=3, seed=2024)
    assert main(["evaluate", "--model", "small-phantoms", "--data", str(data), "--split", "all", "--clicks", "2",
                 "--seed", "0", "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["model"] == loaded.name and report["cases"] == 3
    assert report["mean_dice"] > 0.6, report["dice_by_click"]
    assert report["mean_dice"] > report["classical"]["mean_dice"]
