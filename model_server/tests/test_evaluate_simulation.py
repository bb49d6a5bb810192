"""`sam3d evaluate`: metrics, the classical baseline, the seeded protocol and its report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from model_helpers import write_tiny_checkpoint
from sam3d.cli import main
from sam3d.data.datasets import dataset_identity, find_cases, load_case
from sam3d.data.io import file_sha256
from sam3d.data.phantoms import write_dataset
from sam3d.engine.crops import CropGeometry
from sam3d.engine.predictor import Predictor
from sam3d.evaluate.classical import region_grow
from sam3d.evaluate.metrics import dice_and_nsd
from sam3d.evaluate.simulation import (PERTURBATION_STREAM, case_rng, evaluate_case, first_box, label_objects,
                                       perturbed)
from sam3d.model.config import get_config


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("phantoms"), cases=4, seed=11)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """conftest's random tiny model, with the evaluation's metadata."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model"), "tiny-eval-test",
                                 meta={"target_label": 2, "split_seed": 0})


def test_dice_and_nsd_against_hand_computed_values():
    target = np.zeros((20, 40, 40), dtype=bool)
    target[5:15, 10:30, 10:30] = True  # 10 x 20 x 20 = 4000 voxels
    shifted = np.roll(target, 2, axis=2)  # 2 voxels along i
    dice, nsd = dice_and_nsd(shifted, target, spacing=(3.0, 1.0, 1.0))
    assert dice == pytest.approx(2 * 10 * 20 * 18 / 8000)
    assert nsd == pytest.approx(1.0)  # every surface voxel within 2 mm < 5 mm of the other surface
    far = np.roll(target, 8, axis=2)  # 8 mm: the moved faces are beyond the tolerance
    assert dice_and_nsd(far, target, spacing=(3.0, 1.0, 1.0))[1] < 0.9
    # the same voxel shift along k is 6 mm at 3 mm slices: the k faces leave the tolerance
    assert dice_and_nsd(np.roll(target, 2, axis=0), target, spacing=(3.0, 1.0, 1.0))[1] < 1.0
    assert dice_and_nsd(np.zeros_like(target), target, (1, 1, 1)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="target is empty"):
        dice_and_nsd(target, np.zeros_like(target), (1, 1, 1))


def test_region_growing_stays_inside_the_model_crop():
    rng = np.random.default_rng(0)
    shape = (40, 120, 120)
    k, j, i = np.ogrid[:40, :120, :120]
    ball = ((k - 20) * 2.0) ** 2 + (j - 60.0) ** 2 + (i - 60.0) ** 2 < 14.0 ** 2  # r = 14 mm at (2, 1, 1) mm
    volume = np.where(ball, 80.0, 20.0) + rng.normal(0, 5, shape)
    config = get_config("tiny")  # 32 voxels at 2 mm: a 62 mm crop
    grown = region_grow(volume, (2.0, 1.0, 1.0), (20, 60, 60), config)
    assert dice_and_nsd(grown, ball, (2.0, 1.0, 1.0))[0] > 0.8  # an easy, high-contrast ball
    # a huge bright slab is cut at the crop's footprint (31 mm either side of the click)
    slab = np.where(np.abs(i - 60) < 50, 80.0, 20.0) + 0 * k + 0 * j + rng.normal(0, 5, shape)
    grown = region_grow(slab, (2.0, 1.0, 1.0), (20, 60, 60), config)
    lo, hi = CropGeometry.around((20, 60, 60), (2.0, 1.0, 1.0), shape, 32, 2.0).footprint()
    assert (lo, hi) == ((5, 29, 29), (36, 92, 92))
    inside = grown[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    assert inside.mean() > 0.75 and grown.sum() == inside.sum()  # fills the crop, nothing outside it


def test_clicks_are_seeded_per_case_and_objects_are_components():
    first = case_rng(3, "case_a").integers(1000, size=5)
    assert np.array_equal(first, case_rng(3, "case_a").integers(1000, size=5))
    assert not np.array_equal(first, case_rng(4, "case_a").integers(1000, size=5))
    assert not np.array_equal(first, case_rng(3, "case_b").integers(1000, size=5))
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # diagonal neighbours: one object
    mask[4, 4, 4] = True
    assert label_objects(mask)[1] == 2


def _numbers(report: dict) -> dict:
    """The report without wall-clock fields."""
    cases = [{k: v for k, v in case.items() if k not in ("seconds", "timing_ms")} for case in report["per_case"]]
    return {**{k: v for k, v in report.items() if k not in ("seconds", "per_case")}, "per_case": cases}


def test_evaluation_is_deterministic_and_writes_the_report(phantoms, tiny_model, tmp_path, capsys):
    runs = []
    for name, seed, clicks in (("a", 5, 3), ("b", 5, 3), ("c", 6, 1)):  # c: only its first clicks are compared
        args = ["evaluate", "--model", str(tiny_model), "--data", str(phantoms), "--split", "all",
                "--clicks", str(clicks), "--seed", str(seed), "--out", str(tmp_path / name), "--device", "cpu"]
        assert main(args) == 0
        runs.append(json.loads((tmp_path / name / "report.json").read_text()))
    a, b, c = runs
    assert _numbers(a) == _numbers(b)  # same seed: the same clicks and the same numbers
    first_clicks = lambda report: [case["clicks"][0]["point_kji"] for case in report["per_case"]]
    assert first_clicks(a) != first_clicks(c)
    for key in ("mean_dice", "mean_nsd", "per_case", "clicks", "dice_by_click", "classical"):
        assert key in a, key
    assert a["clicks"] == 3 and len(a["dice_by_click"]) == 3 and a["cases"] == 4
    assert a["model_sha256"] == file_sha256(tiny_model)
    assert a["mean_dice"] == pytest.approx(np.mean([case["dice"] for case in a["per_case"]]))
    for metric in ("dice", "nsd"):
        means, intervals = a[f"{metric}_by_click"], a[f"{metric}_ci95_by_click"]
        assert len(intervals) == 3 and all(low <= mean <= high for mean, (low, high) in zip(means, intervals))
    for case in a["per_case"]:
        assert all(0.0 <= d <= 1.0 for d in case["dice_by_click"] + case["nsd_by_click"])
        assert case["clicks"][0]["label"] == 1 and len(case["clicks"]) >= 1
        assert 0.0 <= case["classical_dice"] <= 1.0
    with open(tmp_path / "a" / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = {row["method"] for row in rows}
    assert "tiny-eval-test" in methods and any(m.startswith("SimpleITK") for m in methods)
    assert len([r for r in rows if r["case_id"] != "mean" and r["method"] == "tiny-eval-test"]) == 4 * 3
    means = [r for r in rows if r["case_id"] == "mean" and r["method"] == "tiny-eval-test"]
    assert [float(r[f"dice_ci95_{end}"]) for r in means for end in ("low", "high")] == pytest.approx(
        np.ravel(a["dice_ci95_by_click"]), abs=1e-6)
    assert all(r["dice_ci95_low"] == "" for r in rows if r["case_id"] != "mean")
    assert (tmp_path / "a" / "dice_by_click.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean Dice" in capsys.readouterr().out
    # the same runs compared: nothing differs; another seed's first clicks are compared at click 1
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab.json")]) == 0
    same = json.loads((tmp_path / "ab.json").read_text())
    assert same["cases"] == 4 and len(same["by_click"]) == 3
    assert all(row["difference"] == 0 and row["better"] == row["worse"] == 0 and row["p_value"] is None
               for row in same["by_click"])
    assert "note" not in capsys.readouterr().out  # the same protocol
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c" / "report.json"), "--metric", "nsd"]) == 0
    printed = capsys.readouterr().out
    assert "the runs differ in seed: 5 -> 6" in printed and "4 cases, nsd by click" in printed
    assert len([line for line in printed.splitlines() if line.split()[:1] == ["1"]]) == 1  # c has one click


def test_evaluate_rejects_bad_input(phantoms, tiny_model, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none.pt"), "--data", str(phantoms),
                 "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(phantoms), "--clicks", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--clicks" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(phantoms), "--target-label", "liver",
                 "--out", str(tmp_path / "x")]) == 2
    assert "liver" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(phantoms), "--perturb-noise", "-0.01",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--perturb-noise" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(phantoms), "--prompt", "box3d",
                 "--box-margin", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--box-margin" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(phantoms), "--box-margin", "5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--prompt box" in capsys.readouterr().err


def test_a_perturbation_is_seeded_noise_of_a_fraction_of_the_intensity_range():
    volume = np.zeros((20, 40, 40), dtype=np.int16)
    volume[:, :, 20:] = 1000  # range 0..1000
    assert perturbed(volume, 0.0, 1, "a") is volume
    once, again = perturbed(volume, 0.002, 1, "a"), perturbed(volume, 0.002, 1, "a")
    assert once.dtype == np.float32 and np.array_equal(once, again)
    assert not np.array_equal(once, perturbed(volume, 0.002, 2, "a"))
    assert not np.array_equal(once, perturbed(volume, 0.002, 1, "b"))
    assert np.std(once - volume) == pytest.approx(2.0, rel=0.05)  # 0.002 x 1000
    # drawn slice by slice, the noise is the one whole-volume draw the recorded figures used
    whole = case_rng(1, "a", PERTURBATION_STREAM).normal(0.0, 2.0, volume.shape).astype(np.float32)
    assert np.array_equal(once, volume.astype(np.float32) + whole)
    with pytest.raises(ValueError, match="0 or more|>= 0"):
        perturbed(volume, -0.1, 1, "a")


def test_a_perturbed_evaluation_keeps_the_clicks_and_says_so(phantoms, tiny_model, tmp_path):
    reports = {}
    for name, extra in (("plain", []), ("noisy", ["--perturb-noise", "0.05", "--perturb-seed", "3"])):
        assert main(["evaluate", "--model", str(tiny_model), "--data", str(phantoms), "--split", "all", "--clicks", "1",
                     "--no-classical", "--device", "cpu", "--out", str(tmp_path / name), *extra]) == 0
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    plain, noisy = reports["plain"], reports["noisy"]
    assert (plain["perturb_noise"], plain["perturb_seed"]) == (0.0, None)
    assert (noisy["perturb_noise"], noisy["perturb_seed"]) == (0.05, 3)
    clicks = lambda report: [case["clicks"][0]["point_kji"] for case in report["per_case"]]
    assert clicks(plain) == clicks(noisy)
    assert [c["dice"] for c in plain["per_case"]] != [c["dice"] for c in noisy["per_case"]]


def test_the_models_own_split_applies_only_to_its_training_dataset(phantoms, tmp_path, capsys):
    """A model trained with no test split (fractions 0.9 / 0.1 / 0) still has a test split on
    another dataset (the default 70 / 10 / 20); on its own dataset its split is remade."""
    no_test = {"target_label": 2, "split_seed": 0, "train_config": {"split_fractions": [0.9, 0.1, 0.0]}}
    elsewhere = write_tiny_checkpoint(tmp_path / "a", "trained-elsewhere",
                                      meta={**no_test, "dataset": {"name": "another", "seed": 21}})
    here = write_tiny_checkpoint(tmp_path / "b", "trained-here", meta={**no_test, "dataset": dataset_identity(phantoms)})
    common = ["--data", str(phantoms), "--split", "test", "--clicks", "1", "--device", "cpu"]
    assert main(["evaluate", "--model", str(elsewhere), *common, "--out", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x" / "report.json").read_text())["cases"] == 1  # 20 % of 4
    assert main(["evaluate", "--model", str(here), *common, "--out", str(tmp_path / "y")]) == 2
    assert "the test split" in capsys.readouterr().err


def test_without_target_label_the_model_s_label_is_found_by_name_on_other_datasets(phantoms, tmp_path):
    """A model trained on "tumor" stored as value 1 of its own dataset: on the phantoms, where 1
    is "organ" and 2 "tumor", a run without --target-label scores the tumours; on its own
    dataset the stored value stands."""
    trained_as = {"target_label": 1, "split_seed": 0, "train_config": {"target_label": "tumor"}}
    elsewhere = write_tiny_checkpoint(tmp_path / "a", "tumour-elsewhere",
                                      meta={**trained_as, "dataset": {"name": "another", "seed": 21}})
    here = write_tiny_checkpoint(tmp_path / "b", "value-here", meta={**trained_as, "dataset": dataset_identity(phantoms)})
    common = ["--data", str(phantoms), "--split", "all", "--clicks", "1", "--max-cases", "1", "--no-classical",
              "--device", "cpu"]
    scored = {}
    for name, model in (("elsewhere", elsewhere), ("here", here)):
        assert main(["evaluate", "--model", str(model), *common, "--out", str(tmp_path / name)]) == 0
        scored[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert scored["elsewhere"]["target_label"] == 2 and scored["here"]["target_label"] == 1
    # the organ is far larger than the tumour the same case's first click lands on
    assert scored["here"]["per_case"][0]["target_voxels"] > 5 * scored["elsewhere"]["per_case"][0]["target_voxels"]


def test_a_label_named_in_another_spelling_is_scored_and_the_dataset_s_name_reported(phantoms, tiny_model, tmp_path,
                                                                                     capsys):
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(phantoms), "--split", "all", "--target-label",
                 "Tumour", "--clicks", "1", "--max-cases", "1", "--no-classical", "--device", "cpu",
                 "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (report["target_label"], report["target_label_name"]) == (2, "tumor")
    assert "label 'Tumour' read as the dataset's 'tumor' (value 2)" in capsys.readouterr().err


def test_box_prompts_start_from_the_objects_2d_or_3d_box(phantoms, tmp_path):
    """--prompt box: the clicked object's box on its largest slice; --prompt box3d: its 3D
    bounding box; both answered by the model's box prompt, then correction clicks."""
    boxed = write_tiny_checkpoint(tmp_path, "tiny-eval-box", meta={"target_label": 2, "split_seed": 0},
                                  box_prompt=True)
    reports = {}
    for prompt in ("box", "box3d"):
        assert main(["evaluate", "--model", str(boxed), "--data", str(phantoms), "--split", "all", "--clicks", "2",
                     "--prompt", prompt, "--max-cases", "2", "--out", str(tmp_path / prompt), "--device", "cpu"]) == 0
        reports[prompt] = json.loads((tmp_path / prompt / "report.json").read_text())
    for prompt, report in reports.items():
        assert report["prompt"] == prompt and len(report["dice_by_click"]) == 2
        for case in report["per_case"]:
            assert case["classical_dice"] is None  # region growing is a click's baseline only
            assert "point_kji" not in case["clicks"][0]
    for flat, solid in zip(reports["box"]["per_case"], reports["box3d"]["per_case"]):
        (k0, *_), (k1, *_) = flat["clicks"][0]["box_kji"]
        assert k0 == k1  # one slice
        corners = np.array(solid["clicks"][0]["box_kji"])
        assert corners[1, 0] > corners[0, 0]  # the phantoms' tumours span several slices
        assert (corners[0] <= np.array(flat["clicks"][0]["box_kji"]).min(axis=0)).all()
        assert (corners[1] >= np.array(flat["clicks"][0]["box_kji"]).max(axis=0)).all()


def test_a_loose_box_is_the_objects_box_grown_by_the_margin_in_mm_inside_the_volume():
    """``first_box(margin_mm=)``: every side moves out by the margin in each axis's voxels (a 2D
    box only in its slice), and stops at the volume's edge."""
    target = np.zeros((10, 40, 40), dtype=bool)
    target[1:4, 10:20, 30:38] = True
    target[2, 10:21, 30:39] = True  # the largest slice
    spacing = (4.0, 0.5, 1.0)
    assert np.array_equal(first_box(target, "box3d", 4.0, spacing), [[0, 2, 26], [4, 28, 39]])
    assert np.array_equal(first_box(target, "box", 4.0, spacing), [[2, 2, 26], [2, 28, 39]])
    assert np.array_equal(first_box(target, "box3d", 0.0, spacing), [[1, 10, 30], [3, 20, 38]])
    assert first_box(target, "click", 4.0, spacing) is None
    with pytest.raises(ValueError, match="margin"):
        first_box(target, "box3d", -1.0, spacing)


def test_a_hook_sees_each_interactions_session_and_leaves_the_protocol_alone(phantoms, tiny_model):
    """``evaluate_case(after_each=)`` (the benchmarks' idle work) is called once per
    interaction with that interaction's mask, and the figures are those of a run without it."""
    predictor = Predictor.load(str(tiny_model), device="cpu")
    image, target = load_case(find_cases(phantoms)[0], 2)
    seen = []

    def hook(session) -> None:
        seen.append((session.interactions, session.mask.copy()))

    plain = evaluate_case(predictor, "case", image.array, image.spacing, target, 3, 0, classical=False)
    hooked = evaluate_case(predictor, "case", image.array, image.spacing, target, 3, 0, classical=False,
                           after_each=hook)
    assert [n for n, _ in seen] == list(range(1, len(hooked.clicks) + 1)) and len(seen) >= 1
    assert hooked.dice_by_click == plain.dice_by_click and hooked.clicks == plain.clicks
    assert dice_and_nsd(seen[-1][1], target, image.spacing)[0] == pytest.approx(hooked.dice_by_click[len(seen) - 1])
