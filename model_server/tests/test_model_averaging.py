"""`sam3d average`: the weighted mean of checkpoints of one configuration, and clear refusals."""

from __future__ import annotations

import json

import torch

from model_helpers import write_tiny_checkpoint
from sam3d.cli import main
from sam3d.data.intensity import PRESETS
from sam3d.model.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint


def _shifted_copy(source, path, shift: float, name: str):
    """The checkpoint at ``source`` with every floating-point weight moved by ``shift``."""
    model, _ = model_from_checkpoint(source)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(shift)
    return save_checkpoint(path, model, PRESETS["soft_tissue"], name, meta={"step": 7})


def test_average_is_the_weighted_mean_and_loads(tmp_path, capsys):
    first = write_tiny_checkpoint(tmp_path, "first", meta={"step": 3})
    second = _shifted_copy(first, tmp_path / "second.pt", 1.0, "second")
    out = tmp_path / "soup.pt"
    assert main(["average", str(first), str(second), "--weights", "1,3", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [s["weight"] for s in printed["averaged_from"]] == [0.25, 0.75]

    a, b, soup = (read_checkpoint(p)["state_dict"] for p in (first, second, out))
    moved = [n for n in soup if soup[n].is_floating_point() and not torch.equal(a[n], b[n])]
    assert moved, "the two checkpoints must differ for the test to mean anything"
    for name in moved:
        torch.testing.assert_close(soup[name], 0.25 * a[name] + 0.75 * b[name])
    payload = read_checkpoint(out)
    assert payload["name"] == "soup"
    assert [s["step"] for s in payload["meta"]["averaged_from"]] == [3, 7]
    assert "step" not in payload["meta"]  # an average has no training step of its own
    assert load_model(out, device="cpu").name == "soup"


def test_average_refuses_other_configurations_and_bad_weights(tmp_path, capsys):
    first = write_tiny_checkpoint(tmp_path, "first")
    other = write_tiny_checkpoint(tmp_path, "boxed", box_prompt=True)
    out = tmp_path / "soup.pt"
    assert main(["average", str(first), str(other), "--out", str(out)]) == 2
    assert "another config than the first checkpoint" in capsys.readouterr().err
    assert main(["average", str(first), str(first), "--weights", "1", "--out", str(out)]) == 2
    assert "1 value(s) for 2 checkpoint(s)" in capsys.readouterr().err
    assert main(["average", str(first), str(first), "--weights", "a,b", "--out", str(out)]) == 2
    assert "numbers separated by commas" in capsys.readouterr().err
    assert main(["average", str(first), "--out", str(out)]) == 2
    assert "at least two checkpoints" in capsys.readouterr().err
    assert main(["average", str(first), str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert not out.exists()


def test_a_checkpoint_written_before_a_config_field_existed_averages_with_a_newer_one(tmp_path):
    """The bundled default was written before `adapter_placement` (model config) and `central`
    (intensity preset) were fields; a fine-tuned version of it stores them at their defaults, and
    the two average (a field at another value is still refused, as above)."""
    older = write_tiny_checkpoint(tmp_path, "older")
    payload = torch.load(older, weights_only=True)
    del payload["config"]["adapter_placement"], payload["preset"]["central"]
    torch.save(payload, older)
    newer = write_tiny_checkpoint(tmp_path, "newer")
    out = tmp_path / "soup.pt"
    assert main(["average", str(older), str(newer), "--out", str(out), "--name", "soup"]) == 0
    assert load_model(out, device="cpu").name == "soup"
