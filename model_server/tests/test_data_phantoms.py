"""Phantoms: deterministic per seed, CT-like, well-formed MSD / nnU-Net datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from sam3d.cli import main as sam3d_main
from sam3d.data.io import read_image, write_image
from sam3d.data.phantoms import MIN_TUMOR_VOXELS, TUMOR_LABEL, generate_case, write_dataset

SMALL = (24, 56, 56)


@pytest.fixture(scope="module")
def small_cases():
    return [generate_case(seed, shape=SMALL) for seed in range(6)]


def test_same_seed_same_case_other_seed_other_case():
    image, label = generate_case(11, shape=SMALL)
    again_image, again_label = generate_case(11, shape=SMALL)
    np.testing.assert_array_equal(image.array, again_image.array)
    np.testing.assert_array_equal(label.array, again_label.array)
    assert image.same_grid(again_image, tolerance=0)
    other, _ = generate_case(12, shape=SMALL)
    assert other.array.shape != image.array.shape or not np.array_equal(other.array, image.array)
    assert other.spacing != image.spacing


def test_cases_are_ct_like_with_small_low_contrast_tumors_inside_the_organ(small_cases):
    for image, label in small_cases:
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert image.shape == label.shape == SMALL
        assert label.same_grid(image, tolerance=0)
        assert set(np.unique(label.array)) == {0, 1, 2}
        # anisotropic CT spacing, a rotated / flipped grid, an origin away from zero
        assert 2.0 <= image.spacing[0] <= 3.5 and 0.7 <= image.spacing[1] == image.spacing[2] <= 1.0
        np.testing.assert_allclose(image.direction.T @ image.direction, np.eye(3), atol=1e-9)
        assert np.linalg.norm(image.origin) > 1.0
        # air, fat / soft tissue, bone
        assert image.array.min() < -900 and image.array.max() > 300
        assert ((image.array > -150) & (image.array < 100)).mean() > 0.3
        components, count = ndimage.label(label.array == TUMOR_LABEL)
        assert 1 <= count <= 3
        organ = label.array == 1
        for number in range(1, count + 1):
            tumor = components == number
            assert tumor.sum() >= MIN_TUMOR_VOXELS
            ring = ndimage.binary_dilation(tumor, iterations=2) & ~tumor
            assert organ[ring].mean() > 0.5  # mostly surrounded by its host organ
            # low contrast: 20-50 HU from the organ (blur and noise blunt it a little)
            inside = ndimage.binary_erosion(tumor) if ndimage.binary_erosion(tumor).sum() > 10 else tumor
            around = ring & organ
            contrast = abs(float(image.array[inside].mean()) - float(image.array[around].mean()))
            assert 5.0 < contrast < 60.0


def test_orientations_vary_between_cases(small_cases):
    directions = [np.round(image.direction, 3) for image, _ in small_cases]
    assert len({d.tobytes() for d in directions}) == len(directions)
    # the sense (sign of the dominant LPS component) of the i, j, k axes differs: flipped axes
    senses = {tuple(np.sign(d[np.argmax(np.abs(d), axis=0), range(3)])) for d in directions}
    assert len(senses) > 1
    assert {np.sign(np.linalg.det(d)) for d in directions} == {-1.0, 1.0}
    swapped = [abs(d[0, 0]) < abs(d[1, 0]) for d in directions]  # i along y instead of x
    assert any(swapped) and not all(swapped)
    tilts = [np.degrees(np.arccos(min(1.0, abs(d[2, 2])))) for d in directions]
    assert all(t <= 15.01 for t in tilts) and max(tilts) > 1.0


def test_default_size_case_is_realistic_and_small_on_disk(tmp_path):
    image, label = generate_case(3)
    k, j, i = image.shape
    assert 48 <= k <= 64 and 128 <= j <= 160 and 128 <= i <= 160
    path = write_image(image, tmp_path / "case.nii.gz")
    assert path.stat().st_size < 2_000_000
    components, count = ndimage.label(label.array == TUMOR_LABEL)
    diameters = [
        2 * (3 * np.sum(components == n) * np.prod(image.spacing) / (4 * np.pi)) ** (1 / 3) for n in range(1, count + 1)
    ]
    assert all(5.0 <= d <= 40.0 for d in diameters)  # 8-35 mm drawn, lobulated and cut by the organ


def test_write_dataset_writes_the_nnunet_msd_layout_deterministically(tmp_path):
    first = write_dataset(tmp_path / "a", cases=2, seed=7)
    second = write_dataset(tmp_path / "b", cases=2, seed=7)
    description = json.loads((first / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "CT"}
    assert description["labels"] == {"background": 0, "organ": 1, "tumor": 2}
    assert description["numTraining"] == 2
    assert description["file_ending"] == ".nii.gz"
    assert [entry["label"] for entry in description["training"]] == [
        "./labelsTr/phantom_000.nii.gz", "./labelsTr/phantom_001.nii.gz"]
    assert sorted(p.name for p in (first / "imagesTr").iterdir()) == ["phantom_000_0000.nii.gz", "phantom_001_0000.nii.gz"]
    for entry in description["training"]:
        image = read_image(first / entry["image"])
        label = read_image(first / entry["label"])
        assert label.same_grid(image)
        assert set(np.unique(label.array)) <= {0, 1, 2} and (label.array == 2).any()
        twin = read_image(second / entry["image"])
        np.testing.assert_array_equal(twin.array, image.array)
    with pytest.raises(ValueError, match="already holds a dataset"):
        write_dataset(first, cases=1, seed=7)
    write_dataset(first, cases=1, seed=8, overwrite=True)
    assert [p.name for p in (first / "labelsTr").iterdir()] == ["phantom_000.nii.gz"]  # no stale case


def test_phantoms_command(tmp_path, capsys):
    out = tmp_path / "ph"
    assert sam3d_main(["phantoms", "--out", str(out), "--cases", "1", "--seed", "1"]) == 0
    assert "wrote 1 cases (seed 1)" in capsys.readouterr().out
    assert (out / "imagesTr" / "phantom_000_0000.nii.gz").is_file()
    assert sam3d_main(["phantoms", "--out", str(out), "--cases", "1"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert sam3d_main(["phantoms", "--out", str(tmp_path / "x"), "--cases", "0"]) == 2
    assert "--cases must be at least 1" in capsys.readouterr().err


def test_phantoms_come_with_one_click_per_tumor_and_a_batch_manifest(tmp_path, tiny_model, capsys):
    from sam3d.batch.prompts import lesions_from_markups
    from sam3d.data.clicks import label_objects

    out = write_dataset(tmp_path / "ph", cases=1, seed=3)
    image = read_image(out / "imagesTr" / "phantom_000_0000.nii.gz")
    objects, count = label_objects(read_image(out / "labelsTr" / "phantom_000.nii.gz").array == TUMOR_LABEL)
    lesions = lesions_from_markups(out / "clicksTr" / "phantom_000.mrk.json")
    assert len(lesions) == count >= 1
    clicked = [objects[tuple(np.round(image.ras_to_kji(lesion.points_ras)[0]).astype(int))] for lesion in lesions]
    assert sorted(clicked) == list(range(1, count + 1))  # each tumor clicked once, inside it
    assert all(lesion.labels.tolist() == [1] for lesion in lesions)
    capsys.readouterr()
    assert sam3d_main(["batch", str(out / "manifest.json"), "--out", str(tmp_path / "results"),
                       "--model", str(tiny_model), "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "1 done" in printed.out and "warning" not in printed.err
